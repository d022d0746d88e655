"""Live statistics, the circuit breaker, and the retry/fallback order, on plain values
with an explicit clock."""

from __future__ import annotations

import time

import pytest

from gateway.config import BreakerSettings, RetrySettings, load_settings
from gateway.errors import BackendError, BackendTimeout, Overloaded
from gateway.interfaces import BackendLoad
from gateway.pipeline.retry import Attempts, backoff_s
from gateway.telemetry import Breaker, Tracker, make_trackers

# ---- breaker ---------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only():
    b = Breaker(BreakerSettings(failure_threshold=3, open_s=5.0))
    b.failure(0.0)
    b.failure(0.1)
    b.success()  # a success in between resets the count
    b.failure(0.2)
    b.failure(0.3)
    assert b.allow(0.3) and b.peek(0.3) == "closed"
    b.failure(0.4)
    assert b.peek(0.4) == "open" and not b.allow(1.0)


def test_half_open_lets_exactly_one_probe_through_then_closes_on_success():
    b = Breaker(BreakerSettings(failure_threshold=1, open_s=5.0))
    b.failure(0.0)
    assert not b.allow(4.9)
    assert b.peek(5.0) == "half_open"
    assert b.allow(5.0)  # the probe
    assert not b.allow(5.1)  # everyone else waits for it
    b.success()
    assert b.peek(5.2) == "closed" and b.allow(5.2)


def test_a_failed_probe_opens_the_circuit_again():
    b = Breaker(BreakerSettings(failure_threshold=3, open_s=2.0))
    for t in (0.0, 0.1, 0.2):
        b.failure(t)
    assert b.allow(2.5)
    b.failure(2.6)
    assert b.peek(2.7) == "open" and not b.allow(4.5)
    assert b.allow(4.7)


def test_a_probe_that_never_reports_back_frees_the_slot():
    b = Breaker(BreakerSettings(failure_threshold=1, open_s=1.0))
    b.failure(0.0)
    assert b.allow(1.0)
    assert not b.allow(1.5)
    assert b.allow(2.0)  # the first probe's client went away; another may try


def test_breaker_thresholds_come_from_config_per_backend_or_global():
    s = load_settings(None, embedded_default=False, health={"breaker": {"failure_threshold": 7}})
    assert s.health.breaker.failure_threshold == 7

    class B:
        def __init__(self, breaker: BreakerSettings | None) -> None:
            self.config = type("C", (), {"breaker": breaker})()

    t = make_trackers(s.health, {"a": B(None), "b": B(BreakerSettings(failure_threshold=1, open_s=9))})
    assert t["a"].breaker.cfg == BreakerSettings(failure_threshold=7, open_s=5.0)
    assert t["b"].breaker.cfg == BreakerSettings(failure_threshold=1, open_s=9.0)


# ---- tracker ---------------------------------------------------------------------------


def test_ttft_estimates_move_with_observations_and_are_split_by_prompt_length():
    t = Tracker(alpha=0.5)
    t.observe_success(100, 0.2, 1.2, 51, now=10.0)
    assert t.decode_tps == pytest.approx(50.0)
    t.observe_success(100, 1.0, 2.0, 51, now=11.0)  # the backend slows down
    assert t.ttft_estimate(100)[0] == pytest.approx(0.6)
    t.observe_success(3000, 4.0, 5.0, 51, now=12.0)  # long prompts have their own estimate
    assert t.ttft_estimate(100)[0] == pytest.approx(0.6)
    assert t.ttft_estimate(3000)[0] == pytest.approx(4.0)
    assert t.ttft_estimate(600)[0] == pytest.approx(0.6)  # borrows the nearest bucket
    # the spread: |1.0 - 0.2| moved half way from 0, so p95 = 0.6 + 2 * 0.4
    assert t.ttft_estimate(100) == pytest.approx((0.6, 1.4))


def test_a_non_streamed_call_splits_its_time_by_the_known_decode_speed():
    t = Tracker(alpha=1.0)
    t.observe_success(10, 0.1, 1.1, 101, now=0.0)  # streamed: 100 tokens/s
    t.observe_success(10, None, 2.3, 201, now=1.0)  # 2 s of decoding, so 0.3 s to first token
    assert t.ttft_estimate(10)[0] == pytest.approx(0.3)
    assert t.decode_tps == pytest.approx(100.0)


def test_snapshot_reports_age_in_flight_and_breaker():
    t = Tracker()
    assert t.snapshot(10, BackendLoad(), now=0.0).age_s is None
    t.observe_success(10, 0.1, 0.2, 5, now=100.0)
    a = t.started(now=101.0)
    b = t.started(now=102.0)
    s = t.snapshot(10, BackendLoad(queue_depth=2), now=104.0)
    assert (s.inflight, s.age_s, s.oldest_inflight_s, s.load.queue_depth) == (2, 4.0, 3.0, 2)
    t.finished(a)
    assert t.snapshot(10, BackendLoad(), now=104.0).oldest_inflight_s == 2.0
    t.finished(b)
    t.finished(b)  # finishing twice is harmless
    assert t.inflight == 0
    for _ in range(3):
        t.observe_failure(105.0, "backend_error")
    assert t.snapshot(10, BackendLoad(), now=105.5).breaker == "open"
    assert t.error_rate == pytest.approx(1 - 0.7**3)  # three failures at alpha 0.3


# ---- retries, then fallbacks -----------------------------------------------------------

FAST = RetrySettings(retries=1, backoff_s=0.0, max_attempts=10)


async def test_a_retryable_failure_is_retried_once_then_the_next_backend():
    trackers = {n: Tracker() for n in "abc"}
    at = Attempts(["a", "b", "c"], trackers, FAST)
    err = BackendError("boom")
    assert [await at.next(), await at.next(err), await at.next(err), await at.next(err)] == ["a", "a", "b", "b"]
    assert await at.next(err) == "c"


async def test_overload_and_timeouts_go_straight_to_the_next_backend():
    at = Attempts(["a", "b", "c"], {n: Tracker() for n in "abc"}, FAST)
    assert await at.next() == "a"
    assert await at.next(Overloaded("queue full")) == "b"
    assert await at.next(BackendTimeout("slow")) == "c"
    assert await at.next(BackendTimeout("slow")) is None


async def test_open_circuits_are_skipped_and_max_attempts_bounds_the_calls():
    trackers = {n: Tracker(breaker=BreakerSettings(failure_threshold=1, open_s=60)) for n in "abc"}
    trackers["a"].observe_failure(time.monotonic(), "backend_error")  # open for a minute
    at = Attempts(["a", "b", "c"], trackers, RetrySettings(retries=3, backoff_s=0.0, max_attempts=2))
    assert await at.next() == "b" and at.skipped == ["a"]
    trackers["b"].observe_failure(time.monotonic(), "backend_error")  # b's breaker opens: no retry there
    assert await at.next(BackendError("boom")) == "c"
    assert await at.next(BackendError("boom")) is None  # two calls made: the limit


def test_backoff_is_exponential_with_jitter_and_capped():
    cfg = RetrySettings(backoff_s=0.1, max_backoff_s=0.3)
    for retry, cap in ((0, 0.1), (1, 0.2), (5, 0.3)):
        samples = [backoff_s(cfg, retry) for _ in range(200)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > cap / 2
