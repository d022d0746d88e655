"""``weighted``: one score over normalised cost, latency and energy.

Each metric is min-max normalised over the candidates that meet the hard constraints, so
0 is the best of them and 1 the worst; the score is the weighted sum. ``cost``,
``latency`` and ``energy`` are its corner cases (weight 1 on one metric); ties go to the
lower predicted latency, then cost, then energy, then route order.

Options (a route's ``policy_options``): ``weights: {cost, latency, energy}``, ``co2: true``
(grams of CO2 instead of joules), and the prediction priors of ``gateway.PredictOptions``
(``fresh_s``, ``half_life_s``, ``default_ttft_s``, ``default_decode_tps``, ``slots``...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway import (
    Candidate,
    Constraints,
    Plan,
    Prediction,
    PredictOptions,
    RegisterPolicy,
    RequestFeatures,
    evaluate,
    hookimpl,
)

_OWN = ("weights", "co2")  # the rest of policy_options are PredictOptions' priors
METRICS = ("cost", "latency", "energy")


def _norm(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 0.0:
        return [0.0] * len(values)
    return [(v - lo) / span for v in values]


class Weighted:
    def __init__(self, name: str, weights: Mapping[str, float], options: Mapping[str, Any]) -> None:
        self.opts = PredictOptions.from_options(options, accept=_OWN, policy=name)
        w = {**weights, **(options.get("weights") or {})}
        bad = set(w) - set(METRICS)
        if bad or any(float(v) < 0 for v in w.values()) or not any(float(v) for v in w.values()):
            raise ValueError(f"policy {name!r}: weights must be non-negative, not all zero, "
                             f"and name only {METRICS}")
        self.name = name
        self.w_cost = float(w.get("cost", 0.0))
        self.w_latency = float(w.get("latency", 0.0))
        self.w_energy = float(w.get("energy", 0.0))
        self.co2 = bool(options.get("co2", False))

    def plan(
        self, request: RequestFeatures, candidates: Sequence[Candidate], constraints: Constraints
    ) -> Plan:
        feasible, preds, rejected = evaluate(request, candidates, constraints, self.opts)
        if not feasible:
            return Plan([], "no backend meets the constraints", self.name, preds, rejected)
        total = request.latency_target == "total"
        co2 = self.co2 or constraints.include_co2
        cost = [p.cost_usd for _, p in feasible]
        lat = [p.total_s if total else p.ttft_s for _, p in feasible]
        en = [p.co2_g if co2 else p.energy_j for _, p in feasible]
        nc, nl, ne = _norm(cost), _norm(lat), _norm(en)
        wc, wl, we = self.w_cost, self.w_latency, self.w_energy
        keyed = sorted(
            range(len(feasible)),
            key=lambda i: (wc * nc[i] + wl * nl[i] + we * ne[i], lat[i], cost[i], en[i], i),
        )
        order = [feasible[i][0].name for i in keyed]
        return Plan(order, self._reason(feasible, keyed, total, co2), self.name, preds, rejected)

    def _reason(
        self, feasible: list[tuple[Candidate, Prediction]], keyed: list[int], total: bool, co2: bool
    ) -> str:
        best = feasible[keyed[0]][1]
        nxt = (feasible[keyed[1]][0].name, feasible[keyed[1]][1]) if len(keyed) > 1 else None
        lat_name = "total time" if total else "ttft"

        def show(p: Prediction, metric: str) -> str:
            if metric == "cost":
                return f"${p.cost_usd:.6f}"
            if metric == "latency":
                return f"{(p.total_s if total else p.ttft_s) * 1000:.0f} ms"
            return f"{p.co2_g:.4f} gCO2" if co2 else f"{p.energy_j:.2f} J"

        weights = {"cost": self.w_cost, "latency": self.w_latency, "energy": self.w_energy}
        main = [m for m in METRICS if weights[m]]
        if len(main) == 1:
            m = main[0]
            label = {"cost": "cheapest", "latency": f"lowest {lat_name}",
                     "energy": "least CO2" if co2 else "fewest joules"}[m]
            why = f"{self.name}: {label} {show(best, m)}"
            return why + (f" (next {nxt[0]} {show(nxt[1], m)})" if nxt else " (only fit)")
        parts = ", ".join(f"{m} {show(best, m)}" for m in main)
        return f"{self.name}: best weighted score ({parts})" + (f" over {nxt[0]}" if nxt else " (only fit)")


DEFAULT_WEIGHTS = {"cost": 1.0, "latency": 1.0, "energy": 1.0}


@hookimpl(trylast=True)
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("weighted", lambda options: Weighted("weighted", DEFAULT_WEIGHTS, options))
