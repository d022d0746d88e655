"""``first_healthy``: the route's backends in their configured order, healthy ones first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway import Candidate, Constraints, Plan, RequestFeatures, hookimpl


class FirstHealthy:
    name = "first_healthy"

    def plan(
        self, request: RequestFeatures, candidates: Sequence[Candidate], constraints: Constraints
    ) -> Plan:
        healthy = [c.name for c in candidates if c.healthy]
        rest = [c.name for c in candidates if not c.healthy]
        if not candidates:
            return Plan([], "no candidate", self.name)
        reason = "first healthy in route order" if healthy else "all unhealthy, trying anyway"
        return Plan(healthy + rest, reason, self.name)


@hookimpl(trylast=True)
def switchyard_register_policies(register: Any) -> None:
    register("first_healthy", lambda options: FirstHealthy())
