"""The request pipeline: the stages of ``gateway.pipeline.stages`` (resolve, compress,
features, admit, cache lookup, plan), then the attempts (``gateway.pipeline.attempt``:
reserve -> call -> account -> settle, with fallbacks), then the cache store.

Route handlers call ``Gateway.complete``, ``Gateway.stream`` or ``Gateway.reject`` and
nothing else; the two paths differ only in how the answer is delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gateway.accounting import UsageRecord
from gateway.config import RetrySettings
from gateway.energy import FairShare
from gateway.errors import SwitchyardError
from gateway.hookspecs import CacheStore, LedgerStore, Stage
from gateway.interfaces import Backend, Endpoint, Usage
from gateway.metrics import Metrics
from gateway.pipeline import cascade, stages
from gateway.pipeline.account import Accounts
from gateway.pipeline.admission import Admission, OpenAdmission
from gateway.pipeline.attempt import Executor, call
from gateway.pipeline.context import RequestContext
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.relay import Relay, aclose
from gateway.pipeline.replay import Assembler, replay
from gateway.pipeline.routing import Router
from gateway.protocol import WireRequest, validate
from gateway.registry import Registry
from gateway.savings import Savings, baselines_of
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.pipeline")

class Gateway:
    def __init__(
        self,
        *,
        backends: Mapping[str, Backend],
        router: Router,
        trackers: Mapping[str, Tracker],
        metrics: Metrics,
        registry: Registry,
        ledger: LedgerStore | None = None,
        admission: Admission | None = None,
        retry: RetrySettings | None = None,
        energy_meters: Mapping[str, FairShare] | None = None,
        plugin_text_chars: int = 8192,
        stages_extra: Mapping[str, Stage] | None = None,
        cache_store: CacheStore | None = None,
    ) -> None:
        self.backends = backends
        self.router = router
        self.trackers = trackers
        self.metrics = metrics
        self.registry = registry
        self.ledger = ledger
        self.admission: Admission = admission or OpenAdmission()
        self.accounts = Accounts(metrics, registry, ledger,
                                 Savings(backends, *baselines_of(router.targets)))
        self.executor = Executor(
            backends=backends, trackers=trackers, retry=retry or RetrySettings(),
            admission=self.admission, energy_meters=dict(energy_meters or {}),
            accounts=self.accounts, metrics=metrics)
        self.stages = stages.build(router, backends, self.admission, plugin_text_chars,
                                   stages_extra)
        self.cache_store = cache_store

    async def _prepared(self, endpoint: Endpoint, body: dict[str, Any], ctx: RequestContext,
                        req: WireRequest | None) -> Exchange:
        """The exchange after the stages before the first backend call; a refusal on the
        way (unknown model, rate limited, nothing fits...) is recorded, then raised."""
        try:
            x = Exchange(endpoint, body, req or validate(endpoint, body), ctx)
            for _name, stage in self.stages:
                pending = stage(x)
                if pending is not None:
                    await pending
                if x.answer is not None:  # a cache hit
                    break
        except SwitchyardError as e:
            self.accounts.reject(endpoint, body.get("model"), ctx, e)
            raise
        return x

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], ctx: RequestContext,
        req: WireRequest | None = None,
    ) -> tuple[dict[str, Any], UsageRecord]:
        """Serve ``body``; ``req`` is its validated form (validated here when not given)."""
        x = await self._prepared(endpoint, body, ctx, req)
        if x.answer is not None:  # a cache hit: no backend call, one record
            await self._answered(x)
            return x.answer, x.record
        if x.plan.cascade:
            answer = await cascade.Run(self.executor, x).complete()
        else:
            a, result = await self.executor.run(x, call)
            await a.succeeded(result.usage, ttft_s=None)
            answer = result.body
        if self.cache_store is not None:
            await self._store(x, answer)
        return answer, x.record

    async def _answered(self, x: Exchange) -> None:
        """Record a cache hit; a hit that costs something (``hit_cost_fraction``) is
        charged to the team's budget."""
        if x.record.cost_usd > 0:
            await self.admission.charge(x.ctx, x.record.cost_usd)
        self.accounts.answered(x.record, x.ctx)

    async def _store(self, x: Exchange, answer: dict[str, Any]) -> None:
        assert self.cache_store is not None
        try:
            await self.cache_store(x, answer)
        except Exception:  # the answer is paid for and recorded: the client gets it
            log.exception("cache_store failed for request %s", x.ctx.request_id)

    async def _storing(self, x: Exchange, relay: Relay) -> AsyncIterator[bytes]:
        """Relay the stream while assembling it; a stream that ended normally is stored."""
        asm = Assembler()
        relay.tap = asm.add
        events = relay.stream()
        try:
            async for event in events:
                yield event
        finally:
            await aclose(events)
        rec = x.record
        body = asm.body(x.endpoint, Usage(rec.prompt_tokens, rec.completion_tokens,
                                          rec.cached_tokens)) if rec.status == 200 else None
        if body is not None:
            x.pieces = asm.pieces
            await self._store(x, body)

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], ctx: RequestContext,
        req: WireRequest | None = None,
    ) -> tuple[AsyncIterator[bytes], UsageRecord]:
        """Open a stream: everything that can fail cheaply fails here, before the first
        byte. A cascade holds each judged stage's whole answer and replays the accepted one
        (``gateway.pipeline.cascade``); its unjudged stage is streamed live."""
        x = await self._prepared(endpoint, body, ctx, req)
        held, relay = x.answer, None
        if held is not None:  # a cache hit, replayed as the stream a backend sends
            await self._answered(x)
        elif x.plan.cascade:
            held, relay = await cascade.Run(self.executor, x).stream()
            if held is not None and self.cache_store is not None:
                await self._store(x, held)
        else:
            a, relay = await self.executor.run(x, Relay.open)
            x.record.backend, x.record.model = a.backend.name, a.backend.model
        if held is not None:
            opts = getattr(x.req, "stream_options", None)
            want_usage = bool(opts is not None and opts.include_usage)
            return replay(held, endpoint, x.pieces, want_usage), x.record
        assert relay is not None
        if self.cache_store is None:
            return relay.stream(), x.record
        return self._storing(x, relay), x.record

    def reject(self, endpoint: Endpoint, requested: Any, ctx: RequestContext,
               err: SwitchyardError) -> None:
        """Account a request refused before any backend was called: one record, no cost."""
        self.accounts.reject(endpoint, requested, ctx, err)

    async def close(self) -> None:
        if self.accounts.tasks:
            await asyncio.gather(*self.accounts.tasks, return_exceptions=True)
