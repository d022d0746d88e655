"""The attempts stage: one executor for the streaming and the non-streaming path.

``Attempt`` is one call to one backend, from its reservation to its settlement: reserve
the worst case, count it in flight on the backend's tracker, meter it (bytes, usage,
energy), and settle exactly once, with the real cost after a success or nothing after a
failure or a cancellation. ``Executor.run`` tries the plan's backends (retries, fallbacks,
breakers: ``retry.Attempts``) until one opens; what "opens" means is the caller's: the whole
answer for a call, the first chunk for a stream. A cascade (``gateway.pipeline.cascade``)
runs one ``Executor.run`` per stage, each with its own record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from gateway.accounting import UsageRecord
from gateway.config import RetrySettings
from gateway.energy import FairShare
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    Overloaded,
    SwitchyardError,
)
from gateway.interfaces import (
    Backend,
    BackendCall,
    BackendResult,
    Meter,
    Plan,
    Reservation,
    Usage,
)
from gateway.metrics import Metrics
from gateway.pipeline.account import Accounts
from gateway.pipeline.admission import Admission, Started
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.retry import Attempts
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.pipeline")

R = TypeVar("R")


class Attempt:
    """One backend call of one request; ``Executor.run`` makes them."""

    __slots__ = (
        "_busy",
        "_e0",
        "_energy",
        "_token",
        "_tracker",
        "backend",
        "ex",
        "meter",
        "record",
        "reservation",
        "t0",
        "x",
    )

    def __init__(self, ex: Executor, x: Exchange, backend: Backend, record: UsageRecord) -> None:
        self.ex, self.x, self.backend, self.record = ex, x, backend, record
        self.meter = Meter()
        self.reservation: Reservation | None = None
        self._tracker = ex.trackers[backend.name]
        self._energy: FairShare | None = ex.energy_meters.get(backend.name)
        self._token = 0
        self._e0 = 0.0
        self.t0 = 0.0
        self._busy: float | None = None

    async def reserve(self) -> None:
        """Hold the call's worst-case cost; a refusal (budget spent, a request that can
        never fit) is recorded like every other."""
        try:
            self.reservation = await self.ex.admission.reserve(self.x.ctx, self.backend,
                                                               self.x.features)
        except SwitchyardError as e:
            self.ex.accounts.error(self.record, None, e, self.x.ctx)
            raise

    def start(self) -> None:
        self._token = self._tracker.started()
        if self._energy is not None:
            self._e0 = self._energy.start()
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        """The call is no longer in flight: its busy seconds (the same on every call)."""
        if self._busy is None:
            self._tracker.finished(self._token)
            if self._energy is not None:
                self.meter.energy_j = self._energy.stop(self._e0)
            self._busy = time.perf_counter() - self.t0
        return self._busy

    async def cancelled(self) -> None:
        self.stop()
        await self.ex.admission.settle(self.x.ctx, self.reservation, 0.0, 0)

    async def failed(self, e: BaseException) -> SwitchyardError:
        """Release the reservation; raise what the client must see, or return the error so
        the next attempt (a retry or a fallback) can follow."""
        self.stop()
        err = self.ex.failure(self.backend.name, e)
        await self.ex.admission.settle(self.x.ctx, self.reservation, 0.0, 0)
        if not err.retryable:
            self.ex.accounts.error(self.record, self.backend, err, self.x.ctx)
            raise err from None
        self.ex.metrics.fallbacks.labels(self.backend.name, err.code).inc()
        return err

    async def succeeded(self, usage: Usage, *, ttft_s: float | None, status: int = 200,
                        code: str | None = None, emit: bool = True) -> None:
        """Account and settle what the call used (a stream cut short included). The
        settlement is sent first, as soon as the cost is known, and awaited last: its round
        trip to the state store overlaps the accounting (the breaker's figures, the record,
        the metrics, the ledger)."""
        busy = self.stop()
        rec = self.record
        rec.status, rec.error_code = status, code
        settling = Started(self.ex.admission.settle(
            self.x.ctx, self.reservation, self.ex.accounts.price(rec, self.backend, usage, busy),
            usage.prompt_tokens + usage.completion_tokens))
        try:
            if status == 200:
                self._tracker.observe_success(usage.prompt_tokens, ttft_s, busy,
                                              usage.completion_tokens)
            self.ex.accounts.success(rec, self.backend, usage, self.meter, self.x.ctx,
                                     busy_s=busy, ttft_s=ttft_s, emit=emit)
        finally:
            await settling


Open = Callable[[Attempt], Awaitable[R]]


async def call(a: Attempt, body: Mapping[str, Any] | None = None) -> BackendResult:
    """The non-streaming delivery: the backend's whole answer, within its total timeout;
    ``body`` replaces the forwarded body (a cascade's judged call asks for more)."""
    b, x = a.backend, a.x
    request = BackendCall(x.endpoint, {**(x.forwarded if body is None else body),
                                       "model": b.model}, x.ctx.request_id)
    try:
        async with asyncio.timeout(b.config.timeouts.total_s):
            return await b.call(request, a.meter)
    except TimeoutError:
        raise BackendTimeout(f"Backend '{b.name}' did not answer in time.") from None


@dataclasses.dataclass(slots=True, kw_only=True)
class Executor:
    """Runs the attempts of a request (and of each stage of a cascade)."""

    backends: Mapping[str, Backend]
    trackers: Mapping[str, Tracker]
    retry: RetrySettings
    admission: Admission
    energy_meters: Mapping[str, FairShare]
    accounts: Accounts
    metrics: Metrics

    async def run(self, x: Exchange, open_: Open[R], record: UsageRecord | None = None,
                  order: Sequence[str] | None = None) -> tuple[Attempt, R]:
        """Try the plan's backends until ``open_`` succeeds on one: the attempt (still to
        be settled through ``Attempt.succeeded``) and what ``open_`` returned."""
        rec = x.record if record is None else record
        attempts = Attempts(x.plan.order if order is None else order, self.trackers, self.retry)
        last: SwitchyardError | None = None
        while (name := await attempts.next(last)) is not None:
            a = Attempt(self, x, self.backends[name], rec)
            rec.attempts += 1
            await a.reserve()
            a.start()
            try:
                result = await open_(a)
            except asyncio.CancelledError:
                await a.cancelled()
                raise
            except Exception as e:  # noqa: BLE001 - any backend failure may fall back
                last = await a.failed(e)
                continue
            rec.reason = _reason(x.plan, attempts, last)
            return a, result
        err = last or BackendUnavailable(
            f"Every backend for '{x.features.requested}' is unavailable "
            f"(circuit open: {', '.join(attempts.skipped)}).", retry_after=1)
        self.accounts.error(rec, None, err, x.ctx)
        raise err

    def failure(self, name: str, e: BaseException) -> SwitchyardError:
        """``e`` as the error a client sees; a fault counts against the backend's breaker."""
        if isinstance(e, SwitchyardError):
            err = e
        else:
            log.exception("backend %s failed", name)
            err = BackendError(f"Backend '{name}' failed: {type(e).__name__}.")
        if err.retryable and not isinstance(err, Overloaded):  # a full queue is not a fault
            self.trackers[name].observe_failure(time.monotonic(), err.code)
        return err


def _reason(plan: Plan, attempts: Attempts, last: SwitchyardError | None) -> str:
    if attempts.count == 1 and not attempts.skipped:
        return plan.reason
    if last is not None:
        return f"fallback after {last.code} ({attempts.count} attempts); {plan.reason}"
    return f"fallback, circuit open: {', '.join(attempts.skipped)}; {plan.reason}"
