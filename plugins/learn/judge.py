"""``AnswerScorer``: FrugalGPT's scorer on CPU-sized parts. It reads a cheap model's answer
(with its prompt and, where the backend returned them, its token log-probabilities) and
gives P(the answer is good enough) in [0, 1]; a cascade serves the answer when the score
reaches ``threshold`` and escalates otherwise.

Features: the answer's shape and arithmetic and the log-probability statistics
(``plugins.learn.features``), and optionally the MiniLM embedding of prompt + answer.
Model: logistic regression (``plugins.learn.models``). ``threshold`` is calibrated on the
training data's out-of-fold scores to a goal: keep a fraction of the strong model's quality
at the fewest escalations, or escalate at most a share of requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from plugins.learn import files, models
from plugins.learn.embed import EMBEDDER, encode
from plugins.learn.features import (
    ANSWER_FEATURES,
    LOGPROB_FEATURES,
    answer_features,
    judge_text,
    logprob_features,
)

Arr = NDArray[np.float64]


def shape_features(prompts: Sequence[str], answers: Sequence[str],
                   logprobs: Sequence[Sequence[float] | None] | None = None) -> NDArray[np.float32]:
    lps = logprobs if logprobs is not None else [None] * len(answers)
    return np.array([np.concatenate([answer_features(p, a), logprob_features(lp)])
                     for p, a, lp in zip(prompts, answers, lps, strict=True)], dtype=np.float32)


def threshold_for(scores: Arr, weak: Arr, strong: Arr, *, keep: float | None = None,
                  max_escalation: float | None = None) -> float:
    """The acceptance threshold that, escalating every answer scored below it: keeps
    ``keep`` times the strong model's quality with the fewest escalations, or escalates at
    most ``max_escalation`` of the answers with the best quality."""
    if (keep is None) == (max_escalation is None):
        raise ValueError("give one of keep or max_escalation")
    cands = np.unique(np.concatenate([scores, [0.0, 1.0 + 1e-9]]))
    rows = []
    for t in cands:
        esc = scores < t
        rows.append((float(t), float(esc.mean()), float(np.where(esc, strong, weak).mean())))
    if keep is not None:
        goal = keep * float(np.mean(strong))
        ok = [r for r in rows if r[2] >= goal]
        return min(ok, key=lambda r: (r[1], -r[2]))[0] if ok else 1.0 + 1e-9
    ok = [r for r in rows if r[1] <= float(max_escalation or 0.0)]
    return max(ok, key=lambda r: (r[2], -r[1]))[0]


class AnswerScorer:
    """Load with ``AnswerScorer.load(path)`` (a file from ``switchyard train judge``)."""

    def __init__(self, predictor: models.Predictor, *, embedding: bool, threshold: float,
                 meta: dict[str, Any] | None = None) -> None:
        self.predictor = predictor
        self.embedding = embedding
        self.threshold = float(threshold)
        self.meta = dict(meta or {})

    def features(self, prompts: Sequence[str], answers: Sequence[str],
                 logprobs: Sequence[Sequence[float] | None] | None = None,
                 vectors: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        X = shape_features(prompts, answers, logprobs)
        if not self.embedding:
            return X
        if vectors is None:
            vectors = encode([judge_text(p, a) for p, a in zip(prompts, answers, strict=True)])
        return np.hstack([X, vectors])

    def score_many(self, prompts: Sequence[str], answers: Sequence[str],
                   logprobs: Sequence[Sequence[float] | None] | None = None,
                   vectors: NDArray[np.float32] | None = None) -> Arr:
        if not answers:
            return np.zeros(0)
        return self.predictor.predict(self.features(prompts, answers, logprobs, vectors))[:, 0]

    def score(self, prompt: str, answer: str, logprobs: Sequence[float] | None = None) -> float:
        """P(the cheap answer is good enough), in [0, 1]. Synchronous and CPU-bound (with
        the embedding, one MiniLM forward pass): call it off the event loop."""
        return float(self.score_many([prompt], [answer], [logprobs])[0])

    @classmethod
    def fit(cls, prompts: Sequence[str], answers: Sequence[str], weak: Arr, strong: Arr, *,
            embedding: bool = False, vectors: NDArray[np.float32] | None = None,
            logprobs: Sequence[Sequence[float] | None] | None = None, l2: float = 10.0,
            keep: float | None = 0.95, max_escalation: float | None = None,
            folds: int = 5) -> AnswerScorer:
        """Fit on the cheap model's answers and both models' qualities; the threshold is
        calibrated on out-of-fold scores."""
        scorer = cls(models.LogReg(l2=l2), embedding=embedding, threshold=0.5)
        X = scorer.features(prompts, answers, logprobs, vectors)
        y = np.asarray(weak, dtype=np.float64)[:, None]
        scorer.predictor = models.LogReg(l2=l2).fit(X, y)
        if folds > 1:  # the threshold from scores of examples each fit did not see
            oof = np.zeros(len(X))
            idx = np.random.default_rng(0).permutation(len(X))
            for f in range(folds):
                test = idx[f::folds]
                rest = np.setdiff1d(idx, test)
                oof[test] = models.LogReg(l2=l2).fit(X[rest], y[rest]).predict(X[test])[:, 0]
        else:
            oof = scorer.predictor.predict(X)[:, 0]
        if max_escalation is not None:
            keep = None
        scorer.threshold = threshold_for(oof, np.asarray(weak), np.asarray(strong), keep=keep,
                                         max_escalation=max_escalation)
        scorer.meta = {"examples": len(X), "goal": {"keep": keep, "max_escalation": max_escalation},
                       "oof_escalation": float((oof < scorer.threshold).mean())}
        return scorer

    def save(self, path: str | Path) -> None:
        arrays, params = self.predictor.state()
        meta = {**self.meta, "threshold": self.threshold,
                "model": {"kind": self.predictor.kind, "params": params},
                "features": {"answer": list(ANSWER_FEATURES), "logprobs": list(LOGPROB_FEATURES),
                             "embedding": EMBEDDER if self.embedding else None}}
        files.save(path, "judge", meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> AnswerScorer:
        meta, arrays = files.load(path, "judge")
        try:
            feats = meta["features"]
            if list(feats["answer"]) != list(ANSWER_FEATURES) or \
                    list(feats["logprobs"]) != list(LOGPROB_FEATURES):
                raise files.ModelFileError(f"{path}: trained on other answer features; retrain "
                                           "it with `switchyard train judge`")
            spec = meta["model"]
            predictor = models.restore(spec["kind"], arrays, spec["params"])
            return cls(predictor, embedding=bool(feats.get("embedding")),
                       threshold=float(meta["threshold"]), meta=meta)
        except (KeyError, TypeError) as e:
            raise files.ModelFileError(f"{path}: incomplete judge model ({e})") from None
