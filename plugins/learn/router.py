"""The learned pre-router's model: each candidate model's expected quality for a prompt,
from the prompt's MiniLM embedding, and the decision rules the ``learned`` policy and
``switchyard eval router`` share.

Decision rules, over predicted qualities ``q`` and costs ``c`` of the candidates:

- ``cheapest_meeting(q, c, target)``: the cheapest candidate predicted to reach ``target``;
  none does: the one predicted best;
- ``best_tradeoff(q, c, lam)``: the largest ``q - lam * c`` (``lam`` in quality per USD).

``calibrate`` turns a goal stated on the training data (keep a fraction of the best single
model's quality; stay under a mean cost) into the ``target`` that reaches it on the
training set's out-of-fold predictions, so no test data is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from plugins.learn import files, models
from plugins.learn.embed import EMBEDDER, PromptEncoder

Arr = NDArray[np.float64]


def cheapest_meeting(q: Arr, c: Arr, target: float) -> Any:
    """Row-wise: the index of the cheapest candidate with ``q >= target``, else of the best
    ``q``. ``q``, ``c``: (n, m) or (m,)."""
    q2, c2 = np.atleast_2d(q), np.atleast_2d(c)
    ok = q2 >= target
    pick = np.argmin(np.where(ok, c2, np.inf), axis=1)
    out = np.where(ok.any(axis=1), pick, np.argmax(q2, axis=1))
    return out if np.ndim(q) == 2 else int(out[0])


def best_tradeoff(q: Arr, c: Arr, lam: float) -> Any:
    return np.argmax(np.atleast_2d(q) - lam * np.atleast_2d(c), axis=1) if np.ndim(q) == 2 \
        else int(np.argmax(q - lam * c))


def realised(pick: NDArray[Any], Y: Arr, C: Arr) -> tuple[float, float]:
    """(mean quality, mean cost) of sending each prompt to its picked model."""
    rows = np.arange(len(pick))
    return float(Y[rows, pick].mean()), float(C[rows, pick].mean())


def calibrate(Q: Arr, Y: Arr, C: Arr, *, keep: float | None = None,
              max_cost: float | None = None) -> float:
    """The quality target for ``cheapest_meeting`` that, on predictions ``Q`` of examples
    with known qualities ``Y`` and costs ``C``: keeps ``keep`` times the best single
    model's mean quality at the lowest cost, or reaches the best quality under a mean cost
    of ``max_cost``."""
    if (keep is None) == (max_cost is None):
        raise ValueError("calibrate: give one of keep or max_cost")
    targets = np.unique(np.concatenate([np.quantile(Q, np.linspace(0, 1, 201)), [0.0, 1.01]]))
    rows = [(t, *realised(cheapest_meeting(Q, C, float(t)), Y, C)) for t in targets]
    if keep is not None:
        goal = keep * float(Y.mean(axis=0).max())
        ok = [r for r in rows if r[1] >= goal]
        best = min(ok, key=lambda r: (r[2], -r[1])) if ok else max(rows, key=lambda r: r[1])
    else:
        ok = [r for r in rows if r[2] <= float(max_cost or 0.0)]
        best = max(ok, key=lambda r: (r[1], -r[2])) if ok else min(rows, key=lambda r: r[2])
    return float(best[0])


def out_of_fold(kind: str, params: dict[str, Any], X: NDArray[Any], Y: Arr, folds: int = 5,
                seed: int = 0) -> Arr:
    """Each training example's prediction from a model fitted without it (k-fold)."""
    idx = np.random.default_rng(seed).permutation(len(X))
    out = np.zeros_like(Y, dtype=np.float64)
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        out[test] = models.make(kind, **params).fit(X[train], Y[train]).predict(X[test])
    return out


class RouterModel:
    """A fitted predictor of each model's quality for a prompt, with the models' names and
    mean costs on the training data, and out-of-fold predictions for calibration."""

    def __init__(self, predictor: models.Predictor, model_names: Sequence[str],
                 mean_cost: Sequence[float], meta: dict[str, Any] | None = None,
                 oof: dict[str, Arr] | None = None, encoder: PromptEncoder | None = None) -> None:
        self.predictor = predictor
        self.encoder = encoder or PromptEncoder()
        self.models = list(model_names)
        self.mean_cost = np.asarray(mean_cost, dtype=np.float64)
        self.meta = dict(meta or {})
        self.oof = oof or {}

    @classmethod
    def fit(cls, X: NDArray[Any], Y: Arr, C: Arr, model_names: Sequence[str],
            kind: str = "knn", params: dict[str, Any] | None = None,
            folds: int = 5, encoder: PromptEncoder | None = None) -> RouterModel:
        """Fit on vectors ``X`` (made by ``encoder``, MiniLM by default)."""
        params = params or {}
        oof = ({"Q": out_of_fold(kind, params, X, Y, folds), "Y": Y, "C": C}
               if folds > 1 else None)
        predictor = models.make(kind, **params).fit(X, Y)
        return cls(predictor, model_names, C.mean(axis=0), {"examples": len(X)}, oof, encoder)

    def predict(self, X: NDArray[Any]) -> Arr:
        return self.predictor.predict(X)

    def calibrate(self, *, keep: float | None = None, max_cost: float | None = None) -> float:
        if not self.oof:
            raise ValueError("this model file has no out-of-fold predictions to calibrate on")
        return calibrate(self.oof["Q"], self.oof["Y"], self.oof["C"], keep=keep, max_cost=max_cost)

    def save(self, path: str | Path) -> None:
        arrays, params = self.predictor.state()
        arrays = dict(arrays)
        for k, v in self.oof.items():
            arrays[f"oof.{k}"] = v
        for name in ("idf", "rows", "fitted"):
            if (value := getattr(self.encoder, name)) is not None:
                arrays[f"embed.{name}"] = value
        meta = {**self.meta, "models": self.models, "mean_cost_usd": self.mean_cost.tolist(),
                "model": {"kind": self.predictor.kind, "params": params},
                "features": {"prompt": self.encoder.kind, "from": EMBEDDER,
                             **({"max_tokens": self.encoder.max_tokens}
                                if self.encoder.max_tokens is not None else {})}}
        files.save(path, "router", meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> RouterModel:
        meta, arrays = files.load(path, "router")
        try:
            spec = meta["model"]
            own = {k: v for k, v in arrays.items() if "." not in k}
            predictor = models.restore(spec["kind"], own, spec["params"])
            oof = {k[4:]: v for k, v in arrays.items() if k.startswith("oof.")}
            feats = meta["features"]
            encoder = PromptEncoder(feats["prompt"], arrays.get("embed.idf"),
                                    arrays.get("embed.rows"), arrays.get("embed.fitted"),
                                    feats.get("max_tokens"))
            return cls(predictor, meta["models"], meta["mean_cost_usd"], meta, oof, encoder)
        except (KeyError, TypeError, ValueError) as e:
            raise files.ModelFileError(f"{path}: incomplete router model ({e})") from None
