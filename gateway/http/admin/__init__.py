"""The admin API under ``/admin``, authorised by the admin key: one module per resource
(``teams``, ``keys``, ``spend``, ``report``, ``backends``), what they share in ``common``."""

from __future__ import annotations

from starlette.routing import Route

from gateway.http.admin import backends, keys, report, spend, teams
from gateway.http.admin.backends import DrainIn
from gateway.http.admin.common import admin_route
from gateway.http.admin.keys import KeyIn
from gateway.http.admin.teams import TeamIn, TeamPatch

__all__ = ["DrainIn", "KeyIn", "TeamIn", "TeamPatch", "admin_routes"]


def admin_routes() -> list[Route]:
    return [Route(path, admin_route(fn), methods=[method])
            for module in (teams, keys, spend, report, backends)
            for path, method, fn in module.HANDLERS]
