"""Which backend the next attempt goes to: retries with backoff, then the plan's fallbacks.

A retryable failure (``RetrySettings.retry_on``) is tried again on the same backend after
an exponential backoff with full jitter, up to ``retries`` times, while its breaker lets
requests through; then the next backend in the plan. A breaker is asked right before each
attempt (in half-open state that takes the single probe slot), never for backends the
request does not reach. ``max_attempts`` bounds the calls of one request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence

from gateway.config import RetrySettings
from gateway.errors import SwitchyardError
from gateway.telemetry import Tracker


def backoff_s(cfg: RetrySettings, retry: int) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**retry)]."""
    cap = min(cfg.max_backoff_s, cfg.backoff_s * (2 ** retry))
    return random.uniform(0.0, cap) if cap > 0 else 0.0


class Attempts:
    def __init__(
        self, order: Sequence[str], trackers: Mapping[str, Tracker], cfg: RetrySettings
    ) -> None:
        self.order = list(order)
        self.trackers = trackers
        self.cfg = cfg
        self.count = 0  # calls made
        self.skipped: list[str] = []  # left out because their breaker is open
        self._i = -1
        self._tries_here = 0

    async def next(self, failed: SwitchyardError | None = None) -> str | None:
        """The backend for the next attempt, after ``failed`` (None before the first)."""
        if self.count >= self.cfg.max_attempts:
            return None
        if failed is not None and 0 <= self._i < len(self.order):
            name = self.order[self._i]
            if (self._tries_here <= self.cfg.retries and failed.code in self.cfg.retry_on
                    and self.trackers[name].breaker.allow(time.monotonic())):
                await asyncio.sleep(backoff_s(self.cfg, self._tries_here - 1))
                self._tries_here += 1
                self.count += 1
                return name
        while self._i + 1 < len(self.order):
            self._i += 1
            name = self.order[self._i]
            if self.trackers[name].breaker.allow(time.monotonic()):
                self._tries_here = 1
                self.count += 1
                return name
            self.skipped.append(name)
        return None
