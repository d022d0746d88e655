"""The admin API under ``/admin``: teams, virtual keys, spend, and backends (drain, in
``gateway.http.admin_backends``). Authorised by the admin key.

Also builds the budget machinery for ``create_app``: the state store chosen in config, the
key authenticator (the ``app.state.authenticate`` seam) and the admission (the pipeline's
budgets seam). Teams and keys live in the state store, so every replica sharing it sees them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import KeyAuthenticator, mint_key
from gateway.budgets import Period, period_end, period_id, period_start, to_usd
from gateway.config import Settings, StateConfig, format_loc
from gateway.errors import (
    AuthenticationFailed,
    ClientDisconnected,
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SwitchyardError,
)
from gateway.http.routes import error_response, json_response, read_body
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline.admission import BudgetAdmission
from gateway.pipeline.context import RequestContext
from gateway.registry import Registry
from gateway.state import KeyRecord, StateStore, StateUnavailable, Team

log = logging.getLogger("switchyard.admin")

_NAME = r"^[A-Za-z0-9._-]{1,64}$"
GROUPS = {"team": "team", "model": "model", "backend": "backend", "key": "key_id",
          "route": "route", "endpoint": "endpoint", "day": "date(started_at, 'unixepoch')"}


# ---- building -------------------------------------------------------------------------


@dataclass
class Budgets:
    store: StateStore
    auth: KeyAuthenticator
    admission: BudgetAdmission

    async def start(self) -> None:
        await self.store.start()
        await self.admission.start()

    async def close(self) -> None:
        await self.admission.close()
        await self.store.close()

    async def authenticate(self, request: Request, ctx: RequestContext) -> None:
        ident = await self.auth.verify(request.headers.get("authorization"))
        if ident is None:
            return
        c = ident.constraints
        ctx.team, ctx.key_id = ident.team.name, ident.key.key_id
        ctx.constraints = replace(ctx.constraints, allowed_backends=c.allowed_backends,
                                  allowed_models=c.allowed_models)
        ctx.extra["identity"] = ident


def build_budgets(settings: Settings, registry: Registry, metrics: Metrics) -> Budgets:
    """The state store named in ``state.kind`` (from the plugins), the authenticator and
    the admission, wired to the ``switchyard_budget_alert`` hook and the alert metric."""
    kind = settings.state.kind
    entry = registry.state_stores.get(kind)
    if entry is None:
        known = ", ".join(sorted(registry.state_stores)) or "none"
        raise ConfigError([("state.kind", f"unknown state store {kind!r} (known: {known})")])
    try:
        store: StateStore = entry.value(settings.state)
    except Exception as e:  # noqa: BLE001 - a broken plugin stops start-up with a clear message
        raise ConfigError([("state", f"cannot create the {kind} store: {e}")]) from None
    fail_open = settings.state.failure_mode == "open"
    fallback: Callable[[], StateStore] | None = None
    if fail_open:
        local = registry.state_stores.get("memory")
        if local is None:
            raise ConfigError([("state.failure_mode", "failing open needs the memory store")])
        def fallback() -> StateStore:
            return local.value(StateConfig(kind="memory"))  # type: ignore[no-any-return]

    cfg = settings.budgets
    auth = KeyAuthenticator(store, cache_ttl_s=cfg.key_cache_ttl_s, fail_open=fail_open)
    tasks: set[asyncio.Future[Any]] = set()

    def alert(team: str, spent: float, budget: float, pct: float) -> None:
        metrics.budget_alerts.labels(team).inc()
        registry.notify("switchyard_budget_alert", tasks, team=team, spent_usd=spent,
                        budget_usd=budget, pct=pct)

    admission = BudgetAdmission(store, cfg, fail_open=fail_open, fallback=fallback, alert=alert)
    return Budgets(store, auth, admission)


# ---- request bodies -------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeamPatch(_Body):
    budget_usd: float | None = Field(None, ge=0)
    period: Period = "month"
    soft_limit_pct: float | None = Field(80.0, gt=0, le=100)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    models: list[str] = Field(default_factory=list)
    backends: list[str] = Field(default_factory=list)


class TeamIn(TeamPatch):
    name: str = Field(pattern=_NAME)


class KeyIn(_Body):
    team: str
    name: str = Field(min_length=1, max_length=128)
    expires_at: datetime | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


ADMIN_MAX_BODY = 64 * 1024  # a team, a key or a drain reason: never more than a few hundred bytes


async def admin_body(request: Request) -> bytes:
    return await read_body(request, ADMIN_MAX_BODY)


def _parse(model: type[_Body], raw: bytes) -> Any:
    try:
        data = orjson.loads(raw or b"{}")
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


# ---- handlers -------------------------------------------------------------------------


def _ctx(request: Request) -> tuple[Budgets, Settings]:
    state = request.app.state
    return state.budgets, state.settings


def _check_admin(request: Request, settings: Settings) -> None:
    admin = settings.admin_key
    if admin is None:
        raise PermissionDenied("The admin API is disabled: set SWITCHYARD_ADMIN_KEY or admin_key.",
                               code="admin_disabled")
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), admin.get_secret_value().encode()):
        raise AuthenticationFailed("The admin API needs the admin key as a bearer token.")


Handler = Callable[[Request, Budgets, Settings], Awaitable[Response]]


def admin_route(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        budgets, settings = _ctx(request)
        try:
            _check_admin(request, settings)
            return await fn(request, budgets, settings)
        except SwitchyardError as e:
            return error_response(e)
        except ClientDisconnect:  # while its body was read: nobody to answer, no error
            log.info("client disconnected while sending %s %s", request.method,
                     request.url.path)
            return error_response(ClientDisconnected("The client disconnected."))
        except StateUnavailable:
            from gateway.errors import ServiceUnavailable

            return error_response(ServiceUnavailable(
                "The state store (Redis) is unreachable; try again shortly.",
                code="state_store_unavailable"))
    return endpoint


def _check_names(request: Request, team: TeamPatch) -> None:
    gw = request.app.state.gateway
    unknown_b = sorted(set(team.backends) - set(gw.backends))
    if unknown_b:
        raise InvalidRequest(f"Unknown backends {unknown_b} (known: {sorted(gw.backends)}).",
                             param="backends")
    models = {b.model for b in gw.backends.values()}
    unknown_m = sorted(set(team.models) - models)
    if unknown_m:
        raise InvalidRequest(f"Unknown models {unknown_m} (known: {sorted(models)}).",
                             param="models")


async def _team_or_404(b: Budgets, name: str) -> Team:
    team = await b.store.get_team(name)
    if team is None:
        raise NotFound(f"There is no team '{name}'.", code="team_not_found")
    return team


async def create_team(request: Request, b: Budgets, s: Settings) -> Response:
    body: TeamIn = _parse(TeamIn, await admin_body(request))
    _check_names(request, body)
    team = Team(**body.model_dump(), created_at=time.time())
    if not await b.store.create_team(team):
        raise Conflict(f"A team named '{team.name}' exists.", param="name", code="team_exists")
    b.auth.forget()
    log.info("team %s created (budget %s per %s)", team.name, team.budget_usd, team.period)
    return json_response(team.to_dict(), 201)


async def list_teams(request: Request, b: Budgets, s: Settings) -> Response:
    return json_response({"object": "list",
                          "data": [t.to_dict() for t in await b.store.list_teams()]})


async def get_team(request: Request, b: Budgets, s: Settings) -> Response:
    return json_response((await _team_or_404(b, request.path_params["name"])).to_dict())


async def patch_team(request: Request, b: Budgets, s: Settings) -> Response:
    team = await _team_or_404(b, request.path_params["name"])
    body: TeamPatch = _parse(TeamPatch, await admin_body(request))
    _check_names(request, body)
    for field in body.model_fields_set:
        setattr(team, field, getattr(body, field))
    if not await b.store.update_team(team):
        raise NotFound(f"There is no team '{team.name}'.", code="team_not_found")
    b.auth.forget()
    return json_response(team.to_dict())


async def delete_team(request: Request, b: Budgets, s: Settings) -> Response:
    team = await _team_or_404(b, request.path_params["name"])
    ids = await b.store.delete_team(team.name)
    b.auth.forget()
    log.info("team %s deleted with %d keys", team.name, len(ids))
    return json_response({"name": team.name, "deleted": True, "keys_deleted": ids})


async def team_spend(request: Request, b: Budgets, s: Settings) -> Response:
    team = await _team_or_404(b, request.path_params["name"])
    now = time.time()
    pid = period_id(team.period, now)
    sp = await b.store.spend(team.name, pid)
    end = period_end(team.period, now)
    budget = team.budget_usd
    return json_response({
        "team": team.name, "period": team.period, "period_id": pid,
        "period_start": period_start(team.period, now).isoformat(),
        "period_end": end.isoformat() if end else None,
        "budget_usd": budget, "spent_usd": to_usd(sp.spent), "reserved_usd": to_usd(sp.reserved),
        "remaining_usd": None if budget is None else to_usd(team.budget_nano - sp.spent - sp.reserved),
        "soft_limit_usd": None if team.soft_nano < 0 else to_usd(team.soft_nano),
        "soft_limit_alerted": sp.alerted,
    })


async def create_key(request: Request, b: Budgets, s: Settings) -> Response:
    body: KeyIn = _parse(KeyIn, await admin_body(request))
    return await _mint(b, body.team, body.name, _expiry(body.expires_at), body.rpm, body.tpm)


def _expiry(value: datetime | None) -> float | None:
    if value is None:
        return None
    ts = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if ts <= time.time():
        raise InvalidRequest("expires_at is in the past.", param="expires_at")
    return ts


async def _mint(b: Budgets, team: str, name: str, expires_at: float | None, rpm: int | None,
                tpm: int | None, replaces: str | None = None) -> Response:
    if await b.store.get_team(team) is None:
        raise NotFound(f"There is no team '{team}'.", param="team", code="team_not_found")
    live = [k for k in await b.store.list_keys(team) if k.revoked_at is None and k.key_id != replaces]
    if any(k.name == name for k in live):
        raise Conflict(f"Team '{team}' has a key named '{name}'.", param="name", code="key_exists")
    plaintext, rec = mint_key(team, name, expires_at=expires_at, rpm=rpm, tpm=tpm)
    await b.store.put_key(rec)
    b.auth.forget()
    log.info("key %s created for team %s", rec.key_id, team)
    return json_response({"key": plaintext, **rec.public()}, 201)


async def _key_or_404(b: Budgets, key_id: str) -> KeyRecord:
    rec = await b.store.get_key(key_id)
    if rec is None:
        raise NotFound(f"There is no key '{key_id}'.", code="key_not_found")
    return rec


async def list_keys(request: Request, b: Budgets, s: Settings) -> Response:
    team = request.query_params.get("team")
    if team is not None:
        await _team_or_404(b, team)
    keys = await b.store.list_keys(team)
    return json_response({"object": "list", "data": [k.public() for k in keys]})


async def get_key(request: Request, b: Budgets, s: Settings) -> Response:
    return json_response((await _key_or_404(b, request.path_params["key_id"])).public())


async def revoke_key(request: Request, b: Budgets, s: Settings) -> Response:
    rec = await _key_or_404(b, request.path_params["key_id"])
    if rec.revoked_at is None:
        rec.revoked_at = time.time()
        await b.store.put_key(rec)
        log.info("key %s of team %s revoked", rec.key_id, rec.team)
    b.auth.forget(rec.key_id)
    return json_response(rec.public())


async def rotate_key(request: Request, b: Budgets, s: Settings) -> Response:
    """A new key with the old one's team, name, expiry and limits; the old one is revoked."""
    old = await _key_or_404(b, request.path_params["key_id"])
    if old.revoked_at is not None:
        raise InvalidRequest(f"The key '{old.key_id}' is revoked; create a new one instead.")
    resp = await _mint(b, old.team, old.name, old.expires_at, old.rpm, old.tpm,
                       replaces=old.key_id)
    old.revoked_at = time.time()
    await b.store.put_key(old)
    b.auth.forget(old.key_id)
    return resp


