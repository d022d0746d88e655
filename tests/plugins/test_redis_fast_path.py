"""The Redis store's hot path: the scripts of a request (``reserve_within``, ``settle_adding``)
with fewer commands, and a sequential caller's replies read without a trip through the loop
(``RespClient._spin``). What must not change: every key still expires, a retried hold still
counts once, and a reply that does not come in the spin's time still arrives (or fails as
an outage) through the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from gateway import Limit, StateUnavailable, Team
from plugins import redis_resp
from plugins.state_redis import RedisStore

KEEP = 3600


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, redis_prefix)
    await s.create_team(Team(name="acme", budget_usd=10.0, period="day", rpm=2, tpm=10**6))
    yield s
    await s.close()


def _ttls(redis_url: str, prefix: str) -> dict[str, int]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as raw:
        return {k[len(prefix):]: int(raw.ttl(k)) for k in raw.scan_iter(match=prefix + "*")}


async def test_every_key_a_request_writes_expires(store: RedisStore, redis_url: str,
                                                  redis_prefix: str) -> None:
    """The period's hash gets its expiry once, when made; the holds' zset each time it may
    be new (nothing held); the windows on every entry. The team's own hash and the team
    set never expire."""
    limits = [Limit("team:rpm", 2, 1), Limit("team:tpm", 10**6, 12)]
    for i in range(2):  # the second finds the hash made and the zset emptied by a settlement
        r = await store.reserve_within("acme", limits, "p1", f"r{i}", 1000, 60, KEEP)
        assert r.ok
        ttls = _ttls(redis_url, redis_prefix)
        assert 0 < ttls["{acme}:bx:p1"] <= KEEP
        await store.settle_adding("acme", "p1", f"r{i}", 500, [Limit("team:tpm", 10**6, 8)])
    ttls = _ttls(redis_url, redis_prefix)
    assert 0 < ttls.pop("{acme}:b:p1") <= KEEP
    for name in ("rl:team:rpm", "rl:team:rpm:sum", "rl:team:tpm", "rl:team:tpm:sum"):
        assert 0 < ttls.pop("{acme}:" + name) <= 61
    assert ttls.pop("{acme}:team") == -1 and ttls.pop("teams") == -1
    assert ttls == {}, ttls  # nothing else: no sequence counter for a request's entries


async def test_a_retried_hold_takes_its_window_once(store: RedisStore) -> None:
    """A hold sent twice under one id (its first reply lost) is held once and counted once
    in the windows: with 2 requests a minute, a second request still fits, a third does
    not."""
    limits = [Limit("team:rpm", 2, 1)]
    first = await store.reserve_within("acme", limits, "p1", "same", 1000, 60, KEEP)
    again = await store.reserve_within("acme", limits, "p1", "same", 1000, 60, KEEP)
    assert first.ok and again.ok and again.reserved == first.reserved == 1000
    assert (await store.reserve_within("acme", limits, "p1", "other", 1000, 60, KEEP)).ok
    refused = await store.reserve_within("acme", limits, "p1", "third", 1000, 60, KEEP)
    assert not refused.ok and refused.wait_s > 0


async def test_a_settlement_retried_adds_its_tokens_once(store: RedisStore) -> None:
    limits = [Limit("team:tpm", 100, 10)]
    assert (await store.reserve_within("acme", limits, "p1", "r1", 1000, 60, KEEP)).ok
    fix = [Limit("team:tpm", 100, 80)]
    assert (await store.settle_adding("acme", "p1", "r1", 500, fix)).applied
    assert not (await store.settle_adding("acme", "p1", "r1", 500, fix)).applied
    # 90 tokens counted: 10 more fit, 11 do not
    assert await store.hit("acme", [Limit("team:tpm", 100, 11)]) > 0
    assert await store.hit("acme", [Limit("team:tpm", 100, 10)]) == 0


def _count_spins(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    seen = {"replied": 0, "late": 0}
    spin = redis_resp._Connection.spin

    def counted(self: Any, fut: Any, limit_s: float) -> bool:
        ok = spin(self, fut, limit_s)
        seen["replied" if ok else "late"] += 1
        return ok

    monkeypatch.setattr(redis_resp._Connection, "spin", counted)
    return seen


async def test_a_sequential_caller_reads_its_replies_without_the_loop(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One request at a time: each hold and its settlement find nothing else held."""
    seen = _count_spins(monkeypatch)
    for i in range(20):
        assert (await store.reserve("acme", "p1", f"s{i}", 1, 60, KEEP)).ok
        assert (await store.settle("acme", "p1", f"s{i}", 1)).applied
    assert seen["replied"] >= 30  # the odd reply may come late on a busy machine


async def test_a_busy_client_never_spins(store: RedisStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests in flight at once (holds not settled yet): the loop has other work, so
    replies are awaited on it. Only the first of a burst finds nothing held."""
    seen = _count_spins(monkeypatch)
    held = await asyncio.gather(*(store.reserve("acme", "p1", f"c{i}", 1, 60, KEEP)
                                  for i in range(20)))
    assert all(r.ok for r in held)
    assert (await store.reserve("acme", "p1", "after", 1, 60, KEEP)).ok
    assert seen["replied"] + seen["late"] == 1, seen
    for i in range(20):
        await store.settle("acme", "p1", f"c{i}", 1)
    await asyncio.sleep(redis_resp._BUSY_S)  # the burst's commands overlapped: busy until
    await store.settle("acme", "p1", "after", 1)
    assert seen["replied"] + seen["late"] == 2, seen  # the last settlement is alone again


async def test_a_connection_closed_while_spinning_is_a_connection_failure() -> None:
    """A server that reads a command and closes: the spin reads the end of the stream, the
    connection fails like one the loop saw close, and the call (sent once more on a fresh
    connection, which closes too) is an outage."""
    accepted: list[int] = []

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.read(1 << 16)
        writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "switchyard-test-closing:",
                       timeout_s=5, spin_us=200_000)
    try:
        with pytest.raises(StateUnavailable):
            await asyncio.wait_for(store.spend("acme", "p1"), 3)
        assert len(accepted) == 2
    finally:
        await store.close()
        server.close()
        await server.wait_closed()


async def test_no_spin_over_tls() -> None:
    """A TLS socket carries records, not the protocol: only the loop's transport reads it."""
    assert RedisStore("rediss://127.0.0.1:1/0").r.spin_s == 0
    assert RedisStore("redis://127.0.0.1:1/0").r.spin_s > 0
    assert RedisStore("redis://127.0.0.1:1/0", spin_us=0).r.spin_s == 0
