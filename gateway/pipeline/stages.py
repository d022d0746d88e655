"""The stages a request goes through before any backend is called, in the order ``ORDER``
declares; ``attempts`` and ``account`` follow (``gateway.pipeline.attempt``), then
``cache_store`` after a success.

A stage is a callable that takes the ``Exchange`` and fills in its part; it returns None,
or an awaitable when it does I/O. A stage that is not configured is not in the list at all
(``build``), so it costs nothing per request: without budgets there is no ``admit``, without
a cache no ``cache_lookup``, without a compressor no ``compress``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from gateway.accounting import UsageRecord
from gateway.errors import InvalidRequest
from gateway.hookspecs import Stage
from gateway.interfaces import Backend, BackendCall, Constraints, RequestFeatures
from gateway.pipeline.admission import Admission, OpenAdmission
from gateway.pipeline.compress import Compress
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.routing import Router, vars_of
from gateway.protocol import max_prompt_tokens, prompt_text

# the order of the stages before the first backend call; a name in ``build``'s
# ``optional`` joins at its place, the others are always there
ORDER = ("resolve", "compress", "features", "admit", "cache_lookup", "plan")
OPTIONAL = frozenset({"compress", "cache_lookup"})  # of hookspecs.STAGE_SEAMS
# after a backend answered, in this order (``gateway.pipeline.attempt``)
AFTER = ("attempts", "account", "cache_store")


def _tighter(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


class Resolve:
    """The client's model name -> a route, a backend or a model's backends; the body the
    backends get (the client's, less Switchyard's own ``switchyard`` field)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def __call__(self, x: Exchange) -> None:
        x.target = self.router.resolve(x.req.model, x.endpoint)
        body = x.body
        x.forwarded = ({k: v for k, v in body.items() if k != "switchyard"}
                       if "switchyard" in body else body)


class Features:
    """What routing and admission know of the request: read from the validated request
    (typed), the prompt from the forwarded body (the same values, as the client sent
    them); 400 for a ``max_tokens`` no candidate's context window can hold. The request's
    record starts here."""

    def __init__(self, backends: Mapping[str, Backend], admission: Admission,
                 text_chars: int) -> None:
        self.backends = backends
        self.text_chars = text_chars
        # only budgets hold on the largest prompt count: without them, it costs nothing
        self.count_max = type(admission) is not OpenAdmission

    def __call__(self, x: Exchange) -> None:
        req, body, endpoint = x.req, x.forwarded, x.endpoint
        opts = req.switchyard
        first = self.backends[x.target.backends[0]]
        x.features = RequestFeatures(
            endpoint=endpoint,
            requested=req.model,
            prompt_tokens=first.count_tokens(BackendCall(endpoint, body, x.ctx.request_id)),
            max_tokens=req.max_output,
            stream=req.streaming,
            latency_target=(opts.latency_target if opts else None) or "ttft",
            text=prompt_text(endpoint, body, self.text_chars),
            prompt_tokens_max=max_prompt_tokens(endpoint, body) if self.count_max else None,
            choices=req.choices,
        )
        self._check_output_fits(x)
        ctx, target = x.ctx, x.target
        x.record = UsageRecord(
            request_id=ctx.request_id, endpoint=endpoint, requested=req.model,
            route=target.name if target.kind == "route" else None,
            team=ctx.team, key_id=ctx.key_id, stream=req.streaming,
            prompt_tokens=x.features.prompt_tokens,
        )

    def _check_output_fits(self, x: Exchange) -> None:
        """(a policy that predicts also weighs the prompt; this needs no prediction)"""
        want = x.features.max_tokens
        if not want:
            return
        windows = [self.backends[n].config.context_window for n in x.target.backends]
        if all(w is not None and want >= w for w in windows):
            param = ("max_completion_tokens" if getattr(x.req, "max_completion_tokens", None)
                     else "max_tokens")
            raise InvalidRequest(
                f"{param}={want} does not fit '{x.features.requested}': the largest context "
                f"window of its backends is {max(w or 0 for w in windows)} tokens, shared by "
                f"the prompt and the completion.", param=param, code="context_length_exceeded")