async def spend(request: Request, b: Budgets, s: Settings) -> Response:
    ledger: Ledger | None = request.app.state.ledger
    if ledger is None:
        raise InvalidRequest("The ledger is disabled (ledger.kind: none).")
    q = request.query_params
    groups = [g.strip() for g in q.get("group_by", "team").split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise InvalidRequest(f"group_by takes {', '.join(GROUPS)}; got {bad or 'nothing'}.",
                             param="group_by")
    sql, params = _spend_sql(groups, q.get("team"), _time(q.get("since"), "since"),
                             _time(q.get("until"), "until"))
    rows = await asyncio.to_thread(ledger.query, sql, params)
    return json_response({"object": "list", "group_by": groups, "data": rows})


def _time(value: str | None, param: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param} takes a Unix time or an ISO date.", param=param) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _spend_sql(groups: Iterable[str], team: str | None, since: float | None,
               until: float | None) -> tuple[str, tuple[Any, ...]]:
    cols = [f"{GROUPS[g]} AS {g}" for g in groups]
    where, params = ["1=1"], []
    for cond, value in (("team = ?", team), ("started_at >= ?", since), ("started_at < ?", until)):
        if value is not None:
            where.append(cond)
            params.append(value)
    names = ", ".join(groups)
    sql = (f"SELECT {', '.join(cols)}, COUNT(*) AS requests, "
           "SUM(status = 200) AS succeeded, SUM(prompt_tokens) AS prompt_tokens, "
           "SUM(completion_tokens) AS completion_tokens, SUM(cost_usd) AS cost_usd, "
           "SUM(energy_j) AS energy_j, SUM(co2_g) AS co2_g "
           f"FROM requests WHERE {' AND '.join(where)} GROUP BY {names} ORDER BY {names}")
    return sql, tuple(params)


def admin_routes() -> list[Route]:
    from gateway.http.admin_backends import backend_routes  # it builds on this module

    r = admin_route
    return [
        Route("/admin/teams", r(create_team), methods=["POST"]),
        Route("/admin/teams", r(list_teams), methods=["GET"]),
        Route("/admin/teams/{name}", r(get_team), methods=["GET"]),
        Route("/admin/teams/{name}", r(patch_team), methods=["PATCH"]),
        Route("/admin/teams/{name}", r(delete_team), methods=["DELETE"]),
        Route("/admin/teams/{name}/spend", r(team_spend), methods=["GET"]),
        Route("/admin/keys", r(create_key), methods=["POST"]),
        Route("/admin/keys", r(list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", r(get_key), methods=["GET"]),
        Route("/admin/keys/{key_id}", r(revoke_key), methods=["DELETE"]),
        Route("/admin/keys/{key_id}/rotate", r(rotate_key), methods=["POST"]),
        Route("/admin/spend", r(spend), methods=["GET"]),
        *backend_routes(r),
    ]
