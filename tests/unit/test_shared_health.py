"""Backend health shared through a state store: what one replica finds down, another one
reads and leaves out of its plans; what a passing health check contradicts is cleared.

Two ``SharedHealth`` (two replicas) over one in-process store; the Redis store and real
gateways are in tests/integration/test_shared_health_replicas.py."""

from __future__ import annotations

import logging
import time

import pytest
from support import free_port

from gateway.config import BreakerSettings
from gateway.pipeline.health import BREAKER_OPEN, PROBE_FAILED, SharedHealth
from gateway.telemetry import Tracker
from plugins.state_memory import MemoryStore
from plugins.state_redis import RedisStore

NAMES = ("gpu", "cpu")


def replica(store: object, name: str, open_s: float = 30.0) -> SharedHealth:
    trackers = {n: Tracker(breaker=BreakerSettings(failure_threshold=1, open_s=open_s))
                for n in NAMES}
    return SharedHealth(store, trackers, probe_interval_s=5.0, replica=name)  # type: ignore[arg-type]


def probed(r: SharedHealth, name: str, ok: bool) -> None:
    """What app._probe leaves on the tracker after a round (two failures: unhealthy)."""
    t = r.trackers[name]
    t.last_probe_ok, t.probe_failures = ok, 0 if ok else 2


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


async def test_a_breaker_opened_on_one_replica_takes_the_backend_out_on_another(
        store: MemoryStore) -> None:
    a, b = replica(store, "A"), replica(store, "B")
    a.trackers["gpu"].observe_failure(time.monotonic(), "backend_unavailable")
    await a.tick()
    await b.tick()
    mark = b.trackers["gpu"].remote_down
    assert mark is not None and mark[1:] == ("A", BREAKER_OPEN)
    assert 25 < mark[0] - time.time() <= 30, "marked until the breaker would half-open"
    assert b.trackers["gpu"].remote_down_until > time.monotonic()
    assert b.trackers["cpu"].remote_down is None
    assert a.trackers["gpu"].remote_down is None, "a replica's own mark is not 'elsewhere'"


async def test_a_breaker_is_published_once_per_opening(store: MemoryStore) -> None:
    a, b = replica(store, "A"), replica(store, "B")
    a.trackers["gpu"].observe_failure(time.monotonic(), "backend_unavailable")
    await a.tick()
    await store.clear_backend_down("gpu")  # e.g. another replica's passing check
    await a.tick()
    await b.tick()
    assert b.trackers["gpu"].remote_down is None
    a.trackers["gpu"].breaker.opened_at -= 1.0  # it opened again (half-open probe failed)
    await a.tick()
    await b.tick()
    assert b.trackers["gpu"].remote_down is not None


async def test_a_failed_check_is_shared_and_a_passing_check_anywhere_clears_it(
        store: MemoryStore) -> None:
    a, b = replica(store, "A"), replica(store, "B")
    probed(a, "gpu", ok=False)
    await a.after_probes()
    await b.tick()
    mark = b.trackers["gpu"].remote_down
    assert mark is not None and mark[1:] == ("A", PROBE_FAILED)
    assert 9 < mark[0] - time.time() <= 10, "two probe intervals"
    probed(b, "gpu", ok=True)
    await b.after_probes()
    assert b.trackers["gpu"].remote_down is None, "cleared at once on the replica that saw it pass"
    assert await store.backends_down(NAMES) == {}


async def test_a_passing_check_leaves_another_replicas_breaker_mark(store: MemoryStore) -> None:
    a, b = replica(store, "A"), replica(store, "B")
    a.trackers["gpu"].observe_failure(time.monotonic(), "backend_error")
    await a.tick()
    await b.tick()
    probed(b, "gpu", ok=True)  # /models answers while completions fail
    await b.after_probes()
    await b.tick()
    assert b.trackers["gpu"].remote_down is not None
    a.trackers["gpu"].breaker.success()  # A's half-open probe went through
    await a.tick()
    await b.tick()
    assert b.trackers["gpu"].remote_down is None, "the breaker closed: its mark is cleared"


async def test_a_replica_clears_its_own_mark_when_its_check_passes(store: MemoryStore) -> None:
    a, b = replica(store, "A"), replica(store, "B")
    a.trackers["gpu"].observe_failure(time.monotonic(), "backend_unavailable")
    probed(a, "gpu", ok=False)
    await a.after_probes()
    await b.tick()
    assert b.trackers["gpu"].remote_down is not None
    # open_s (30 s) has gone by: the breaker is half open, no longer a reason to keep the mark
    a.trackers["gpu"].breaker.opened_at -= 30.0
    assert a.trackers["gpu"].breaker.peek(time.monotonic()) == "half_open"
    probed(a, "gpu", ok=True)
    await a.after_probes()
    await b.tick()
    assert b.trackers["gpu"].remote_down is None


async def test_an_unreachable_store_never_raises_and_marks_read_stay_until_they_expire(
        store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    a, b = replica(store, "A"), replica(store, "B")
    probed(a, "gpu", ok=False)
    await a.after_probes()
    await b.tick()
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "switchyard-test-dead:")
    b.store = dead
    try:
        with caplog.at_level(logging.WARNING, "switchyard.health"):
            for _ in range(3):
                await b.tick()
                probed(b, "cpu", ok=False)
                await b.after_probes()
        assert b.trackers["gpu"].remote_down is not None, "what was read stays until it expires"
        warnings = [r for r in caplog.records if "not shared" in r.getMessage()]
        assert len(warnings) == 1, "logged once, not on every tick"
    finally:
        await dead.close()


async def test_a_drain_reaches_every_replica_and_no_health_check_clears_it(
        store: MemoryStore) -> None:
    a, b = replica(store, "a"), replica(store, "b")
    await store.set_backend_drained("gpu", True, "ops", "maintenance")
    a.apply_drain("gpu", ("ops", "maintenance", time.time()))
    assert a.trackers["gpu"].drained is not None and b.trackers["gpu"].drained is None
    await b.tick()
    assert b.trackers["gpu"].drained is not None
    assert b.trackers["gpu"].drained[:2] == ("ops", "maintenance")
    assert b.trackers["cpu"].drained is None
    probed(b, "gpu", ok=True)
    await b.after_probes()
    await b.tick()
    assert b.trackers["gpu"].drained is not None, "a passing health check keeps the drain"
    await store.set_backend_drained("gpu", False, "ops", "")
    await b.tick()
    assert b.trackers["gpu"].drained is None