class NotedFeatures(Features):
    """``features``, then ``note(exchange)``: a stage before it (``compress``) puts what it
    did into the record features just started; without one, plain ``Features`` runs."""

    def __init__(self, note: Callable[[Exchange], None], *args: Any) -> None:
        super().__init__(*args)
        self.note = note

    def __call__(self, x: Exchange) -> None:
        super().__call__(x)
        self.note(x)


class Admit:
    """Rate limits per key and team (``Admission.admit``); only there with budgets. With
    ``defer`` (no cache lookup between here and the first backend call, which could answer
    the request or spend on it), they are taken with the first reservation, in one round
    trip to the state store."""

    def __init__(self, admission: Admission, defer: bool = False) -> None:
        self.admission = admission
        self.defer = defer

    def __call__(self, x: Exchange) -> Awaitable[None]:
        return self.admission.admit(x.ctx, x.features, defer=self.defer)


class PlanStage:
    """The policy's ordered plan over the target's candidates (a route's cascade: its
    stages the plan kept, from the policy's first choice on); the record keeps the
    policy's decision when it predicted."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def __call__(self, x: Exchange) -> None:
        req = x.req
        policy = (req.switchyard.policy if req.switchyard else None) or x.ctx.policy
        plan, _ = self.router.plan(x.target, x.features, constraints(x), policy)
        cascade = x.target.cascade
        if cascade is not None and x.endpoint != "embeddings":  # nothing to judge there
            plan.cascade = cascade_of(cascade.stages, plan.order)
        x.plan = plan
        if plan.predictions:
            x.record.decision = {**(x.record.decision or {}),  # the compress stage's, if any
                            "policy": plan.policy, "reason": plan.reason, "order": plan.order,
                            "rejected": plan.rejected,
                            "predictions": {k: vars_of(v) for k, v in plan.predictions.items()}}


def cascade_of(stages: Sequence[str], order: Sequence[str]) -> list[str]:
    """The stages the plan kept, in the cascade's order, from the policy's first choice on:
    a pre-router (the ``learned`` policy) that picks a stronger stage skips the cheaper ones;
    the cheapest-first policies start at the first stage."""
    kept = [s for s in stages if s in order]
    return kept[kept.index(order[0]):] if order and order[0] in kept else kept


def constraints(x: Exchange) -> Constraints:
    """The team's limits, tightened by the request's own (never loosened)."""
    opts = x.req.switchyard
    base = x.ctx.constraints
    if opts is None:
        return base
    slo = opts.ttft_slo_ms
    co2 = opts.include_co2
    return replace(
        base,
        max_cost_usd=_tighter(opts.max_cost_usd, base.max_cost_usd),
        ttft_slo_s=_tighter(slo / 1000.0 if slo is not None else None, base.ttft_slo_s),
        include_co2=base.include_co2 if co2 is None else bool(co2),
    )


def build(router: Router, backends: Mapping[str, Backend], admission: Admission,
          text_chars: int, optional: Mapping[str, Stage] | None = None,
          ) -> tuple[tuple[str, Stage], ...]:
    """The configured stages, in ``ORDER``: ``optional`` holds the ones a plugin adds
    (``switchyard_register_stages``: ``compress``, ``cache_lookup``); the rest are built
    here."""
    optional = dict(optional or {})
    unknown = set(optional) - OPTIONAL
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)} (optional: {sorted(OPTIONAL)})")
    # the built-in compress stage notes what it did in the record features starts
    compress = optional.get("compress")
    note = compress.note if isinstance(compress, Compress) else None
    built: dict[str, Stage] = {
        "resolve": Resolve(router),
        "features": (Features(backends, admission, text_chars) if note is None
                     else NotedFeatures(note, backends, admission, text_chars)),
        "plan": PlanStage(router),
        **optional,
    }
    if type(admission) is not OpenAdmission:
        built["admit"] = Admit(admission, defer="cache_lookup" not in optional)
    return tuple((name, built[name]) for name in ORDER if name in built)


def names(stages: Sequence[tuple[str, Stage]]) -> list[str]:
    return [n for n, _ in stages]
