"""What every ``/admin`` resource shares: the admin key check, the error bodies, reading
and validating a JSON body, and the team lookup."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.config import Settings, format_loc
from gateway.errors import (
    AuthenticationFailed,
    ClientDisconnected,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SwitchyardError,
)
from gateway.http.routes import error_response, read_body
from gateway.state import Team

log = logging.getLogger("switchyard.admin")

NAME = r"^[A-Za-z0-9._-]{1,64}$"
ADMIN_MAX_BODY = 64 * 1024  # a team, a key or a drain reason: never more than a few hundred bytes

Handler = Callable[[Request, Budgets, Settings], Awaitable[Response]]
B = TypeVar("B", bound="Body")


class Body(BaseModel):
    """A request body: unknown fields are refused (400), like config keys."""

    model_config = ConfigDict(extra="forbid")


async def parse(model: type[B], request: Request) -> B:
    """The body, at most ``ADMIN_MAX_BODY`` bytes, as ``model`` (400 with the field's path)."""
    raw = await read_body(request, ADMIN_MAX_BODY)
    try:
        data: Any = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        msg = "; ".join(f"{format_loc(tuple(x['loc']))}: {x['msg']}" for x in errs)
        raise InvalidRequest(f"Invalid {model.__name__}: {msg}.",
                             param=format_loc(tuple(errs[0]["loc"]))) from None


def check_admin(request: Request, settings: Settings) -> None:
    admin = settings.admin_key
    if admin is None:
        raise PermissionDenied("The admin API is disabled: set SWITCHYARD_ADMIN_KEY or admin_key.",
                               code="admin_disabled")
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), admin.get_secret_value().encode()):
        raise AuthenticationFailed("The admin API needs the admin key as a bearer token.")


def admin_route(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The admin key checked, then ``fn``; a ``SwitchyardError`` is its OpenAI error body.
    Anything else reaches the app's catch-all (a 500 with the request id)."""
    async def endpoint(request: Request) -> Response:
        state = request.app.state
        try:
            check_admin(request, state.settings)
            return await fn(request, state.budgets, state.settings)
        except SwitchyardError as e:
            return error_response(e)
        except ClientDisconnect:  # while its body was read: nobody to answer, no error
            log.info("client disconnected while sending %s %s", request.method,
                     request.url.path)
            return error_response(ClientDisconnected("The client disconnected."))
    return endpoint


async def team_or_404(b: Budgets, name: str) -> Team:
    team = await b.store.get_team(name)
    if team is None:
        raise NotFound(f"There is no team '{name}'.", code="team_not_found")
    return team
