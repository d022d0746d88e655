"""``first_healthy``: the route's backends in their configured order, healthy ones first.
Unhealthy ones are still tried last; drained ones (an operator's choice) never are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway import Candidate, Constraints, Plan, RegisterPolicy, RequestFeatures, hookimpl


class FirstHealthy:
    name = "first_healthy"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FirstHealthy:
        """It predicts nothing, so it takes no options: any is a mistake, reported."""
        if options:
            raise ValueError(f"policy 'first_healthy' takes no options "
                             f"(got {', '.join(map(repr, sorted(options)))})")
        return cls()

    def plan(
        self, request: RequestFeatures, candidates: Sequence[Candidate], constraints: Constraints
    ) -> Plan:
        if not candidates:
            return Plan([], "no candidate", self.name)
        drained = {c.name: f"out of service (drained: {c.drained_reason or 'no reason given'})"
                   for c in candidates if c.drained}
        healthy = [c.name for c in candidates if c.healthy and not c.drained]
        rest = [c.name for c in candidates if not c.healthy and not c.drained]
        if not healthy and not rest:
            return Plan([], "every backend is drained", self.name, rejected=drained)
        reason = "first healthy in route order" if healthy else "all unhealthy, trying anyway"
        return Plan(healthy + rest, reason, self.name, rejected=drained)


@hookimpl(trylast=True)
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("first_healthy", FirstHealthy.from_options)
