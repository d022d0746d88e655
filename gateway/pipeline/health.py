"""Backend health shared by the replicas of one state store.

Each replica probes its backends and keeps its own circuit breakers (``gateway.telemetry``).
What it finds down it publishes as a mark in the state store that expires by itself, and
every ``health.share_interval_s`` it reads the marks back onto its trackers: the router
leaves a backend that another replica marked out of plans, like a local failure, until the
mark expires or is cleared.

- A breaker that opened here: marked until it would half-open (``open_s``), once per opening.
- A health check that failed here (``last_probe_ok`` False): marked for two probe intervals,
  renewed after every failed round.
- A health check that passes here clears the mark if this replica set it, or if a failed
  health check set it (a passing check contradicts it). Another replica's breaker mark
  stays until it expires: requests can fail while health checks pass.
- A breaker here that closed again clears the mark it set.

Drains are an operator's (``POST /admin/backends/{name}/drain``): kept in the store apart
from the marks, they never expire and no health check clears them. ``tick`` reads them onto
the trackers too; the replica that took the drain sets its own tracker at once
(``apply_drain``).

A store that cannot be reached is logged (once, until it answers again) and skipped: the
marks already read expire on their own time. Nothing here ever raises into its loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from gateway.state import StateStore, StateUnavailable
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.health")

PROBE_FAILED = "health check failed"
BREAKER_OPEN = "circuit breaker open"

T = TypeVar("T")
Mark = tuple[float, str, str]  # (until, replica, reason)


def backend_health(t: Tracker, now: float) -> dict[str, Any]:
    """One backend's health as this replica sees it (``/readyz`` and ``GET /admin/backends``
    both show this): breaker, in-flight calls, last check, marks from other replicas, drain.
    ``now`` is ``time.monotonic()``."""
    elsewhere = t.remote_down if t.remote_down_until > now else None
    return {
        "breaker": t.breaker.peek(now), "inflight": t.inflight,
        "probe_ok": t.last_probe_ok, "last_error": t.last_error,
        "down_elsewhere": elsewhere and {"until": elsewhere[0], "replica": elsewhere[1],
                                         "reason": elsewhere[2]},
        "drained": t.drained and {"by": t.drained[0], "reason": t.drained[1],
                                  "since": t.drained[2]},
    }


def can_take_traffic(health: Mapping[str, Any]) -> bool:
    """Not drained, breaker not open, health checks not failing."""
    return health["breaker"] != "open" and health["probe_ok"] is not False \
        and not health["drained"]


def replica_id() -> str:
    """Host, process and a random part: unique per gateway, readable in /readyz."""
    host = socket.gethostname().replace("|", "_") or "host"
    return f"{host}/{os.getpid()}/{os.urandom(3).hex()}"


class SharedHealth:
    def __init__(self, store: StateStore, trackers: Mapping[str, Tracker],
                 probe_interval_s: float, replica: str | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.trackers = trackers
        self.probe_interval_s = probe_interval_s
        self.replica = replica or replica_id()
        self._clock, self._mono = clock, monotonic
        self._names = list(trackers)
        self._own: dict[str, tuple[float, str]] = {}  # backend -> (until, reason) we marked
        self._opened: dict[str, float] = {}  # backend -> breaker.opened_at published
        self._seen: dict[str, Mark] = {}  # the marks read last, ours included
        self._unreachable = False
        self._drain_gen = 0  # bumped by apply_drain: a read begun before it is stale

    async def _call(self, op: Callable[[], Awaitable[T]]) -> tuple[T | None, bool]:
        """Run one store operation; a missing method (a plugin store written before it
        existed), an outage or a bug is logged once and skipped, never raised."""
        try:
            out = await op()
        except StateUnavailable as e:
            if not self._unreachable:
                log.warning("backend health is not shared while the state store is away: %s", e)
            self._unreachable = True
            return None, False
        except Exception:  # a plugin store's bug must not stop the health checks
            if not self._unreachable:
                log.exception("the state store failed to share backend health")
            self._unreachable = True
            return None, False
        if self._unreachable:
            log.info("backend health is shared again")
            self._unreachable = False
        return out, True

    async def _mark(self, name: str, until: float, reason: str) -> None:
        _, ok = await self._call(
            lambda: self.store.mark_backend_down(name, self.replica, until, reason))
        if ok:
            self._own[name] = (until, reason)

    async def _clear(self, name: str) -> None:
        _, ok = await self._call(lambda: self.store.clear_backend_down(name))
        if ok:
            self._own.pop(name, None)
            self._seen.pop(name, None)
            self.trackers[name].set_remote_down(None, 0.0)

    async def after_probes(self) -> None:
        """Right after a round of health checks: publish the failures, clear the marks a
        passing check contradicts."""
        now, mono = self._clock(), self._mono()
        for name, t in self.trackers.items():
            if t.last_probe_ok is False:
                await self._mark(name, now + 2 * self.probe_interval_s, PROBE_FAILED)
            elif (t.last_probe_ok and t.probe_failures == 0
                  and t.breaker.peek(mono) != "open" and self._contradicted(name, now)):
                await self._clear(name)

    def _contradicted(self, name: str, now: float) -> bool:
        own = self._own.get(name)
        if own is not None and own[0] > now:
            return True
        seen = self._seen.get(name)
        return seen is not None and seen[0] > now and (
            seen[1] == self.replica or seen[2] == PROBE_FAILED)

    async def tick(self) -> None:
        """Publish the breakers that opened since the last tick, clear the breaker marks of
        breakers that closed again, then read every mark onto the trackers."""
        now, mono = self._clock(), self._mono()
        for name, t in self.trackers.items():
            b = t.breaker
            if b.state == "open" and self._opened.get(name) != b.opened_at:
                self._opened[name] = b.opened_at
                left = b.cfg.open_s - (mono - b.opened_at)
                if left > 0:
                    await self._mark(name, now + left, BREAKER_OPEN)
            elif b.state == "closed" and t.last_probe_ok is not False:
                own = self._own.get(name)
                if own is not None and own[1] == BREAKER_OPEN and own[0] > now:
                    await self._clear(name)
        gen = self._drain_gen
        marks, ok = await self._call(lambda: self.store.backends_down(self._names))
        if not ok or marks is None:
            return
        drained, ok = await self._call(lambda: self.store.backends_drained(self._names))
        if ok and drained is not None and gen == self._drain_gen:
            for name, t in self.trackers.items():
                t.drained = drained.get(name)
        now, mono = self._clock(), self._mono()
        self._seen = dict(marks)
        for name, t in self.trackers.items():
            m = marks.get(name)
            if m is None or m[1] == self.replica:
                t.set_remote_down(None, 0.0)
            else:
                t.set_remote_down(m, mono + (m[0] - now))

    def apply_drain(self, name: str, drained: tuple[str, str, float] | None) -> None:
        """A drain (or undrain, with None) this replica just wrote to the store: on its
        tracker at once, and not undone by a ``tick`` whose read began before the write."""
        self._drain_gen += 1
        self.trackers[name].drained = drained
