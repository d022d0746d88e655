"""Budget math, key format, a period that rolls over at its boundary with no restart, and
settlement: at most the hold, once, whatever the store or the backend does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.auth import KeyAuthenticator, bearer, mint_key, parse_key
from gateway.backend import BaseBackend
from gateway.budgets import period_id, period_start, to_nano, to_nano_ceil, worst_case_usd
from gateway.config import BackendConfig, BudgetsConfig, Pricing
from gateway.errors import AuthenticationFailed, BudgetExceeded
from gateway.interfaces import RequestFeatures
from gateway.metrics import Metrics
from gateway.pipeline.admission import BudgetAdmission
from gateway.pipeline.context import RequestContext
from gateway.state import Spend, StateUnavailable, Team
from plugins.state_memory import MemoryStore


def ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("period", "now", "pid", "start"), [
    ("day", "2026-11-05T23:59:59", "d2026-11-05", "2026-11-05T00:00:00"),
    ("day", "2026-11-06T00:00:00", "d2026-11-06", "2026-11-06T00:00:00"),
    ("week", "2026-11-08T12:00:00", "w2026-11-02", "2026-11-02T00:00:00"),  # a Sunday
    ("month", "2026-12-31T23:00:00", "m2026-12", "2026-12-01T00:00:00"),
    ("total", "2026-12-31T23:00:00", "total", "1970-01-01T00:00:00"),
])
def test_periods(period: Any, now: str, pid: str, start: str) -> None:
    assert period_id(period, ts(now)) == pid
    assert period_start(period, ts(now)) == datetime.fromisoformat(start).replace(tzinfo=UTC)


def test_money_and_worst_case() -> None:
    assert to_nano(0.014) == 14_000_000 and to_nano_ceil(0.014) == 14_000_000
    assert to_nano_ceil(1.001e-9) == 2
    assert worst_case_usd(1e-6, 2e-6, 10, None, 100) == pytest.approx(10e-6 + 200e-6)
    assert worst_case_usd(1e-6, 2e-6, 10, 5, 100) == pytest.approx(20e-6)


def test_key_format() -> None:
    key, rec = mint_key("acme", "ci")
    key_id, secret = parse_key(key)  # type: ignore[misc]
    assert key_id == rec.key_id and secret not in rec.to_dict().values()
    assert parse_key("sk-other") is None and parse_key("sk-sy-short_x") is None
    assert bearer("Bearer  abc ") == "abc" and bearer("Basic abc") is None and bearer(None) is None


async def test_expired_key_is_refused() -> None:
    store = MemoryStore()
    await store.create_team(Team(name="acme"))
    key, rec = mint_key("acme", "ci", expires_at=1.0)
    await store.put_key(rec)
    with pytest.raises(AuthenticationFailed, match="expired"):
        await KeyAuthenticator(store).verify(f"Bearer {key}")


async def test_period_rolls_over_at_midnight_without_restart() -> None:
    now = [ts("2026-11-05T23:59:58")]
    store = MemoryStore(clock=lambda: now[0])
    await store.create_team(Team(name="acme", budget_usd=0.01, period="day"))
    key, rec = mint_key("acme", "ci")
    await store.put_key(rec)
    adm = BudgetAdmission(store, BudgetsConfig(), clock=lambda: now[0])
    backend = BaseBackend(BackendConfig(name="b", plugin="x", pricing=Pricing(output_per_mtok=1000)))
    features = RequestFeatures("chat", "b", prompt_tokens=3, max_tokens=10)  # $0.01 worst case
    ident = await KeyAuthenticator(store).verify(f"Bearer {key}")

    def ctx() -> RequestContext:
        c = RequestContext(request_id="r", team="acme")
        c.identity = ident
        return c

    c = ctx()
    await adm.settle(c, await adm.reserve(c, backend, features), 0.01, 13)
    with pytest.raises(BudgetExceeded):
        await adm.reserve(ctx(), backend, features)
    now[0] = ts("2026-11-06T00:00:01")
    assert await adm.reserve(ctx(), backend, features) is not None
    assert (await store.spend("acme", "d2026-11-05")).spent == to_nano(0.01), "kept"


async def test_a_settlement_redis_refuses_is_logged_queued_and_billed_once(
        redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """A store error other than an outage (here a corrupted hold, so the settle script
    fails) never reaches the client: it is logged without the key, retried, billed once."""
    import redis

    from plugins.state_redis import RedisStore

    store = RedisStore(redis_url, redis_prefix)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await store.create_team(Team(name="acme", budget_usd=1.0, period="total"))
        key, rec = mint_key("acme", "ci")
        await store.put_key(rec)
        adm = BudgetAdmission(store, BudgetsConfig())
        backend = BaseBackend(BackendConfig(name="b", plugin="x",
                                            pricing=Pricing(output_per_mtok=1000)))
        ctx = RequestContext(request_id="r", team="acme")
        ctx.identity = await KeyAuthenticator(store).verify(f"Bearer {key}")
        r = await adm.reserve(ctx, backend, RequestFeatures("chat", "b", prompt_tokens=3, max_tokens=10))
        assert r is not None
        hold = f"{redis_prefix}{{acme}}:b:total"
        amount = raw.hget(hold, f"r:{r.res_id}")
        raw.hset(hold, f"r:{r.res_id}", "not-a-number")
        with caplog.at_level("WARNING", logger="switchyard.budgets"):
            await adm.settle(ctx, r, 0.002, 13)  # no exception: the client gets its answer
            assert "queued to retry" in caplog.text
            assert await adm.reconcile() == 1, "still refused: kept for later"
        assert key not in caplog.text and key.split("_", 1)[1] not in caplog.text
        raw.hset(hold, f"r:{r.res_id}", amount)  # the store is healthy again
        assert await adm.reconcile() == 0
        assert (await store.spend("acme", "total")).spent == to_nano(0.002)
        assert await adm.reconcile() == 0 and (await store.spend("acme", "total")).spent == \
            to_nano(0.002), "billed once"
    finally:
        raw.close()
        await store.close()


@pytest.fixture(params=["memory", "redis"])
async def any_store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        yield MemoryStore()
        return
    from plugins.state_redis import RedisStore

    store = RedisStore(request.getfixturevalue("redis_url"),
                       request.getfixturevalue("redis_prefix"))
    yield store
    await store.close()


async def _admitted(store: Any, budget_usd: float | None) -> tuple[RequestContext, str]:
    await store.create_team(Team(name="acme", budget_usd=budget_usd, period="total"))
    key, rec = mint_key("acme", "ci")
    await store.put_key(rec)
    ctx = RequestContext(request_id="r", team="acme")
    ctx.identity = await KeyAuthenticator(store).verify(f"Bearer {key}")
    return ctx, key


def _overrun(metrics: Metrics, backend: str) -> float:
    value = metrics.registry.get_sample_value("switchyard_budget_overrun_usd_total",
                                              {"backend": backend})
    return value or 0.0


@pytest.mark.parametrize("budget_usd", [1.0, None], ids=["budget", "no-budget"])
async def test_settlement_charges_at_most_the_hold(
        any_store: Any, budget_usd: float | None, caplog: pytest.LogCaptureFixture) -> None:
    """A backend that reports far more than the hold (here 10,000 times the most it could
    cost) is charged the hold: the spend stays within what was checked against the budget.
    The rest is logged and counted per backend; a cost within the hold is charged whole."""
    ctx, key = await _admitted(any_store, budget_usd)
    metrics = Metrics()
    adm = BudgetAdmission(any_store, BudgetsConfig(), metrics=metrics)
    backend = BaseBackend(BackendConfig(name="liar", plugin="x",
                                        pricing=Pricing(output_per_mtok=1000)))
    features = RequestFeatures("chat", "liar", prompt_tokens=3, max_tokens=10)  # holds $0.01
    r = await adm.reserve(ctx, backend, features)
    with caplog.at_level("WARNING", logger="switchyard.budgets"):
        await adm.settle(ctx, r, 100.0, 13)
    spend = await any_store.spend("acme", "total")
    assert (spend.spent, spend.reserved) == (to_nano(0.01), 0)
    assert _overrun(metrics, "liar") == pytest.approx(100.0 - 0.01)
    assert "backend liar reported $100.000000000" in caplog.text
    assert "team acme that held $0.010000000" in caplog.text
    assert key not in caplog.text and key.split("_", 1)[1] not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="switchyard.budgets"):
        await adm.settle(ctx, await adm.reserve(ctx, backend, features), 0.004, 4)
    assert (await any_store.spend("acme", "total")).spent == to_nano(0.014)
    assert _overrun(metrics, "liar") == pytest.approx(100.0 - 0.01), "within the hold"
    assert caplog.text == ""


class _LostReply(MemoryStore):
    """A store whose reservation is made but whose reply never arrives (a connection reset
    after the script ran), while it is unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def reserve(self, team: str, period: str, res_id: str, amount: int, ttl_s: float,
                      keep_s: int) -> Any:
        held = await super().reserve(team, period, res_id, amount, ttl_s, keep_s)
        if self.down:
            raise StateUnavailable("Redis is unreachable (ConnectionError)")
        return held

    async def settle(self, team: str, period: str, res_id: str, actual: int) -> Any:
        if self.down:
            raise StateUnavailable("Redis is unreachable (ConnectionError)")
        return await super().settle(team, period, res_id, actual)


