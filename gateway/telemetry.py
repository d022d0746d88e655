"""Live statistics per backend and its circuit breaker.

Moving estimates (exponentially weighted) of time to first token, split by prompt length,
and of decode speed; in-flight counts; a passive error rate; and a breaker that opens after
``failure_threshold`` consecutive failures, lets one probe through after ``open_s`` (half
open), and closes again on success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from gateway.interfaces import BackendLoad, BackendStats

BreakerState = Literal["closed", "open", "half_open"]

# prompt-length buckets for TTFT estimates: <=256, <=1024, <=4096, more
_BUCKETS = (256, 1024, 4096)


def _bucket(prompt_tokens: int) -> int:
    for i, edge in enumerate(_BUCKETS):
        if prompt_tokens <= edge:
            return i
    return len(_BUCKETS)


@dataclass
class BreakerConfig:
    failure_threshold: int = 3
    open_s: float = 5.0


@dataclass
class Breaker:
    cfg: BreakerConfig = field(default_factory=BreakerConfig)
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def allow(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.cfg.open_s:
            self.state = "half_open"
            self.probing = False
        if self.state == "half_open" and not self.probing:
            self.probing = True  # exactly one request probes
            return True
        return False

    def peek(self, now: float) -> BreakerState:
        if self.state == "open" and now - self.opened_at >= self.cfg.open_s:
            return "half_open"
        return self.state

    def success(self) -> None:
        self.state, self.failures, self.probing = "closed", 0, False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.cfg.failure_threshold:
            self.state, self.opened_at, self.probing = "open", now, False


class Tracker:
    """One backend's live picture. All methods are O(1) and do no I/O."""

    def __init__(self, alpha: float = 0.3, breaker: BreakerConfig | None = None) -> None:
        self.alpha = alpha
        self.inflight = 0
        self.ttft: list[float | None] = [None] * (len(_BUCKETS) + 1)
        self.ttft_dev: list[float] = [0.0] * (len(_BUCKETS) + 1)
        self.decode_tps: float | None = None
        self.avg_completion: float | None = None
        self.error_rate = 0.0
        self.breaker = Breaker(breaker or BreakerConfig())
        self.last_probe_ok: bool | None = None
        self.last_error: str | None = None

    def started(self) -> None:
        self.inflight += 1

    def finished(self) -> None:
        self.inflight = max(0, self.inflight - 1)

    def observe_success(
        self, prompt_tokens: int, ttft_s: float | None, total_s: float, completion_tokens: int
    ) -> None:
        a = self.alpha
        if ttft_s is not None:
            b = _bucket(prompt_tokens)
            old = self.ttft[b]
            if old is None:
                self.ttft[b] = ttft_s
            else:
                self.ttft_dev[b] = (1 - a) * self.ttft_dev[b] + a * abs(ttft_s - old)
                self.ttft[b] = (1 - a) * old + a * ttft_s
            decode_s = total_s - ttft_s
            if completion_tokens > 1 and decode_s > 0:
                tps = (completion_tokens - 1) / decode_s
                self.decode_tps = tps if self.decode_tps is None else (1 - a) * self.decode_tps + a * tps
        if completion_tokens:
            c = float(completion_tokens)
            self.avg_completion = c if self.avg_completion is None else (1 - a) * self.avg_completion + a * c
        self.error_rate *= 1 - a
        self.breaker.success()

    def observe_failure(self, now: float, error: str) -> None:
        self.error_rate = (1 - self.alpha) * self.error_rate + self.alpha
        self.last_error = error
        self.breaker.failure(now)

    def ttft_estimate(self, prompt_tokens: int) -> tuple[float | None, float | None]:
        """(mean, p95-ish) for this prompt length, borrowing a neighbour bucket if empty."""
        b = _bucket(prompt_tokens)
        order = [b] + [i for i in sorted(range(len(self.ttft)), key=lambda i: abs(i - b)) if i != b]
        for i in order:
            v = self.ttft[i]
            if v is not None:
                return v, v + 2.0 * self.ttft_dev[i]
        return None, None

    def snapshot(self, prompt_tokens: int, load: BackendLoad, now: float | None = None) -> BackendStats:
        mean, p95 = self.ttft_estimate(prompt_tokens)
        return BackendStats(
            inflight=self.inflight,
            ttft_s=mean,
            ttft_p95_s=p95,
            decode_tps=self.decode_tps,
            avg_completion_tokens=self.avg_completion,
            error_rate=self.error_rate,
            breaker=self.breaker.peek(now if now is not None else time.monotonic()),
            load=load,
        )
