"""The seam where budgets and rate limits plug into the pipeline.

``Admission.admit`` runs before routing (rate limits, the team's constraints);
``reserve`` before each backend call (the worst-case cost, atomically); ``settle`` after it
(the real cost, releasing the rest). The embedded default admits everything.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.interfaces import Backend, RequestFeatures
from gateway.pipeline.context import RequestContext


class Admission(Protocol):
    async def admit(self, ctx: RequestContext, features: RequestFeatures) -> None: ...

    async def reserve(
        self, ctx: RequestContext, backend: Backend, features: RequestFeatures
    ) -> Any: ...

    async def settle(self, ctx: RequestContext, reservation: Any, cost_usd: float, tokens: int) -> None: ...


class OpenAdmission:
    """No teams configured: everything is admitted, nothing is reserved."""

    async def admit(self, ctx: RequestContext, features: RequestFeatures) -> None:
        return None

    async def reserve(self, ctx: RequestContext, backend: Backend, features: RequestFeatures) -> Any:
        return None

    async def settle(self, ctx: RequestContext, reservation: Any, cost_usd: float, tokens: int) -> None:
        return None
