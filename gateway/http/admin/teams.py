"""``/admin/teams``: create, list, read, change and delete teams, and a team's spend in its
current period. Teams live in the state store, so every replica sharing it sees them."""

from __future__ import annotations

import time

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.assembly import Budgets
from gateway.budgets import Period, period_end, period_id, period_start, to_usd
from gateway.config import Settings
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.http.admin.common import NAME, Body, Handler, log, parse, team_or_404
from gateway.http.routes import json_response
from gateway.state import Team


class TeamPatch(Body):
    budget_usd: float | None = Field(None, ge=0)
    period: Period = "month"
    soft_limit_pct: float | None = Field(80.0, gt=0, le=100)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    models: list[str] = Field(default_factory=list)
    backends: list[str] = Field(default_factory=list)


class TeamIn(TeamPatch):
    name: str = Field(pattern=NAME)


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


async def create_team(request: Request, b: Budgets, s: Settings) -> Response:
    body = await parse(TeamIn, request)
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
    return json_response((await team_or_404(b, request.path_params["name"])).to_dict())


async def patch_team(request: Request, b: Budgets, s: Settings) -> Response:
    team = await team_or_404(b, request.path_params["name"])
    body = await parse(TeamPatch, request)
    _check_names(request, body)
    for field in body.model_fields_set:
        setattr(team, field, getattr(body, field))
    if not await b.store.update_team(team):
        raise NotFound(f"There is no team '{team.name}'.", code="team_not_found")
    b.auth.forget()
    return json_response(team.to_dict())


async def delete_team(request: Request, b: Budgets, s: Settings) -> Response:
    team = await team_or_404(b, request.path_params["name"])
    ids = await b.store.delete_team(team.name)
    b.auth.forget()
    log.info("team %s deleted with %d keys", team.name, len(ids))
    return json_response({"name": team.name, "deleted": True, "keys_deleted": ids})


async def team_spend(request: Request, b: Budgets, s: Settings) -> Response:
    team = await team_or_404(b, request.path_params["name"])
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


HANDLERS: list[tuple[str, str, Handler]] = [
    ("/admin/teams", "POST", create_team),
    ("/admin/teams", "GET", list_teams),
    ("/admin/teams/{name}", "GET", get_team),
    ("/admin/teams/{name}", "PATCH", patch_team),
    ("/admin/teams/{name}", "DELETE", delete_team),
    ("/admin/teams/{name}/spend", "GET", team_spend),
]
