"""The request pipeline: admit -> route -> reserve -> call (with fallbacks) -> account.

Route handlers call ``Gateway.complete`` or ``Gateway.stream`` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson

from gateway.accounting import UsageRecord, co2_grams, energy_joules
from gateway.config import RetrySettings
from gateway.energy import FairShare
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    Overloaded,
    SwitchyardError,
)
from gateway.interfaces import (
    Backend,
    BackendCall,
    Constraints,
    Endpoint,
    Meter,
    Plan,
    RequestFeatures,
    Usage,
)
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline.admission import Admission, OpenAdmission
from gateway.pipeline.context import RequestContext
from gateway.pipeline.retry import Attempts
from gateway.pipeline.routing import Router, vars_of
from gateway.protocol import WireRequest, has_content, max_prompt_tokens, prompt_text, validate
from gateway.registry import Registry
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.pipeline")

_DONE = b"data: [DONE]\n\n"


def _tighter(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


class Gateway:
    def __init__(
        self,
        *,
        backends: Mapping[str, Backend],
        router: Router,
        trackers: Mapping[str, Tracker],
        metrics: Metrics,
        registry: Registry,
        ledger: Ledger | None = None,
        admission: Admission | None = None,
        retry: RetrySettings | None = None,
        energy_meters: Mapping[str, FairShare] | None = None,
        plugin_text_chars: int = 8192,
    ) -> None:
        self.backends = backends
        self.router = router
        self.trackers = trackers
        self.metrics = metrics
        self.registry = registry
        self.ledger = ledger
        self.admission: Admission = admission or OpenAdmission()
        self.retry = retry or RetrySettings()
        self.energy_meters = dict(energy_meters or {})
        self.plugin_text_chars = plugin_text_chars
        self._observe = registry.has_observers("switchyard_request_recorded")
        self._tasks: set[asyncio.Future[Any]] = set()

    # ---- preparation ---------------------------------------------------------------

    def _features(self, endpoint: Endpoint, body: dict[str, Any], req: WireRequest,
                  ctx: RequestContext, backend: Backend) -> RequestFeatures:
        """What routing and admission know of the request: read from the validated ``req``
        (typed), the prompt from ``body`` (the same values, as the client sent them)."""
        opts = req.switchyard
        call = BackendCall(endpoint, body, ctx.request_id)
        return RequestFeatures(
            endpoint=endpoint,
            requested=req.model,
            prompt_tokens=backend.count_tokens(call),
            max_tokens=req.max_output,
            stream=req.streaming,
            latency_target=(opts.latency_target if opts else None) or "ttft",
            text=prompt_text(endpoint, body, self.plugin_text_chars),
            # only budgets hold on it: without them, it costs nothing
            prompt_tokens_max=(None if type(self.admission) is OpenAdmission
                               else max_prompt_tokens(endpoint, body)),
            choices=req.choices,
        )

    def _constraints(self, req: WireRequest, ctx: RequestContext) -> Constraints:
        opts = req.switchyard
        base = ctx.constraints
        if opts is None:
            return base
        # a request may tighten its team's limits, never loosen them
        max_cost = opts.max_cost_usd
        slo = opts.ttft_slo_ms
        co2 = opts.include_co2
        return replace(
            base,
            max_cost_usd=_tighter(max_cost, base.max_cost_usd),
            ttft_slo_s=_tighter(slo / 1000.0 if slo is not None else None, base.ttft_slo_s),
            include_co2=base.include_co2 if co2 is None else bool(co2),
        )

    def _check_output_fits(self, names: Sequence[str], req: WireRequest,
                           features: RequestFeatures) -> None:
        """400 for a max_tokens no candidate's context window can hold, whatever the policy
        (a policy that predicts also weighs the prompt; this needs no prediction)."""
        want = features.max_tokens
        if not want:
            return
        windows = [self.backends[n].config.context_window for n in names]
        if all(w is not None and want >= w for w in windows):
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise InvalidRequest(
                f"{param}={want} does not fit '{features.requested}': the largest context "
                f"window of its backends is {max(w or 0 for w in windows)} tokens, shared by "
                f"the prompt and the completion.", param=param, code="context_length_exceeded")

    async def _prepare(
        self, endpoint: Endpoint, body: dict[str, Any], req: WireRequest, ctx: RequestContext
    ) -> tuple[RequestFeatures, Plan, UsageRecord, dict[str, Any]]:
        requested = req.model
        target = self.router.resolve(requested, endpoint)
        first = self.backends[target.backends[0]]
        features = self._features(endpoint, body, req, ctx, first)
        self._check_output_fits(target.backends, req, features)
        await self.admission.admit(ctx, features)
        policy = (req.switchyard.policy if req.switchyard else None) or ctx.policy
        plan, _ = self.router.plan(target, features, self._constraints(req, ctx), policy)
        rec = UsageRecord(
            request_id=ctx.request_id, endpoint=endpoint, requested=requested,
            route=target.name if target.kind == "route" else None,
            team=ctx.team, key_id=ctx.key_id, stream=features.stream,
            prompt_tokens=features.prompt_tokens,
        )
        if plan.predictions:
            rec.decision = {"policy": plan.policy, "reason": plan.reason, "order": plan.order,
                            "rejected": plan.rejected,
                            "predictions": {k: vars_of(v) for k, v in plan.predictions.items()}}
        fwd = body
        if "switchyard" in body:
            fwd = {k: v for k, v in body.items() if k != "switchyard"}
        return features, plan, rec, fwd

    def _validated(self, endpoint: Endpoint, body: dict[str, Any], req: WireRequest | None,
                   ctx: RequestContext) -> WireRequest:
        """``req``, or ``body`` validated for a caller that did not (the HTTP layer does)."""
        if req is not None:
            return req
        try:
            return validate(endpoint, body)
        except SwitchyardError as e:
            self.reject(endpoint, body.get("model"), ctx, e)
            raise

    async def _prepare_or_record(
        self, endpoint: Endpoint, body: dict[str, Any], req: WireRequest, ctx: RequestContext
    ) -> tuple[RequestFeatures, Plan, UsageRecord, dict[str, Any]]:
        try:
            return await self._prepare(endpoint, body, req, ctx)
        except SwitchyardError as e:  # unknown model, rate limited, nothing fits...
            self.reject(endpoint, body.get("model"), ctx, e)
            raise

    def reject(self, endpoint: Endpoint, requested: Any, ctx: RequestContext,
               err: SwitchyardError) -> None:
        """Account a request refused before any backend was called: one record, no cost."""
        rec = UsageRecord(
            request_id=ctx.request_id, endpoint=endpoint,
            requested=requested if isinstance(requested, str) else "",
            team=ctx.team, key_id=ctx.key_id, status=err.status, error_code=err.code,
        )
        rec.latency_ms = (time.perf_counter() - ctx.received_at) * 1000.0
        self._emit(rec)

    # ---- non-streaming -------------------------------------------------------------

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], ctx: RequestContext,
        req: WireRequest | None = None,
    ) -> tuple[dict[str, Any], UsageRecord]:
        """Serve ``body``; ``req`` is its validated form (validated here when not given)."""
        req = self._validated(endpoint, body, req, ctx)
        features, plan, rec, fwd = await self._prepare_or_record(endpoint, body, req, ctx)
        attempts = Attempts(plan.order, self.trackers, self.retry)
        last: SwitchyardError | None = None
        while (name := await attempts.next(last)) is not None:
            backend = self.backends[name]
            tracker = self.trackers[name]
            rec.attempts += 1
            reservation = await self._reserve(ctx, backend, features, rec)
            call = BackendCall(endpoint, {**fwd, "model": backend.model}, ctx.request_id)
            meter = Meter()
            token = tracker.started()
            energy = self.energy_meters.get(name)
            e0 = energy.start() if energy is not None else 0.0
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(backend.config.timeouts.total_s):
                    result = await backend.call(call, meter)
            except asyncio.CancelledError:
                await self.admission.settle(ctx, reservation, 0.0, 0)
                raise
            except Exception as e:  # noqa: BLE001 - any backend failure may fall back
                last = await self._attempt_failed(e, "did not answer in time", backend, ctx,
                                                  reservation, rec)
                continue
            finally:
                tracker.finished(token)
                if energy is not None:
                    meter.energy_j = energy.stop(e0)
            t1 = time.perf_counter()
            usage = result.usage
            tracker.observe_success(usage.prompt_tokens, None, t1 - t0, usage.completion_tokens)
            rec.reason = self._reason(plan, attempts, last)
            self._account(rec, backend, usage, meter, ctx, busy_s=t1 - t0, ttft_s=None)
            await self.admission.settle(ctx, reservation, rec.cost_usd, usage.prompt_tokens + usage.completion_tokens)
            return result.body, rec
        err = self._exhausted(features, attempts, last)
        self._account_error(rec, None, err, ctx)
        raise err

    async def _reserve(self, ctx: RequestContext, backend: Backend, features: RequestFeatures,
                       rec: UsageRecord) -> Any:
        """Hold the call's worst-case cost; a refusal (budget spent, a request that can never
        fit) is recorded like every other."""
        try:
            return await self.admission.reserve(ctx, backend, features)
        except SwitchyardError as e:
            self._account_error(rec, None, e, ctx)
            raise

    @staticmethod
    def _reason(plan: Plan, attempts: Attempts, last: SwitchyardError | None) -> str:
        if attempts.count == 1 and not attempts.skipped:
            return plan.reason
        if last is not None:
            return f"fallback after {last.code} ({attempts.count} attempts); {plan.reason}"
        return f"fallback, circuit open: {', '.join(attempts.skipped)}; {plan.reason}"

    @staticmethod
    def _exhausted(
        features: RequestFeatures, attempts: Attempts, last: SwitchyardError | None
    ) -> SwitchyardError:
        if last is not None:
            return last
        return BackendUnavailable(
            f"Every backend for '{features.requested}' is unavailable "
            f"(circuit open: {', '.join(attempts.skipped)}).", retry_after=1,
        )

    async def _attempt_failed(
        self, e: BaseException, timed_out: str, backend: Backend, ctx: RequestContext,
        reservation: Any, rec: UsageRecord,
    ) -> SwitchyardError:
        """One attempt failed: release its reservation; raise what the client must see, or
        return the error so the next attempt (a retry or a fallback) can follow."""
        if isinstance(e, TimeoutError):
            e = BackendTimeout(f"Backend '{backend.name}' {timed_out}.")
        err = self._failed(backend.name, e)
        await self.admission.settle(ctx, reservation, 0.0, 0)
        if not err.retryable:
            self._account_error(rec, backend, err, ctx)
            raise err from None
        self.metrics.fallbacks.labels(backend.name, err.code).inc()
        return err

    def _failed(self, name: str, e: BaseException) -> SwitchyardError:
        if isinstance(e, SwitchyardError):
            err = e
        else:
            log.exception("backend %s failed", name)
            err = BackendError(f"Backend '{name}' failed: {type(e).__name__}.")
        if err.retryable and not isinstance(err, Overloaded):  # a full queue is not a fault
            self.trackers[name].observe_failure(time.monotonic(), err.code)
        return err

    # ---- streaming -----------------------------------------------------------------

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], ctx: RequestContext,
        req: WireRequest | None = None,
    ) -> tuple[AsyncIterator[bytes], UsageRecord]:
        """Open a stream: everything that can fail cheaply fails here, before the first byte."""
        req = self._validated(endpoint, body, req, ctx)
        features, plan, rec, fwd = await self._prepare_or_record(endpoint, body, req, ctx)
        opts = getattr(req, "stream_options", None)
        want_usage = bool(opts is not None and opts.include_usage)
        attempts = Attempts(plan.order, self.trackers, self.retry)
        last: SwitchyardError | None = None
        while (name := await attempts.next(last)) is not None:
            backend = self.backends[name]
            tracker = self.trackers[name]
            rec.attempts += 1
            reservation = await self._reserve(ctx, backend, features, rec)
            call_body = {**fwd, "model": backend.model, "stream": True,
                         "stream_options": {**(fwd.get("stream_options") or {}), "include_usage": True}}
            call = BackendCall(endpoint, call_body, ctx.request_id, stream=True)
            meter = Meter()
            token = tracker.started()
            energy = self.energy_meters.get(name)
            e0 = energy.start() if energy is not None else 0.0
            t0 = time.perf_counter()
            timeouts = backend.config.timeouts
            deadline = asyncio.get_running_loop().time() + timeouts.total_s
            it = backend.stream(call, meter).__aiter__()
            try:
                async with asyncio.timeout(min(timeouts.first_token_s, timeouts.total_s)):
                    first = await it.__anext__()
            except StopAsyncIteration:
                first = None
            except BaseException as e:
                tracker.finished(token)
                if energy is not None:
                    energy.stop(e0)
                await _aclose(it)
                if isinstance(e, asyncio.CancelledError):
                    await self.admission.settle(ctx, reservation, 0.0, 0)
                    raise
                last = await self._attempt_failed(e, "sent no first token in time", backend, ctx,
                                                  reservation, rec)
                continue
            rec.reason = self._reason(plan, attempts, last)
            rec.backend, rec.model = name, backend.model
            relay = self._relay(first, it, backend, (tracker, token, deadline), meter, rec, ctx,
                                reservation, features, want_usage, t0, (energy, e0))
            return relay, rec
        err = self._exhausted(features, attempts, last)
        self._account_error(rec, None, err, ctx)
        raise err

    async def _relay(
        self, first: dict[str, Any] | None, it: AsyncIterator[dict[str, Any]], backend: Backend,
        flight: tuple[Tracker, int, float], meter: Meter, rec: UsageRecord, ctx: RequestContext,
        reservation: Any,
        features: RequestFeatures, want_usage: bool, t0: float,
        energy: tuple[FairShare | None, float] = (None, 0.0),
    ) -> AsyncIterator[bytes]:
        """Relay the stream; a failure after the first byte is one final SSE error event.
        ``flight`` is (tracker, in-flight token, loop-time deadline of the total timeout)."""
        tracker, token, deadline = flight
        ttft: float | None = None
        chunks = 0  # chunks that carried generated text: the token count when none is reported
        usage: Usage | None = None
        status, code = 200, None
        last: dict[str, Any] | None = None
        try:
            chunk = first
            while chunk is not None:
                last = chunk
                u = chunk.get("usage")
                if u:
                    usage = Usage.from_openai(u)
                choices = chunk.get("choices")
                if choices:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    if has_content(chunk):
                        chunks += 1
                    if u and not want_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    yield sse(chunk)
                elif not u or want_usage:
                    yield sse(chunk)
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await it.__anext__()
                except StopAsyncIteration:
                    chunk = None
            if want_usage and usage is None:
                # the backend reports no usage (llama.cpp's server ignores include_usage):
                # the client still gets the usage chunk it asked for, counted here
                usage = meter.usage or Usage(features.prompt_tokens, chunks)
                yield sse(_usage_chunk(last, usage))
            yield _DONE
        except (asyncio.CancelledError, GeneratorExit):
            status, code = 499, "client_disconnected"
            raise
        except Exception as e:  # noqa: BLE001 - ends the stream with an error event
            if isinstance(e, TimeoutError):
                e = BackendTimeout(f"Backend '{backend.name}' did not finish in time.")
            err = self._failed(backend.name, e)
            status, code = err.status, err.code
            yield sse(err.body())
        finally:
            tracker.finished(token)
            if energy[0] is not None:
                meter.energy_j = energy[0].stop(energy[1])
            await _aclose(it)
            t1 = time.perf_counter()
            usage = usage or meter.usage or Usage(features.prompt_tokens, chunks)
            if status == 200:
                tracker.observe_success(usage.prompt_tokens, ttft, t1 - t0, usage.completion_tokens)
            rec.status, rec.error_code = status, code
            self._account(rec, backend, usage, meter, ctx, busy_s=t1 - t0, ttft_s=ttft)
            await self.admission.settle(ctx, reservation, rec.cost_usd,
                                        usage.prompt_tokens + usage.completion_tokens)

    # ---- accounting ----------------------------------------------------------------

    def _account(
        self, rec: UsageRecord, backend: Backend, usage: Usage, meter: Meter, ctx: RequestContext,
        *, busy_s: float, ttft_s: float | None,
    ) -> None:
        now = time.perf_counter()
        rec.backend, rec.model = backend.name, meter.upstream_model or backend.model
        rec.prompt_tokens, rec.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        rec.cached_tokens = usage.cached_tokens
        rec.cost_usd = backend.cost_usd(usage, busy_s)
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
        self._emit(rec)

    def _account_error(
        self, rec: UsageRecord, backend: Backend | None, err: SwitchyardError, ctx: RequestContext
    ) -> None:
        rec.status, rec.error_code = err.status, err.code
        if backend is not None:
            rec.backend, rec.model = backend.name, backend.model
        rec.prompt_tokens = 0
        rec.latency_ms = (time.perf_counter() - ctx.received_at) * 1000.0
        self._emit(rec)

    def _emit(self, rec: UsageRecord) -> None:
        self.metrics.observe(rec)
        if self.ledger is not None:
            self.ledger.write(rec)
        if self._observe:
            self.registry.notify("switchyard_request_recorded", self._tasks, record=rec)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _usage_chunk(last: dict[str, Any] | None, usage: Usage) -> dict[str, Any]:
    last = last or {}
    return {"id": last.get("id"), "object": last.get("object", "chat.completion.chunk"),
            "created": last.get("created"), "model": last.get("model"), "choices": [],
            "usage": usage.to_openai()}


async def _aclose(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken stream must not raise
            log.debug("closing backend stream failed", exc_info=True)
