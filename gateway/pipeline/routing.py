"""Resolve what the client named (a route, a backend, a model) to candidates and a plan."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest, ModelNotFound, PermissionDenied
from gateway.interfaces import (
    Backend,
    Candidate,
    Constraints,
    Endpoint,
    Judge,
    Plan,
    PlanEditor,
    RequestFeatures,
    RoutingPolicy,
)
from gateway.predict import drained_reason, estimate, nothing_fits
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.routing")


@dataclass(frozen=True, slots=True)
class Cascade:
    """A route's cascade (``RouteConfig.cascade``) with its judge, built at start-up;
    ``gateway.pipeline.cascade`` runs it."""

    route: str
    stages: tuple[str, ...]
    judge: Judge
    judge_name: str
    on_budget: str = "first_answer"  # or "error"
    stream_first_unjudged: bool = False
    learn: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """What a model name resolves to."""

    name: str
    kind: str  # "route" | "backend" | "model"
    backends: tuple[str, ...]
    policy: str
    allowed_policies: frozenset[str] | None = None  # per-request overrides allowed (None: any)
    cascade: Cascade | None = None
    baseline: str | None = None  # what the savings report compares with (None: backends[0])


@dataclass(slots=True)
class Router:
    backends: Mapping[str, Backend]
    trackers: Mapping[str, Tracker]
    targets: Mapping[str, Target]
    policies: Mapping[str, RoutingPolicy]
    editors: Sequence[PlanEditor]
    _static: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def resolve(self, requested: str, endpoint: Endpoint) -> Target:
        target = self.targets.get(requested)
        if target is None:
            raise ModelNotFound(
                f"The model '{requested}' does not exist. GET /v1/models lists the models and routes.",
                param="model",
            )
        if not any(endpoint in self.backends[b].capabilities for b in target.backends):
            raise InvalidRequest(
                f"'{requested}' cannot serve the {endpoint} endpoint.", param="model",
                code="model_not_supported",
            )
        return target

    def candidates(self, target: Target, features: RequestFeatures) -> list[Candidate]:
        now = time.monotonic()
        out = []
        for name in target.backends:
            b = self.backends[name]
            if features.endpoint not in b.capabilities or not b.config.enabled:
                continue
            t = self.trackers[name]
            stats = t.snapshot(features.prompt_tokens, b.load(), now)
            static = self._static.get(name) or self._describe(name, b)
            out.append(Candidate(*static, stats=stats,  # type: ignore[misc]
                                 healthy=stats.breaker != "open" and t.last_probe_ok is not False
                                 and t.remote_down_until <= now and t.drained is None,
                                 concurrency=b.config.concurrency,
                                 drained=t.drained is not None,
                                 drained_reason=t.drained[1] if t.drained else ""))
        return out

    def _describe(self, name: str, b: Backend) -> tuple[Any, ...]:
        """What does not change while the gateway runs: names, prices, energy profile."""
        pin, pout = b.price_per_token()
        prof = b.config.energy
        static = (name, b.model, b.config.plugin, pin, pout, b.pricing().per_hour,
                  prof.watts_busy, prof.joules_per_token, prof.grid_g_per_kwh, b.config.context_window)
        self._static[name] = static
        return static

    def policy_for(
        self, target: Target, override: str | None, constraints: Constraints
    ) -> tuple[str, RoutingPolicy]:
        """The route's policy, or the one the request asked for if the route and the team
        allow it. A route's ``policy_options`` apply to its own policy only."""
        if override is None or override == target.policy.split(":", 1)[-1]:
            name = target.policy
        else:
            name = override
            for allowed, who in ((target.allowed_policies, f"the route '{target.name}'"),
                                 (constraints.allowed_policies, "your team")):
                if allowed is not None and name not in allowed:
                    raise PermissionDenied(
                        f"The routing policy '{name}' is not allowed for {who} "
                        f"(allowed: {', '.join(sorted(allowed)) or 'none'}).",
                        param="switchyard.policy", code="policy_not_allowed",
                    )
        policy = self.policies.get(name)
        if policy is None:
            known = sorted(n for n in self.policies if ":" not in n)
            raise InvalidRequest(
                f"Unknown routing policy '{name}'. Known: {', '.join(known)}.",
                param="switchyard.policy",
            )
        return name.split(":", 1)[-1], policy

    def plan(
        self,
        target: Target,
        features: RequestFeatures,
        constraints: Constraints,
        policy_name: str | None = None,
    ) -> tuple[Plan, list[Candidate]]:
        name, policy = self.policy_for(target, policy_name, constraints)
        cands = self.candidates(target, features)
        allowed = constraints.allowed_backends
        if allowed is not None or constraints.allowed_models is not None:
            kept = [
                c for c in cands
                if (allowed is None or c.name in allowed)
                and (constraints.allowed_models is None or c.model in constraints.allowed_models)
            ]
            if not kept:
                raise PermissionDenied(
                    f"Your team may not use '{features.requested}'.", param="model"
                )
            cands = kept
        plan = policy.plan(features, cands, constraints)
        plan.policy = plan.policy or name
        for editor in self.editors:
            edited = editor(features, cands, plan)
            if edited is not None:
                plan = edited
        drained = {c.name: c.drained_reason for c in cands if c.drained}
        if drained and any(n in drained for n in plan.order):  # whatever policy or editor
            plan.order = [n for n in plan.order if n not in drained]
            for n, why in drained.items():
                plan.rejected.setdefault(n, drained_reason(why))
        if not plan.predictions:  # the ledger keeps every candidate's predictions
            plan.predictions = {c.name: estimate(features, c) for c in cands}
        if not plan.order:
            raise nothing_fits(features, cands, constraints, plan.rejected)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("plan %s via %s: %s (%s) %s", features.requested, plan.policy, plan.order,
                      plan.reason, {k: vars_of(v) for k, v in plan.predictions.items()})
        return plan, cands


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in getattr(obj, "__slots__", ())}


def build_targets(
    backends: Mapping[str, Backend], routes: Sequence[Any], default_policy: str = "first_healthy"
) -> dict[str, Target]:
    """Names a client may use: routes, backend names, and each backend's model id (a model
    served by several backends becomes a group the policy chooses within)."""
    targets: dict[str, Target] = {}
    for r in routes:
        allowed = getattr(r, "allowed_policies", None)
        targets[r.name] = Target(r.name, "route", tuple(r.backends), r.policy,
                                 frozenset(allowed) if allowed is not None else None,
                                 baseline=getattr(r, "baseline", None))
    for name in backends:
        targets.setdefault(name, Target(name, "backend", (name,), default_policy))
    by_model: dict[str, list[str]] = {}
    for name, b in backends.items():
        by_model.setdefault(b.model, []).append(name)
    for model, names in by_model.items():
        targets.setdefault(model, Target(model, "model", tuple(names), default_policy))
    return targets
