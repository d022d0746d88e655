"""The learned pre-router's model: each candidate model's expected quality for a prompt,
from the prompt's embedding (and, where the params have ``words``, a ridge regression on its
words beside it: ``Fitted``), and the decision rules the ``learned`` policy and
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
from plugins.learn.words import WORDS, WordRidge

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


def _parts(kind: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the predictor's own params, the word ridge's ``{"l2", "share"}`` or None)."""
    own = {k: v for k, v in params.items() if k != WORDS}
    words = params.get(WORDS)
    if words is None:
        return own, None
    if not isinstance(words, dict) or not 0.0 <= float(words.get("share", -1)) <= 1.0:
        raise ValueError(f"{kind}: {WORDS!r} is {{\"l2\": L2, \"share\": 0..1}}, not {words!r}")
    return own, words


class Fitted:
    """A predictor over prompt vectors and, where the params name one, the word ridge beside
    it (``plugins.learn.words``): each model's predicted quality is
    ``(1 - share) * predictor + share * words``."""

    def __init__(self, predictor: models.Predictor, words: WordRidge | None = None,
                 share: float = 0.0) -> None:
        self.predictor, self.words, self.share = predictor, words, float(share)

    @classmethod
    def fit(cls, kind: str, params: dict[str, Any], X: NDArray[Any], Y: Arr,
            prompts: Sequence[str] | None = None) -> Fitted:
        own, words = _parts(kind, params)
        predictor = models.make(kind, **own).fit(X, Y)
        if words is None:
            return cls(predictor)
        if prompts is None or len(prompts) != len(X):
            raise ValueError(f"{kind} with {WORDS}: the ridge on words needs the prompts")
        ridge = WordRidge(float(words.get("l2", 20.0))).fit(prompts, Y)
        return cls(predictor, ridge, float(words["share"]))

    def predict(self, X: NDArray[Any], prompts: Sequence[str] | None = None) -> Arr:
        q = self.predictor.predict(X)
        if self.words is None:
            return q
        if prompts is None or len(prompts) != len(q):
            raise ValueError("this router model also reads the prompts' words: pass the prompts")
        return (1.0 - self.share) * q + self.share * self.words.predict(prompts)


def out_of_fold(kind: str, params: dict[str, Any], X: NDArray[Any], Y: Arr, folds: int = 5,
                seed: int = 0, prompts: Sequence[str] | None = None) -> Arr:
    """Each training example's prediction from a model fitted without it (k-fold)."""
    idx = np.random.default_rng(seed).permutation(len(X))
    out = np.zeros_like(Y, dtype=np.float64)
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        sub = None if prompts is None else [prompts[i] for i in train]
        held = None if prompts is None else [prompts[i] for i in test]
        out[test] = Fitted.fit(kind, params, X[train], Y[train], sub).predict(X[test], held)
    return out


class RouterModel:
    """A fitted predictor of each model's quality for a prompt (over the prompt's vector, with
    the word ridge beside it where it was trained with one), with the models' names and mean
    costs on the training data, and out-of-fold predictions for calibration."""

    def __init__(self, predictor: models.Predictor, model_names: Sequence[str],
                 mean_cost: Sequence[float], meta: dict[str, Any] | None = None,
                 oof: dict[str, Arr] | None = None, encoder: PromptEncoder | None = None,
                 words: WordRidge | None = None, share: float = 0.0) -> None:
        self._fitted = Fitted(predictor, words, share)
        self.encoder = encoder or PromptEncoder()
        self.models = list(model_names)
        self.mean_cost = np.asarray(mean_cost, dtype=np.float64)
        self.meta = dict(meta or {})
        self.oof = oof or {}

    @property
    def predictor(self) -> models.Predictor:
        return self._fitted.predictor

    @property
    def words(self) -> WordRidge | None:
        return self._fitted.words

    @classmethod
    def fit(cls, X: NDArray[Any], Y: Arr, C: Arr, model_names: Sequence[str],
            kind: str = "knn", params: dict[str, Any] | None = None,
            folds: int = 5, encoder: PromptEncoder | None = None,
            prompts: Sequence[str] | None = None) -> RouterModel:
        """Fit on vectors ``X`` (made by ``encoder``, MiniLM by default) and, where ``params``
        has ``words``, on the ``prompts``' words too."""
        params = params or {}
        oof = ({"Q": out_of_fold(kind, params, X, Y, folds, prompts=prompts), "Y": Y, "C": C}
               if folds > 1 else None)
        fitted = Fitted.fit(kind, params, X, Y, prompts)
        return cls(fitted.predictor, model_names, C.mean(axis=0), {"examples": len(X)}, oof,
                   encoder, fitted.words, fitted.share)

    def predict(self, X: NDArray[Any], prompts: Sequence[str] | None = None) -> Arr:
        """Each model's predicted quality for vectors ``X`` (of ``prompts``: a model with a
        word ridge reads their words too)."""
        return self._fitted.predict(X, prompts)

    def calibrate(self, *, keep: float | None = None, max_cost: float | None = None) -> float:
        if not self.oof:
            raise ValueError("this model file has no out-of-fold predictions to calibrate on")
        return calibrate(self.oof["Q"], self.oof["Y"], self.oof["C"], keep=keep, max_cost=max_cost)

    def save(self, path: str | Path) -> None:
        arrays, params = self.predictor.state()
        arrays = dict(arrays)
        if self.words is not None:
            w_arrays, w_params = self.words.state()
            arrays.update({f"{WORDS}.{k}": v for k, v in w_arrays.items()})
            params = {**params, WORDS: {**w_params, "share": self._fitted.share}}
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
            own_params, words_params = _parts(spec["kind"], spec["params"])
            own = {k: v for k, v in arrays.items() if "." not in k}
            predictor = models.restore(spec["kind"], own, own_params)
            words = None if words_params is None else WordRidge.restore(
                {k[len(WORDS) + 1:]: v for k, v in arrays.items() if k.startswith(f"{WORDS}.")},
                words_params)
            oof = {k[4:]: v for k, v in arrays.items() if k.startswith("oof.")}
            feats = meta["features"]
            encoder = PromptEncoder(feats["prompt"], arrays.get("embed.idf"),
                                    arrays.get("embed.rows"), arrays.get("embed.fitted"),
                                    feats.get("max_tokens"))
            return cls(predictor, meta["models"], meta["mean_cost_usd"], meta, oof, encoder,
                       words, float(words_params["share"]) if words_params else 0.0)
        except (KeyError, TypeError, ValueError) as e:
            raise files.ModelFileError(f"{path}: incomplete router model ({e})") from None
