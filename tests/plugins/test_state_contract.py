"""One contract, three state stores: the in-process one, SQLite (a file per test, shared by
the workers of one host) and Redis (real, a prefix per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from support import free_port

from gateway.state import KeyRecord, Limit, Spend, StateStore, StateUnavailable, Team
from plugins.state_memory import MemoryStore
from plugins.state_redis import RedisStore
from plugins.state_sqlite import SQLiteStore

KEEP = 3600
# Amounts in nano-dollars at the edges: zero (Lua writes -0 for its negation, which Redis
# refused), one, and one beyond what a double holds exactly (Lua writes 1e+18).
AMOUNTS = pytest.mark.parametrize("amount", [0, 1, 10**18 + 1], ids=["zero", "1nano", "huge"])


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        s: StateStore = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(request.getfixturevalue("tmp_path") / "state.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, request.getfixturevalue("redis_prefix"))
    await s.start()
    yield s
    await s.close()


def team(name: str = "acme", **kw: object) -> Team:
    return Team(name=name, created_at=time.time(), **kw)  # type: ignore[arg-type]


def key(key_id: str, team_name: str = "acme") -> KeyRecord:
    return KeyRecord(key_id=key_id, team=team_name, name=f"k-{key_id}", salt="00", digest="11",
                     created_at=time.time())


async def test_teams_create_get_update_list_delete(store: StateStore) -> None:
    assert not await store.has_teams()
    assert await store.create_team(team(budget_usd=5.0, models=["m"]))
    assert not await store.create_team(team(budget_usd=9.0)), "a duplicate name must be refused"
    got = await store.get_team("acme")
    assert got is not None and got.budget_usd == 5.0 and got.models == ["m"]
    got.rpm = 7
    assert await store.update_team(got)
    assert (await store.get_team("acme")).rpm == 7  # type: ignore[union-attr]
    assert not await store.update_team(team("ghost"))
    await store.create_team(team("beta"))
    assert [t.name for t in await store.list_teams()] == ["acme", "beta"]
    assert await store.has_teams()
    await store.put_key(key("k1"))
    assert await store.delete_team("acme") == ["k1"]
    assert await store.get_team("acme") is None
    assert await store.get_key("k1") is None, "a deleted team's keys stop working"
    assert [t.name for t in await store.list_teams()] == ["beta"]


async def test_keys_round_trip_and_list_by_team(store: StateStore) -> None:
    await store.create_team(team())
    await store.create_team(team("beta"))
    await store.put_key(key("a1"))
    await store.put_key(key("b1", "beta"))
    rec = await store.get_key("a1")
    assert rec is not None and rec.team == "acme" and rec.digest == "11"
    rec.revoked_at = 123.0
    await store.put_key(rec)
    assert (await store.get_key("a1")).revoked_at == 123.0  # type: ignore[union-attr]
    assert [k.key_id for k in await store.list_keys("beta")] == ["b1"]
    assert {k.key_id for k in await store.list_keys()} == {"a1", "b1"}
    assert await store.get_key("nope") is None


async def test_reservations_never_exceed_the_budget_under_concurrency(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1e-6))  # 1000 nano-dollars
    results = await asyncio.gather(*(
        store.reserve("acme", "p1", f"r{i}", 100, 60, KEEP) for i in range(40)))
    assert sum(r.ok for r in results) == 10
    s = await store.spend("acme", "p1")
    assert (s.spent, s.reserved) == (0, 1000)
    refused = next(r for r in results if not r.ok)
    assert refused.budget == 1000 and refused.spent + refused.reserved == 1000


async def test_a_burst_wider_than_the_connection_pool_waits_its_turn(store: StateStore) -> None:
    """250 calls at once: more than a connection pool holds (redis-py's cap of 100 once
    refused the rest, which read as an outage and failed requests closed)."""
    await store.create_team(team(budget_usd=1e-6))
    results = await asyncio.gather(*(
        store.reserve("acme", "p1", f"r{i}", 10, 60, KEEP) for i in range(250)))
    assert sum(r.ok for r in results) == 100


async def test_a_reservation_made_twice_under_one_id_is_held_once(store: StateStore) -> None:
    """A reserve retried after its reply was lost (a connection reset mid-reply) must not
    hold twice: the second hold would never be released."""
    await store.create_team(team(budget_usd=1e-6))
    assert (await store.reserve("acme", "p1", "r1", 600, 60, KEEP)).ok
    again = await store.reserve("acme", "p1", "r1", 600, 60, KEEP)
    assert again.ok and (again.spent, again.reserved) == (0, 600)
    assert (await store.settle("acme", "p1", "r1", 250)).applied
    assert await store.spend("acme", "p1") == Spend(250, 0, False)


async def test_settle_releases_the_rest_once(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1e-6))
    assert (await store.reserve("acme", "p1", "r1", 600, 60, KEEP)).ok
    assert not (await store.reserve("acme", "p1", "r2", 600, 60, KEEP)).ok
    first = await store.settle("acme", "p1", "r1", 250)
    assert first.applied and first.spent == 250
    again = await store.settle("acme", "p1", "r1", 250)
    assert not again.applied and again.spent == 250, "a repeated settle must not bill twice"
    assert (await store.reserve("acme", "p1", "r2", 600, 60, KEEP)).ok
    assert await store.spend("acme", "p1") == type(await store.spend("acme", "p1"))(250, 600, False)


async def test_periods_are_separate(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1e-6))
    assert (await store.reserve("acme", "d1", "r1", 1000, 60, KEEP)).ok
    await store.settle("acme", "d1", "r1", 1000)
    assert not (await store.reserve("acme", "d1", "r2", 1, 60, KEEP)).ok
    assert (await store.reserve("acme", "d2", "r3", 1000, 60, KEEP)).ok, "a new period starts at 0"
    assert (await store.spend("acme", "d1")).spent == 1000


async def test_expired_reservation_is_released_and_still_billed_once(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1e-6))
    assert (await store.reserve("acme", "p1", "dead", 900, 0.05, KEEP)).ok
    await asyncio.sleep(0.1)
    assert (await store.reserve("acme", "p1", "r2", 900, 60, KEEP)).ok, "expired hold released"
    late = await store.settle("acme", "p1", "dead", 50)
    assert late.applied and late.spent == 50
    assert not (await store.settle("acme", "p1", "dead", 50)).applied


async def test_no_budget_tracks_spend_and_unknown_team_is_refused(store: StateStore) -> None:
    await store.create_team(team())
    r = await store.reserve("acme", "p1", "r1", 10**12, 60, KEEP)
    assert r.ok and r.budget == -1
    await store.settle("acme", "p1", "r1", 77)
    assert (await store.spend("acme", "p1")).spent == 77
    ghost = await store.reserve("ghost", "p1", "r1", 1, 60, KEEP)
    assert not ghost.ok and not ghost.exists


async def test_soft_limit_alert_fires_once_per_period(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1e-6, soft_limit_pct=50))
    alerts = []
    for i in range(4):
        await store.reserve("acme", "p1", f"r{i}", 200, 60, KEEP)
        alerts.append((await store.settle("acme", "p1", f"r{i}", 200)).alert)
    assert alerts == [False, False, True, False]
    assert (await store.spend("acme", "p1")).alerted
    await store.reserve("acme", "p2", "x", 600, 60, KEEP)
    assert (await store.settle("acme", "p2", "x", 600)).alert, "again in the next period"


@AMOUNTS
async def test_amounts_are_held_settled_and_charged_exactly(store: StateStore,
                                                            amount: int) -> None:
    await store.create_team(team())  # no budget: every amount fits
    r = await store.reserve("acme", "p1", "r1", amount, 60, KEEP)
    assert r.ok and (r.spent, r.reserved) == (0, amount)
    s = await store.settle("acme", "p1", "r1", amount)
    assert s.applied and s.spent == amount
    again = await store.settle("acme", "p1", "r1", amount)
    assert not again.applied and again.spent == amount
    assert await store.spend("acme", "p1") == Spend(amount, 0, False)
    c = await store.charge("acme", "p1", "c1", amount, KEEP)
    assert c.applied and c.spent == 2 * amount
    assert (await store.charge("acme", "p1", "c1", amount, KEEP)).spent == 2 * amount


@AMOUNTS
async def test_a_hold_released_unused_frees_its_amount(store: StateStore, amount: int) -> None:
    """What a failed or timed-out call settles: the actual cost is zero."""
    await store.create_team(team())
    assert (await store.reserve("acme", "p1", "r1", amount, 60, KEEP)).ok
    s = await store.settle("acme", "p1", "r1", 0)
    assert s.applied and s.spent == 0
    assert await store.spend("acme", "p1") == Spend(0, 0, False)


@AMOUNTS
async def test_an_expired_hold_of_any_amount_is_released(store: StateStore, amount: int) -> None:
    await store.create_team(team())
    assert (await store.reserve("acme", "p1", "dead", amount, 0.01, KEEP)).ok
    deadline = time.monotonic() + 10
    while (await store.spend("acme", "p1")).reserved:
        assert time.monotonic() < deadline, "the hold never expired"
        await asyncio.sleep(0.02)
    late = await store.settle("acme", "p1", "dead", amount)
    assert late.applied and late.spent == amount, "released, and still billed once"


@AMOUNTS
async def test_a_budget_of_exactly_the_amount_admits_it_and_nothing_more(
        store: StateStore, amount: int) -> None:
    await store.create_team(team())
    t = await store.get_team("acme")
    assert t is not None
    t.budget_usd = amount / 1e9
    await store.update_team(t)
    budget = t.budget_nano  # as close to amount as a float in dollars gets
    assert (await store.reserve("acme", "p1", "r1", budget, 60, KEEP)).ok
    over = await store.reserve("acme", "p1", "r2", 1, 60, KEEP)
    assert not over.ok and (over.spent, over.reserved, over.budget) == (0, budget, budget)
    await store.settle("acme", "p1", "r1", budget)
    assert not (await store.reserve("acme", "p1", "r3", 1, 60, KEEP)).ok
    assert (await store.reserve("acme", "p1", "r4", 0, 60, KEEP)).ok, "zero always fits"


@AMOUNTS
async def test_the_soft_limit_alerts_at_exactly_its_amount(store: StateStore,
                                                           amount: int) -> None:
    await store.create_team(team(budget_usd=2 * (amount + 1) / 1e9, soft_limit_pct=50))
    soft = (await store.get_team("acme")).soft_nano  # type: ignore[union-attr]
    assert soft >= 1
    await store.reserve("acme", "p1", "below", soft - 1, 60, KEEP)
    assert not (await store.settle("acme", "p1", "below", soft - 1)).alert, "1 nano short"
    await store.reserve("acme", "p1", "at", 1, 60, KEEP)
    assert (await store.settle("acme", "p1", "at", 1)).alert


async def test_charge_is_idempotent(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1.0))
    assert (await store.charge("acme", "p1", "c1", 40, KEEP)).applied
    assert not (await store.charge("acme", "p1", "c1", 40, KEEP)).applied
    assert (await store.spend("acme", "p1")).spent == 40


async def test_sliding_window_takes_exactly_the_limit(store: StateStore) -> None:
    # a window far longer than the hits take, however loaded the machine
    lim = [Limit("team:rpm", 5, 1, 60)]
    results = await asyncio.gather(*(store.hit("acme", lim) for _ in range(12)))
    assert sum(r == 0 for r in results) == 5
    assert all(0 < r <= 60 for r in results if r)


async def test_the_window_slides_once_the_first_hit_is_older_than_it(store: StateStore) -> None:
    win = 0.5
    lim = [Limit("team:rpm", 1, 1, win)]
    before = time.time()  # the hit's own time is no earlier than this
    assert await store.hit("acme", lim) == 0
    deadline = time.monotonic() + 30
    while (wait := await store.hit("acme", lim)) > 0:
        assert wait <= win
        assert time.monotonic() < deadline, "the window never slid"
        await asyncio.sleep(min(wait, 0.05))
    # taken again only once the first hit left the window (the stores' clock is wall time)
    assert time.time() - before >= win - 0.002


async def test_all_limits_or_none(store: StateStore) -> None:
    small = Limit("key:a:rpm", 1, 1, 30)
    big = Limit("team:rpm", 10, 1, 30)
    assert await store.hit("acme", [small, big]) == 0
    assert await store.hit("acme", [small, big]) > 0
    # the refused request took nothing from the team's window: 9 more fit
    results = [await store.hit("acme", [big]) for _ in range(10)]
    assert [r == 0 for r in results] == [True] * 9 + [False]


async def test_token_window_with_corrections(store: StateStore) -> None:
    tpm = Limit("team:tpm", 100, 60, 30)
    assert await store.hit("acme", [tpm]) == 0
    assert await store.hit("acme", [tpm]) > 0  # 60 + 60 > 100
    await store.add("acme", [Limit("team:tpm", 100, -30, 30)])  # the call used fewer
    assert await store.hit("acme", [Limit("team:tpm", 100, 70, 30)]) == 0
    assert await store.hit("acme", [Limit("team:tpm", 100, 500, 30)]) == 30, "never fits"


async def test_limits_and_a_hold_are_taken_together_or_not_at_all(store: StateStore) -> None:
    """``reserve_within``: a request refused by its rate limit holds nothing; one refused by
    the budget takes nothing from its limits; a retry of one that fitted takes nothing more."""
    await store.create_team(team(budget_usd=1e-6))  # 1,000 nano-dollars
    rpm = [Limit("team:rpm", 2, 1, 60)]
    r = await store.reserve_within("acme", rpm, "p", "r1", 600, 60, KEEP)
    assert (r.ok, r.wait_s, r.reserved) == (True, 0.0, 600)
    again = await store.reserve_within("acme", rpm, "p", "r1", 600, 60, KEEP)
    assert again.ok and again.reserved == 600, "a retry is held once"
    over = await store.reserve_within("acme", rpm, "p", "r2", 600, 60, KEEP)
    assert not over.ok and over.wait_s == 0.0, "the budget refused it"
    assert await store.hit("acme", rpm) == 0, "neither the retry nor the refusal took a hit"
    limited = await store.reserve_within("acme", rpm, "p", "r3", 1, 60, KEEP)
    assert not limited.ok and 0 < limited.wait_s <= 60
    assert await store.spend("acme", "p") == Spend(0, 600, False), "the limited one held nothing"
    missing = await store.reserve_within("nobody", rpm, "p", "r4", 1, 60, KEEP)
    assert not missing.exists


async def test_settle_adding_corrects_the_token_window_once(store: StateStore) -> None:
    await store.create_team(team(budget_usd=1.0))
    tpm = Limit("team:tpm", 100, 60, 30)
    assert (await store.reserve_within("acme", [tpm], "p", "r1", 5, 60, KEEP)).ok
    fix = [Limit("team:tpm", 100, -30, 30)]  # the call used 30 tokens, not 60
    settled = await store.settle_adding("acme", "p", "r1", 4, fix)
    assert (settled.applied, settled.spent) == (True, 4)
    again = await store.settle_adding("acme", "p", "r1", 4, fix)
    assert not again.applied and again.spent == 4, "billed once"
    # 30 counted (not 0: the repeat added nothing): 70 more fit, 71 do not
    assert await store.hit("acme", [Limit("team:tpm", 100, 71, 30)]) > 0
    assert await store.hit("acme", [Limit("team:tpm", 100, 70, 30)]) == 0


# ---- backend health ----------------------------------------------------------------------


async def test_backend_marks_are_read_by_name_and_cleared(store: StateStore) -> None:
    until = time.time() + 60
    await store.mark_backend_down("gpu-a", "replica-1", until, "circuit breaker open")
    down = await store.backends_down(["gpu-a", "gpu-b"])
    assert list(down) == ["gpu-a"]
    got_until, replica, reason = down["gpu-a"]
    assert abs(got_until - until) < 0.01 and (replica, reason) == ("replica-1", "circuit breaker open")
    assert await store.backends_down(["gpu-b"]) == {}, "only the names asked for"
    assert await store.backends_down([]) == {}
    await store.clear_backend_down("gpu-a")
    assert await store.backends_down(["gpu-a", "gpu-b"]) == {}
    await store.clear_backend_down("gpu-a")  # clearing nothing is fine


async def test_the_longest_backend_mark_wins(store: StateStore) -> None:
    now = time.time()
    await store.mark_backend_down("gpu-a", "r1", now + 60, "health check failed")
    await store.mark_backend_down("gpu-a", "r2", now + 30, "circuit breaker open")
    assert (await store.backends_down(["gpu-a"]))["gpu-a"][1] == "r1", "a shorter mark is ignored"
    await store.mark_backend_down("gpu-a", "r2", now + 90, "reason with | a bar")
    assert (await store.backends_down(["gpu-a"]))["gpu-a"][1:] == ("r2", "reason with | a bar")
    await store.mark_backend_down("gpu-b", "r1", now - 1, "already over")
    assert "gpu-b" not in await store.backends_down(["gpu-b"]), "a mark in the past is no mark"


async def test_backend_marks_expire_by_themselves(store: StateStore) -> None:
    await store.mark_backend_down("gpu-a", "r1", time.time() + 0.2, "health check failed")
    assert "gpu-a" in await store.backends_down(["gpu-a"])
    deadline = time.monotonic() + 5
    while await store.backends_down(["gpu-a"]):
        assert time.monotonic() < deadline, "the mark never expired"
        await asyncio.sleep(0.05)
    # an expired mark does not block a new, shorter one
    await store.mark_backend_down("gpu-a", "r2", time.time() + 30, "circuit breaker open")
    assert (await store.backends_down(["gpu-a"]))["gpu-a"][1] == "r2"


async def test_drains_never_expire_and_are_apart_from_the_marks(store: StateStore) -> None:
    assert await store.backends_drained(["gpu-a", "gpu-b"]) == {}
    before = time.time()
    await store.set_backend_drained("gpu-a", True, "ops@alice", "kernel upgrade")
    drained = await store.backends_drained(["gpu-a", "gpu-b"])
    assert list(drained) == ["gpu-a"]
    by, reason, since = drained["gpu-a"]
    assert (by, reason) == ("ops@alice", "kernel upgrade")
    assert before - 1 <= since <= time.time() + 1
    assert await store.backends_drained(["gpu-b"]) == {}, "only the names asked for"
    assert await store.backends_drained([]) == {}
    assert await store.backends_down(["gpu-a"]) == {}, "a drain is not a health mark"
    await store.mark_backend_down("gpu-a", "r1", time.time() + 60, "health check failed")
    await store.clear_backend_down("gpu-a")
    assert "gpu-a" in await store.backends_drained(["gpu-a"]), "clearing a mark keeps the drain"
    await store.set_backend_drained("gpu-a", True, "ops@bob", 'new "reason" | with {json}')
    assert (await store.backends_drained(["gpu-a"]))["gpu-a"][:2] == (
        "ops@bob", 'new "reason" | with {json}'), "a second drain replaces the first"
    await store.set_backend_drained("gpu-a", False, "ops@bob", "")
    assert await store.backends_drained(["gpu-a", "gpu-b"]) == {}
    await store.set_backend_drained("gpu-a", False, "ops@bob", "")  # undraining twice is fine


async def test_an_unreachable_redis_raises_state_unavailable() -> None:
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "switchyard-test-dead:")
    try:
        with pytest.raises(StateUnavailable):
            await dead.mark_backend_down("gpu-a", "r1", time.time() + 5, "x")
        with pytest.raises(StateUnavailable):
            await dead.backends_down(["gpu-a"])
        with pytest.raises(StateUnavailable):
            await dead.clear_backend_down("gpu-a")
        with pytest.raises(StateUnavailable):
            await dead.set_backend_drained("gpu-a", True, "ops", "x")
        with pytest.raises(StateUnavailable):
            await dead.backends_drained(["gpu-a"])
    finally:
        await dead.close()


def _kill_clients(redis_url: str, name: str) -> int:
    """Close, server side, every connection named ``name`` (as a Redis restart would)."""
    import redis

    with redis.Redis.from_url(redis_url, decode_responses=True) as raw:
        ids = [c["id"] for c in raw.client_list() if c.get("name") == name]
        for cid in ids:
            raw.client_kill_filter(_id=cid)
    return len(ids)


@pytest.fixture
async def named_redis(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisStore, str]]:
    """A Redis store whose connections carry a name of this test's own, open (16 calls
    made at once)."""
    name = "switchyard-test-" + redis_prefix.split(":")[1]
    s = RedisStore(f"{redis_url}?client_name={name}", redis_prefix)
    await s.create_team(team())
    await asyncio.gather(*(s.reserve("acme", "p1", f"warm{i}", 1, 60, KEEP) for i in range(16)))
    yield s, name
    await s.close()


async def test_pooled_connections_redis_closed_are_replaced_before_use(
        named_redis: tuple[RedisStore, str], redis_url: str) -> None:
    """After a Redis restart every connection is dead. None may fail a call (each failure
    reads as an outage: the gateway fails closed for a reconcile interval), not even a
    rate-limit hit, which is never retried."""
    store, name = named_redis
    assert _kill_clients(redis_url, name) >= 1
    await asyncio.sleep(0.05)  # the loop reads the closed sockets (a restart takes far longer)
    limits = [Limit("team:rpm", 10**6, 1)]
    waits = await asyncio.gather(*(store.hit("acme", limits) for _ in range(16)))
    assert waits == [0.0] * 16


async def test_an_idempotent_call_on_a_connection_dead_mid_command_is_retried(
        named_redis: tuple[RedisStore, str], redis_url: str) -> None:
    """Connections closed under a running loop, used before it has seen them close: a
    reservation (held once under its id) and a settlement are sent again on a fresh
    connection, and each holds or bills once."""
    store, name = named_redis
    assert _kill_clients(redis_url, name) >= 1
    held = await asyncio.gather(*(store.reserve("acme", "p1", f"r{i}", 10, 60, KEEP)
                                  for i in range(16)))
    assert all(r.ok for r in held)
    assert _kill_clients(redis_url, name) >= 1
    await asyncio.gather(*(store.settle("acme", "p1", f"r{i}", 7) for i in range(16)))
    s = await store.spend("acme", "p1")
    assert (s.spent, s.reserved) == (16 * 7, 16 * 1)  # the 16 warm-up holds are still held



async def test_a_redis_that_lost_its_scripts_still_holds_and_settles_once(
        named_redis: tuple[RedisStore, str], redis_url: str) -> None:
    """A restarted Redis has no scripts cached: the store's scripts, sent by their SHA-1,
    come back NOSCRIPT and are sent whole, without failing a call or running twice."""
    import redis

    store, _ = named_redis
    with redis.Redis.from_url(redis_url) as raw:
        raw.script_flush()
    rpm = [Limit("team:rpm", 10**6, 1)]
    held = await asyncio.gather(*(store.reserve_within("acme", rpm, "p2", f"r{i}", 10, 60, KEEP)
                                  for i in range(8)))
    assert all(r.ok for r in held)
    with redis.Redis.from_url(redis_url) as raw:
        raw.script_flush()
    settled = await asyncio.gather(*(store.settle("acme", "p2", f"r{i}", 7) for i in range(8)))
    assert all(s.applied for s in settled)
    assert await store.spend("acme", "p2") == Spend(8 * 7, 0, False)


async def test_a_burst_shares_a_few_connections(named_redis: tuple[RedisStore, str],
                                                redis_url: str) -> None:
    """250 calls at once, after Redis closed every connection: they wait for one new
    connection (a restart does not bring a connection per request in flight), and the
    store never holds more than two."""
    store, name = named_redis
    assert 1 <= _kill_clients(redis_url, name) <= 2
    await asyncio.sleep(0.05)
    held = await asyncio.gather(*(store.reserve("acme", "p1", f"b{i}", 1, 60, KEEP)
                                  for i in range(250)))
    assert all(r.ok for r in held)
    await asyncio.sleep(0.05)  # Redis has dropped any connection the store closed as extra
    assert 1 <= _kill_clients(redis_url, name) <= 2


async def test_a_redis_that_does_not_answer_is_an_outage_within_the_timeout() -> None:
    """A server that accepts and never answers (a Redis stopped with SIGSTOP, a network that
    drops replies): the call fails as an outage after ``timeout_s``, and is not sent again
    (a slow server gets no second load)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "switchyard-test-silent:", timeout_s=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(StateUnavailable):
            await store.spend("acme", "p1")
        assert 0.25 <= time.monotonic() - t0 < 1.5
        assert len(accepted) == 1, "a timed-out call is not retried"
    finally:
        await store.close()
        for w in accepted:
            w.close()
        server.close()
