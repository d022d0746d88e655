"""When a settlement is sent: at once (before the caller's accounting) when its hold is the
only one in flight, on the loop's next turn when others are (concurrent settlements then
reach the store together rather than one write each). Either way exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.auth import KeyAuthenticator, mint_key
from gateway.backend import BaseBackend
from gateway.config import BackendConfig, BudgetsConfig, Pricing
from gateway.interfaces import RequestFeatures
from gateway.pipeline.admission import BudgetAdmission, Started
from gateway.pipeline.context import RequestContext
from gateway.state import Settled, Team
from plugins.state_memory import MemoryStore


class _Gated(MemoryStore):
    """Records each settlement as it is sent; its reply waits for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.gate: asyncio.Future[None] | None = None

    async def settle(self, team: str, period: str, res_id: str, actual: int) -> Settled:
        self.sent.append(res_id)
        if self.gate is not None:
            await self.gate
        return await super().settle(team, period, res_id, actual)


async def _setup() -> tuple[_Gated, BudgetAdmission, RequestContext, BaseBackend]:
    store = _Gated()
    await store.create_team(Team(name="acme", budget_usd=10.0, period="total"))
    key, rec = mint_key("acme", "ci")
    await store.put_key(rec)
    ctx = RequestContext(request_id="r", team="acme")
    ctx.identity = await KeyAuthenticator(store).verify(f"Bearer {key}")
    backend = BaseBackend(BackendConfig(name="b", plugin="x", pricing=Pricing(output_per_mtok=1)))
    return store, BudgetAdmission(store, BudgetsConfig()), ctx, backend


FEATURES = RequestFeatures("chat", "b", prompt_tokens=3, max_tokens=10)


async def test_a_lone_hold_is_settled_before_the_caller_goes_on() -> None:
    store, adm, ctx, backend = await _setup()
    store.gate = asyncio.get_running_loop().create_future()
    hold: Any = await adm.reserve(ctx, backend, FEATURES)
    settling = Started(adm.settle(ctx, hold, 0.000001, 13))
    assert store.sent == [hold.res_id]  # sent before anything else ran
    store.gate.set_result(None)
    await settling
    await adm.settle(ctx, hold, 0.000001, 13)  # a second settlement changes nothing
    assert store.sent == [hold.res_id]
    assert adm._holds == 0


async def test_with_other_holds_in_flight_it_goes_on_the_next_turn() -> None:
    store, adm, ctx, backend = await _setup()
    first: Any = await adm.reserve(ctx, backend, FEATURES)
    second: Any = await adm.reserve(ctx, backend, FEATURES)
    settling = Started(adm.settle(ctx, first, 0.000001, 13))
    assert store.sent == []
    await settling
    assert store.sent == [first.res_id]
    await adm.settle(ctx, second, 0.000001, 13)  # now alone: at once again
    assert store.sent == [first.res_id, second.res_id]
    assert adm._holds == 0
    assert (await store.spend("acme", "total")).reserved == 0
