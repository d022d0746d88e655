"""The scripts of a request (``reserve_within``, ``settle_adding``) with fewer commands: one
read for the hold, no sequence counter for a request's window entries, the period hash's
expiry set once. What must not change: every key still expires, and a retried hold or
settlement still counts once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from gateway import Limit, Team
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
