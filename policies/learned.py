"""``learned``: the pre-router of issue 14. Predicts each candidate's quality for the prompt
from a model trained by ``switchyard train router`` (MiniLM embedding of the prompt ->
kNN / logistic regression / matrix factorisation), then sends the request to the cheapest
candidate predicted to reach a quality target, or to the best ``quality - lambda * cost``.

Options (a route's ``policy_options``), loaded once at start-up:

- ``model``: the model file (required);
- the goal, at most one of: ``quality_target`` (predicted quality in [0, 1]); ``keep``
  (a fraction of the best single model's quality, calibrated into a quality target on the
  file's out-of-fold training predictions; the default, 0.95); ``mean_cost_usd`` (a mean
  cost per request to stay under, calibrated the same way); ``cost_weight`` (lambda, in
  quality per USD of the gateway's predicted cost);
- ``models``: ``{backend: model name in the file}`` where a backend's name and model id
  differ from the file's (by default a backend matches by its name, then its model id);
- the prediction priors of ``gateway.PredictOptions`` (``slots``, ``default_ttft_s``...).

The plan's first choice is the pick; the other candidates follow as fallbacks, the one
predicted best first; candidates the file does not know come last. Every built-in hard
constraint applies first (``gateway.evaluate``).

The embedding: a policy's ``plan`` is synchronous and pure, so the prompt's vector is
computed inside it, on the event loop, from the last ``ROUTE_CHARS`` characters of
``RequestFeatures.text`` (the last user turn), with the embedder the file was trained with:
``distilled`` (the default of ``switchyard train router``) or ``static`` (the tokenizer and a
table look-up, no forward pass: about 1 ms; ``distilled`` routes about as well as ``minilm``),
``minilm`` or ``minilm-int8`` (one transformer forward pass, fp32 or int8 weights, about 130
tokens at most), or ``distilled+int8`` (both vectors side by side); an LRU of recent prompts
makes a retried or repeated prompt free. A file trained with the word ridge (``--model
knn+words``, or ``auto`` where cross-validation chooses it, as on MMLU) also reads the same
characters' words (``plugins.learn.words``: a ridge regression beside the kNN, about
0.15 ms more a decision). ``bench/learned_policy.py`` measures the decision's cost.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
from plugins.learn.features import route_text
from plugins.learn.router import RouterModel

_GOALS = ("quality_target", "keep", "mean_cost_usd", "cost_weight")
_OWN = ("model", "models", *_GOALS)


def _number(options: Mapping[str, Any], key: str, lo: float, hi: float | None = None) -> float:
    v = options[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"policy 'learned': option {key!r} must be a number {rng}, not {v!r}")
    return float(v)


class Learned:
    name = "learned"

    def __init__(self, options: Mapping[str, Any], cache_size: int = 4096) -> None:
        self.opts = PredictOptions.from_options(options, accept=_OWN, policy=self.name)
        path = options.get("model")
        if not isinstance(path, str) or not path:
            raise ValueError("policy 'learned': option 'model' (a file from `switchyard train "
                             "router`) is required")
        self.model = RouterModel.load(path)
        mapping = options.get("models") or {}
        if not isinstance(mapping, Mapping) or not all(
                isinstance(k, str) and v in self.model.models for k, v in mapping.items()):
            raise ValueError(f"policy 'learned': 'models' maps backend names to the file's "
                             f"models ({', '.join(self.model.models)})")
        self.mapping = dict(mapping)
        goals = [g for g in _GOALS if g in options]
        if len(goals) > 1:
            raise ValueError(f"policy 'learned': give one of {', '.join(_GOALS)}, not {goals}")
        goal = goals[0] if goals else "keep"
        self.cost_weight: float | None = None
        self.target = 0.0
        if goal == "cost_weight":
            self.cost_weight = _number(options, goal, 0.0)
        elif goal == "quality_target":
            self.target = _number(options, goal, 0.0, 1.0)
        elif goal == "mean_cost_usd":
            self.target = self.model.calibrate(max_cost=_number(options, goal, 0.0))
        else:
            keep = _number(options, goal, 0.0, 1.0) if goals else 0.95
            self.target = self.model.calibrate(keep=keep)
        self.goal = goal
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._vector("warm up")  # loads MiniLM now, not on the first request

    def _vector(self, text: str) -> np.ndarray:
        key = route_text(text)
        vec = self._cache.get(key)
        if vec is None:
            vec = self.model.encoder.encode([key])[0]
            self._cache[key] = vec
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return vec

    def _column(self, c: Candidate) -> int | None:
        name = self.mapping.get(c.name) or (c.name if c.name in self.model.models else c.model)
        return self.model.models.index(name) if name in self.model.models else None

    def plan(self, request: RequestFeatures, candidates: Sequence[Candidate],
             constraints: Constraints) -> Plan:
        feasible, preds, rejected = evaluate(request, candidates, constraints, self.opts)
        if not feasible:
            return Plan([], "no backend meets the constraints", self.name, preds, rejected)
        known = [(c, p, j) for c, p in feasible if (j := self._column(c)) is not None]
        unknown = sorted(((c, p) for c, p in feasible if self._column(c) is None),
                         key=lambda cp: cp[1].cost_usd)
        if not known:
            order = [c.name for c, _ in unknown]
            return Plan(order, "learned: no candidate is in the model file; cheapest first",
                        self.name, preds, rejected)
        q_all = self.model.predict(self._vector(request.text)[None, :], [route_text(request.text)])[0]
        q = np.array([q_all[j] for _, _, j in known])
        cost = np.array([p.cost_usd for _, p, _ in known])
        if self.cost_weight is not None:
            ranked = sorted(range(len(known)), key=lambda i: (-(q[i] - self.cost_weight * cost[i]), cost[i]))
            pick = ranked[0]
        else:
            ok = [i for i in range(len(known)) if q[i] >= self.target]
            pick = (min(ok, key=lambda i: (cost[i], -q[i])) if ok
                    else int(np.argmax(q)))
            ranked = [pick, *sorted((i for i in range(len(known)) if i != pick), key=lambda i: -q[i])]
        order = [known[i][0].name for i in ranked] + [c.name for c, _ in unknown]
        return Plan(order, self._reason(known, q, cost, pick), self.name, preds, rejected)

    def _reason(self, known: list[tuple[Candidate, Prediction, int]], q: np.ndarray,
                cost: np.ndarray, pick: int) -> str:
        preds = ", ".join(f"{c.name} {q[i]:.2f}" for i, (c, _, _) in enumerate(known))
        if self.cost_weight is not None:
            why = f"best quality - {self.cost_weight:g} x cost"
        elif q[pick] >= self.target:
            why = f"cheapest predicted to reach {self.target:.2f} (${cost[pick]:.6f})"
        else:
            why = f"none predicted to reach {self.target:.2f}: the best"
        return f"learned: {known[pick][0].name}, {why}; predicted quality {preds}"


@hookimpl(trylast=True)
def switchyard_register_policies(register: RegisterPolicy) -> None:
    register("learned", Learned)
