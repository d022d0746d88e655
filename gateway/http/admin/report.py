"""``GET /admin/report``: the savings report's JSON (docs/report.md), the same as
``switchyard report --json``; ``since``, ``until``, ``team``, ``route``, ``group_by``
(team, route, backend, day). The SQL is ``gateway.report``'s."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.http.admin.common import Handler
from gateway.http.routes import json_response
from gateway.report import build, check_group, window_of


async def report(request: Request, b: Budgets, s: Settings) -> Response:
    ledger = request.app.state.ledger
    if ledger is None:
        raise InvalidRequest("The ledger is disabled (ledger.kind: none).")
    q = request.query_params
    window, group = window_of(q), check_group(q.get("group_by"))
    return json_response(await asyncio.to_thread(build, ledger, window, group))


HANDLERS: list[tuple[str, str, Handler]] = [("/admin/report", "GET", report)]
