"""Live statistics per backend and its circuit breaker.

Moving estimates (exponentially weighted) of time to first token, split by prompt length,
and of decode speed; in-flight requests with their start times; a passive error rate; and
a breaker that opens after ``failure_threshold`` consecutive failures, lets one probe
through after ``open_s`` (half open), and closes again on the probe's success.

Everything here is O(1) per call and does no I/O: the router reads a snapshot per
candidate on every request.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config import BreakerSettings
from gateway.interfaces import BackendLoad, BackendStats

BreakerState = Literal["closed", "open", "half_open"]

# prompt-length buckets for TTFT estimates: <=256, <=1024, <=4096, more
_BUCKETS = (256, 1024, 4096)


# for each bucket, the buckets to borrow from when it has no estimate yet, nearest first
_NEIGHBOURS = tuple(
    tuple(sorted(range(len(_BUCKETS) + 1), key=lambda i, b=b: abs(i - b)))  # type: ignore[misc]
    for b in range(len(_BUCKETS) + 1)
)


def _bucket(prompt_tokens: int) -> int:
    for i, edge in enumerate(_BUCKETS):
        if prompt_tokens <= edge:
            return i
    return len(_BUCKETS)


@dataclass
class Breaker:
    """closed -> (``failure_threshold`` consecutive failures) -> open -> (``open_s``) ->
    half_open: one request probes; success closes, failure opens again. A probe that never
    reports back (its client went away) frees the slot after another ``open_s``."""

    cfg: BreakerSettings = field(default_factory=BreakerSettings)
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_started: float | None = None

    def allow(self, now: float) -> bool:
        """May a request go to this backend now? In half-open state this takes the one
        probe slot, so call it only right before the call."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now - self.opened_at < self.cfg.open_s:
                return False
            self.state = "half_open"
            self.probe_started = None
        if self.probe_started is None or now - self.probe_started >= self.cfg.open_s:
            self.probe_started = now  # exactly one request probes
            return True
        return False

    def peek(self, now: float) -> BreakerState:
        if self.state == "open" and now - self.opened_at >= self.cfg.open_s:
            return "half_open"
        return self.state

    def success(self) -> None:
        self.state, self.failures, self.probe_started = "closed", 0, None

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.cfg.failure_threshold:
            self.state, self.opened_at, self.probe_started = "open", now, None


class Tracker:
    """One backend's live picture."""

    def __init__(self, alpha: float = 0.3, breaker: BreakerSettings | None = None) -> None:
        self.alpha = alpha
        n = len(_BUCKETS) + 1
        self.ttft: list[float | None] = [None] * n
        self.ttft_dev: list[float] = [0.0] * n
        self.decode_tps: float | None = None
        self.avg_completion: float | None = None
        self.updated_at: float | None = None  # monotonic time of the last observation
        self.error_rate = 0.0
        self.breaker = Breaker(breaker or BreakerSettings())
        self.last_probe_ok: bool | None = None
        self.probe_failures = 0
        self.last_error: str | None = None
        # another replica marked it down (gateway.pipeline.health): (until, replica, reason)
        # as read from the state store, and ``until`` on this process' monotonic clock
        self.remote_down: tuple[float, str, str] | None = None
        self.remote_down_until = 0.0
        # an operator drained it (the admin API, through the state store): (by, reason,
        # since wall-clock). Never expires; no health check clears it. Routing leaves it out.
        self.drained: tuple[str, str, float] | None = None
        self._inflight: dict[int, float] = {}  # insertion order is start order
        self._ids = itertools.count()

    def set_remote_down(self, mark: tuple[float, str, str] | None, until_monotonic: float) -> None:
        self.remote_down, self.remote_down_until = mark, until_monotonic

    # ---- in flight ----------------------------------------------------------------

    def started(self, now: float | None = None) -> int:
        """A call starts; returns the token to hand to ``finished``."""
        token = next(self._ids)
        self._inflight[token] = time.monotonic() if now is None else now
        return token

    def finished(self, token: int) -> None:
        self._inflight.pop(token, None)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_inflight_s(self, now: float) -> float:
        for started in self._inflight.values():
            return max(0.0, now - started)
        return 0.0

    # ---- observations -------------------------------------------------------------

    def observe_success(
        self, prompt_tokens: int, ttft_s: float | None, total_s: float, completion_tokens: int,
        now: float | None = None,
    ) -> None:
        """A call succeeded. ``ttft_s`` is None when it was not streamed: then the time to
        first token is what the decode speed does not explain of the total."""
        a = self.alpha
        streamed = ttft_s is not None
        if ttft_s is None:
            decode = (completion_tokens - 1) / self.decode_tps if self.decode_tps and completion_tokens > 1 else 0.0
            ttft_s = max(0.0, total_s - decode)
        b = _bucket(prompt_tokens)
        old = self.ttft[b]
        if old is None:
            self.ttft[b] = ttft_s
        else:
            self.ttft_dev[b] = (1 - a) * self.ttft_dev[b] + a * abs(ttft_s - old)
            self.ttft[b] = (1 - a) * old + a * ttft_s
        decode_s = total_s - ttft_s
        if streamed and completion_tokens > 1 and decode_s > 0:
            tps = (completion_tokens - 1) / decode_s
            self.decode_tps = tps if self.decode_tps is None else (1 - a) * self.decode_tps + a * tps
        if completion_tokens:
            c = float(completion_tokens)
            self.avg_completion = c if self.avg_completion is None else (1 - a) * self.avg_completion + a * c
        self.error_rate *= 1 - a
        self.updated_at = time.monotonic() if now is None else now
        self.breaker.success()

    def observe_failure(self, now: float, error: str) -> None:
        self.error_rate = (1 - self.alpha) * self.error_rate + self.alpha
        self.last_error = error
        self.breaker.failure(now)

    # ---- reading ------------------------------------------------------------------

    def ttft_estimate(self, prompt_tokens: int) -> tuple[float | None, float | None]:
        """(mean, p95-ish) for this prompt length, borrowing the nearest bucket if empty."""
        for i in _NEIGHBOURS[_bucket(prompt_tokens)]:
            v = self.ttft[i]
            if v is not None:
                return v, v + 2.0 * self.ttft_dev[i]
        return None, None

    def snapshot(self, prompt_tokens: int, load: BackendLoad, now: float | None = None) -> BackendStats:
        now = time.monotonic() if now is None else now
        mean, p95 = self.ttft_estimate(prompt_tokens)
        return BackendStats(
            inflight=len(self._inflight),
            ttft_s=mean,
            ttft_p95_s=p95,
            decode_tps=self.decode_tps,
            avg_completion_tokens=self.avg_completion,
            error_rate=self.error_rate,
            breaker=self.breaker.peek(now),
            load=load,
            age_s=None if self.updated_at is None else max(0.0, now - self.updated_at),
            oldest_inflight_s=self.oldest_inflight_s(now),
        )


def make_trackers(health: Any, backends: Mapping[str, Any] | Iterable[str]) -> dict[str, Tracker]:
    """One Tracker per backend; the breaker from the backend's own ``breaker`` section if
    it has one, else from ``health.breaker`` (gateway.config.HealthConfig)."""
    out: dict[str, Tracker] = {}
    items = backends.items() if isinstance(backends, Mapping) else ((n, None) for n in backends)
    for name, backend in items:
        cfg = getattr(getattr(backend, "config", None), "breaker", None) or health.breaker
        out[name] = Tracker(breaker=cfg)
    return out
