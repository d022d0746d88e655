"""``GET /admin/spend``: the ledger summed by team, model, backend, key, route, endpoint or
day, over a time window (``gateway.ledger_queries``: the same on every ledger kind)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.hookspecs import LedgerStore
from gateway.http.admin.common import Handler
from gateway.http.routes import json_response
from gateway.ledger_queries import Window, grouped
from gateway.report import parse_time

GROUPS = ("team", "model", "backend", "key", "route", "endpoint", "day")


async def spend(request: Request, b: Budgets, s: Settings) -> Response:
    ledger: LedgerStore | None = request.app.state.ledger
    if ledger is None:
        raise InvalidRequest("The ledger is disabled (ledger.kind: none).")
    q = request.query_params
    groups = [g.strip() for g in q.get("group_by", "team").split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise InvalidRequest(f"group_by takes {', '.join(GROUPS)}; got {bad or 'nothing'}.",
                             param="group_by")
    window = Window(since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                    team=q.get("team"))
    rows = await asyncio.to_thread(grouped, ledger, groups, window)
    return json_response({"object": "list", "group_by": groups, "data": rows})


def _time(value: str | None, param: str) -> float | None:
    return parse_time(value, param)


HANDLERS: list[tuple[str, str, Handler]] = [("/admin/spend", "GET", spend)]
