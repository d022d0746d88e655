"""The account stage: one ``UsageRecord`` per backend call (and one per refused request),
filled in from what the call used, then sent to the metrics, the ledger and the
``switchyard_request_recorded`` observers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.accounting import UsageRecord, co2_grams, energy_joules
from gateway.errors import SwitchyardError
from gateway.hookspecs import LedgerStore
from gateway.interfaces import Backend, Endpoint, Meter, Usage
from gateway.metrics import Metrics
from gateway.pipeline.context import RequestContext
from gateway.registry import Registry
from gateway.savings import Savings


class Accounts:
    def __init__(self, metrics: Metrics, registry: Registry, ledger: LedgerStore | None,
                 savings: Savings | None = None) -> None:
        self.metrics = metrics
        self.savings = savings  # fills each record's savings before it is written
        self.registry = registry
        self.ledger = ledger
        self._observe = registry.has_observers("switchyard_request_recorded")
        self.tasks: set[asyncio.Future[Any]] = set()  # observers still running

    @staticmethod
    def price(rec: UsageRecord, backend: Backend, usage: Usage, busy_s: float) -> float:
        """What the call costs, set on ``rec`` (first: the settlement needs it and is sent
        before the rest of the accounting)."""
        rec.cost_usd = backend.cost_usd(usage, busy_s)
        return rec.cost_usd

    def success(
        self, rec: UsageRecord, backend: Backend, usage: Usage, meter: Meter,
        ctx: RequestContext, *, busy_s: float, ttft_s: float | None, emit: bool = True,
    ) -> None:
        """Fill ``rec`` from a call that answered (a stream that broke off included); its
        cost is ``price``'s."""
        now = time.perf_counter()
        rec.backend, rec.model = backend.name, meter.upstream_model or backend.model
        rec.prompt_tokens, rec.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        rec.cached_tokens = usage.cached_tokens
        prof = backend.config.energy
        rec.energy_j, rec.energy_source = energy_joules(
            prof, busy_s=busy_s, tokens=usage.prompt_tokens + usage.completion_tokens,
            measured_j=meter.energy_j,
        )
        rec.co2_g = co2_grams(rec.energy_j, prof.grid_g_per_kwh)
        rec.bytes_sent, rec.bytes_received = meter.bytes_sent, meter.bytes_received
        rec.ttft_ms = ttft_s * 1000.0 if ttft_s is not None else None
        rec.latency_ms = (now - ctx.received_at) * 1000.0
        self.metrics.overhead.observe(max(0.0, now - ctx.received_at - busy_s))
        if emit:
            self.emit(rec)

    def error(self, rec: UsageRecord, backend: Backend | None, err: SwitchyardError,
              ctx: RequestContext) -> None:
        """Record a request that ends in ``err`` (no usage is billed)."""
        rec.status, rec.error_code = err.status, err.code
        if backend is not None:
            rec.backend, rec.model = backend.name, backend.model
        rec.prompt_tokens = 0
        rec.latency_ms = (time.perf_counter() - ctx.received_at) * 1000.0
        self.emit(rec)

    def answered(self, rec: UsageRecord, ctx: RequestContext) -> None:
        """Record a request answered without a backend call (a cache hit)."""
        rec.latency_ms = (time.perf_counter() - ctx.received_at) * 1000.0
        self.emit(rec)

    def reject(self, endpoint: Endpoint, requested: Any, ctx: RequestContext,
               err: SwitchyardError) -> None:
        """A request refused before any backend was called: one record, no cost."""
        rec = UsageRecord(
            request_id=ctx.request_id, endpoint=endpoint,
            requested=requested if isinstance(requested, str) else "",
            team=ctx.team, key_id=ctx.key_id, status=err.status, error_code=err.code,
        )
        rec.latency_ms = (time.perf_counter() - ctx.received_at) * 1000.0
        self.emit(rec)

    def emit(self, rec: UsageRecord) -> None:
        if self.savings is not None:
            self.savings.fill(rec)
        self.metrics.observe(rec)
        if self.ledger is not None:
            self.ledger.write(rec)
        if self._observe:
            self.registry.notify("switchyard_request_recorded", self.tasks, record=rec)
