"""Resolve what the client named (a route, a backend, a model) to candidates and a plan."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import BackendUnavailable, InvalidRequest, ModelNotFound, PermissionDenied
from gateway.interfaces import (
    Backend,
    Candidate,
    Constraints,
    Endpoint,
    Plan,
    PlanEditor,
    RequestFeatures,
    RoutingPolicy,
)
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.routing")


@dataclass(frozen=True, slots=True)
class Target:
    """What a model name resolves to."""

    name: str
    kind: str  # "route" | "backend" | "model"
    backends: tuple[str, ...]
    policy: str


@dataclass(slots=True)
class Router:
    backends: Mapping[str, Backend]
    trackers: Mapping[str, Tracker]
    targets: Mapping[str, Target]
    policies: Mapping[str, RoutingPolicy]
    editors: Sequence[PlanEditor]

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
            pin, pout = b.price_per_token()
            prof = b.config.energy
            stats = t.snapshot(features.prompt_tokens, b.load(), now)
            out.append(
                Candidate(
                    name=name,
                    model=b.model,
                    plugin=b.config.plugin,
                    input_usd_per_token=pin,
                    output_usd_per_token=pout,
                    per_hour_usd=b.pricing().per_hour,
                    watts_busy=prof.watts_busy,
                    joules_per_token=prof.joules_per_token,
                    grid_g_per_kwh=prof.grid_g_per_kwh,
                    context_window=b.config.context_window,
                    stats=stats,
                    healthy=stats.breaker != "open" and t.last_probe_ok is not False,
                )
            )
        return out

    def plan(
        self,
        target: Target,
        features: RequestFeatures,
        constraints: Constraints,
        policy_name: str | None = None,
    ) -> tuple[Plan, list[Candidate]]:
        name = policy_name or target.policy
        policy = self.policies.get(name)
        if policy is None:
            raise InvalidRequest(
                f"Unknown routing policy '{name}'. Known: {', '.join(sorted(self.policies))}.",
                param="switchyard.policy",
            )
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
        if not plan.order:
            why = "; ".join(f"{k}: {v}" for k, v in plan.rejected.items()) or "no backend is available"
            raise BackendUnavailable(
                f"No backend can serve '{features.requested}' now ({why}).", retry_after=1
            )
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
        targets[r.name] = Target(r.name, "route", tuple(r.backends), r.policy)
    for name in backends:
        targets.setdefault(name, Target(name, "backend", (name,), default_policy))
    by_model: dict[str, list[str]] = {}
    for name, b in backends.items():
        by_model.setdefault(b.model, []).append(name)
    for model, names in by_model.items():
        targets.setdefault(model, Target(model, "model", tuple(names), default_policy))
    return targets