async def test_a_hold_whose_reply_was_lost_is_released_when_the_store_returns() -> None:
    store = _LostReply()
    ctx, _ = await _admitted(store, 1.0)
    adm = BudgetAdmission(store, BudgetsConfig())
    backend = BaseBackend(BackendConfig(name="b", plugin="x",
                                        pricing=Pricing(output_per_mtok=1000)))
    store.down = True
    with pytest.raises(StateUnavailable):
        await adm.reserve(ctx, backend, RequestFeatures("chat", "b", prompt_tokens=3,
                                                        max_tokens=10))
    assert (await store.spend("acme", "total")).reserved == to_nano(0.01), "held, reply lost"
    assert await adm.reconcile() == 1, "kept while the store is away"
    store.down = False
    assert await adm.reconcile() == 0
    assert await store.spend("acme", "total") == Spend(0, 0, False)


async def test_per_hour_pricing_is_held_for_the_whole_timeout() -> None:
    """A backend billed by the hour can be busy at most its total timeout: that is held, so
    its real cost is charged in full, within the hold."""
    store = MemoryStore()
    ctx, _ = await _admitted(store, 0.015)
    adm = BudgetAdmission(store, BudgetsConfig())
    gpu = BaseBackend(BackendConfig(name="gpu", plugin="x", timeouts={"total_s": 10},
                                    pricing=Pricing(per_hour=3.6)))  # $0.001 a second
    features = RequestFeatures("chat", "gpu", prompt_tokens=3, max_tokens=10)
    r = await adm.reserve(ctx, gpu, features)
    assert (await store.spend("acme", "total")).reserved == to_nano(0.01)
    with pytest.raises(BudgetExceeded, match=r"10 s at \$3.6/hour"):
        await adm.reserve(ctx, gpu, features)
    await adm.settle(ctx, r, 0.0042, 13)  # 4.2 s busy
    assert await store.spend("acme", "total") == Spend(to_nano(0.0042), 0, False)
