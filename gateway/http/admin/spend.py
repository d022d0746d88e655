"""``GET /admin/spend``: the ledger summed by team, model, backend, key, route, endpoint or
day, over a time window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.http.admin.common import Handler
from gateway.http.routes import json_response
from gateway.ledger import Ledger
from gateway.report import parse_time

GROUPS = {"team": "team", "model": "model", "backend": "backend", "key": "key_id",
          "route": "route", "endpoint": "endpoint", "day": "date(started_at, 'unixepoch')"}


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
    return parse_time(value, param)


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


HANDLERS: list[tuple[str, str, Handler]] = [("/admin/spend", "GET", spend)]
