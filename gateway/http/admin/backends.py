"""``/admin/backends``: every backend's health as this replica sees it, and draining.

A drain is an operator taking a backend out of service: every policy leaves it out (not
even tried last) until it is undrained. It lives in the state store apart from the health
marks, so it never expires, no passing health check clears it, and every replica sharing
the store honours it: this one at once, the others within ``health.share_interval_s``.
A drain that cannot be written to the store is refused (503) rather than applied here
only, where it would look done while the other replicas keep routing to the backend.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.config import Settings
from gateway.errors import NotFound, StateUnavailable
from gateway.http.admin.common import Body, Handler, log, parse
from gateway.http.routes import json_response
from gateway.pipeline.health import SharedHealth, backend_health
from gateway.pipeline.service import Gateway


class DrainIn(Body):
    reason: str = Field("", max_length=500)
    by: str | None = Field(None, max_length=128, description="who drains (default: the replica)")


def describe(name: str, gw: Gateway, now: float) -> dict[str, Any]:
    """One backend as ``GET /admin/backends`` lists it: what it is, and its health as
    ``/readyz`` shows it."""
    b = gw.backends[name]
    return {"name": name, "plugin": b.config.plugin, "model": b.model,
            "enabled": b.config.enabled, **backend_health(gw.trackers[name], now)}


async def list_backends(request: Request, b: Budgets, s: Settings) -> Response:
    gw: Gateway = request.app.state.gateway
    now = time.monotonic()
    shared: SharedHealth = request.app.state.shared_health
    return json_response({"object": "list", "replica": shared.replica,
                          "data": [describe(n, gw, now) for n in gw.backends]})


def _name_or_404(request: Request) -> str:
    gw: Gateway = request.app.state.gateway
    name: str = request.path_params["name"]
    if name not in gw.backends:
        raise NotFound(f"There is no backend '{name}' (known: {', '.join(gw.backends)}).",
                       code="backend_not_found")
    return name


async def _set(request: Request, b: Budgets, name: str, drained: bool, by: str,
               reason: str) -> Response:
    shared: SharedHealth = request.app.state.shared_health
    try:
        await b.store.set_backend_drained(name, drained, by, reason)
    except StateUnavailable as e:
        what = "drained" if drained else "undrained"
        raise e.because(f"backend '{name}' was not {what}, on this replica or any other; "
                        "try again once the store answers") from None
    shared.apply_drain(name, (by, reason, time.time()) if drained else None)
    if drained:
        log.warning("backend %s drained by %s: %s", name, by, reason or "no reason given")
    else:
        log.warning("backend %s undrained by %s", name, by)
    return json_response(describe(name, request.app.state.gateway, time.monotonic()))


async def drain(request: Request, b: Budgets, s: Settings) -> Response:
    name = _name_or_404(request)
    body = await parse(DrainIn, request)
    by = body.by or f"admin via {request.app.state.shared_health.replica}"
    return await _set(request, b, name, True, by, body.reason)


async def undrain(request: Request, b: Budgets, s: Settings) -> Response:
    name = _name_or_404(request)
    return await _set(request, b, name, False,
                      f"admin via {request.app.state.shared_health.replica}", "")


# backend names may contain ``/``: hence ``:path``
HANDLERS: list[tuple[str, str, Handler]] = [
    ("/admin/backends", "GET", list_backends),
    ("/admin/backends/{name:path}/drain", "POST", drain),
    ("/admin/backends/{name:path}/undrain", "POST", undrain),
]
