"""``switchyard eval router`` and ``eval cascade``: fit on one file, report on another.

Every choice (model kind, its parameters, the judge's features) is made by 5-fold
cross-validation on the training file; the data file is only scored, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from plugins.learn import metrics
from plugins.learn.data import DataError, Table
from plugins.learn.embed import DEFAULT_EMBEDDER, PromptEncoder, encode_cached
from plugins.learn.features import judge_text
from plugins.learn.judge import AnswerScorer
from plugins.learn.router import RouterModel, best_tradeoff, out_of_fold, realised
from plugins.learn.words import WORDS, WORDS_DEFAULT

Arr = NDArray[np.float64]

# what cross-validation chooses among (kind, params)
ROUTER_GRID: list[tuple[str, dict[str, Any]]] = [
    ("knn", {"k": 25}), ("knn", {"k": 50}), ("knn", {"k": 100}), ("knn", {"k": 150}),
    ("knn", {"k": 200}), ("knn", {"ks": [100, 150, 200]}), ("knn", {"ks": [50, 100, 200, 400]}),
    ("knn", {"ks": [100, 150, 200], WORDS: dict(WORDS_DEFAULT)}),  # `--model knn+words`
    ("logreg", {"l2": 30.0}), ("logreg", {"l2": 300.0}), ("mf", {"rank": 16}),
]
CV_SEEDS = 3  # fold splits averaged: one split's APGR moves by about 0.005 with its seed
JUDGE_GRID: list[dict[str, Any]] = [
    {"embedding": False, "l2": 1.0}, {"embedding": False, "l2": 10.0},
    {"embedding": True, "l2": 10.0}, {"embedding": True, "l2": 100.0},
]


def _same_models(train: Table, data: Table) -> None:
    if train.models != data.models:
        raise DataError(f"--train has models {train.models}, --data {data.models}: they must match")


def _two(t: Table) -> tuple[int, int]:
    weak, strong = t.weak_strong()
    return t.col(weak), t.col(strong)


def router_score(Q: Arr, w: int, s: int) -> Arr:
    """Two models: how much better the strong one is predicted to do (higher: strong)."""
    return Q[:, s] - Q[:, w]


def _lambda_points(Q: Arr, Y: Arr, C: Arr, scale: float) -> list[metrics.Point]:
    """Many models: the operating points of ``best_tradeoff`` over a range of lambdas (the
    point's share: the requests not sent to their cheapest model)."""
    pts = []
    cheapest = np.argmin(C, axis=1)
    for lam in [0.0, *np.geomspace(1e-3, 1e3, 61) / max(scale, 1e-12), np.inf]:
        pick = cheapest if np.isinf(lam) else best_tradeoff(Q, C, float(lam))
        q, c = realised(pick, Y, C)
        pts.append(metrics.Point(float(np.mean(pick != cheapest)), q, c, float(lam)))
    return pts


def _quality_of(t: Table, Q: Arr) -> dict[str, Any]:
    """The figures of one set of predictions on one table (router metric)."""
    if len(t.models) == 2:
        w, s = _two(t)
        Y, C = t.quality, t.cost
        pts = metrics.sweep(router_score(Q, w, s), Y[:, w], Y[:, s], C[:, w], C[:, s])
        return {"points": pts, **metrics.summary(pts, Y[:, w].mean(), Y[:, s].mean())}
    pts = _lambda_points(Q, t.quality, t.cost, float(t.cost.mean()))
    return {"points": pts}


def _aiq(t: Table, pts: Sequence[metrics.Point]) -> dict[str, float]:
    single_c, single_q = t.cost.mean(axis=0), t.quality.mean(axis=0)
    lo, hi = float(single_c.min()), float(single_c.max())
    router = metrics.hull([p.cost_usd for p in pts] + list(single_c),
                          [p.quality for p in pts] + list(single_q))
    return {"router": metrics.aiq(metrics.hull([p.cost_usd for p in pts], [p.quality for p in pts]), lo, hi),
            "router_with_singles": metrics.aiq(router, lo, hi),
            "zero_router": metrics.aiq(metrics.hull(single_c, single_q), lo, hi)}


def select_router(train: Table, X: NDArray[np.float32],
                  grid: Sequence[tuple[str, dict[str, Any]]] = ROUTER_GRID,
                  log: Callable[[str], None] = lambda s: None,
                  seeds: int = CV_SEEDS) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The (kind, params) with the best cross-validated figure, the mean over ``seeds``
    5-fold splits: with two models APGR minus CPT(50 %) (the issue's two goals at once: the
    area, and the strong calls at half the gap), with more, AIQ."""
    tried: list[dict[str, Any]] = []
    for kind, params in grid:
        runs = [_quality_of(train, out_of_fold(kind, params, X, train.quality, seed=seed,
                                               prompts=train.prompts))
                for seed in range(seeds)]
        row: dict[str, Any] = {"kind": kind, "params": params}
        if "apgr" in runs[0]:
            row["apgr"] = round(float(np.mean([r["apgr"] for r in runs])), 4)
            row["cpt50"] = round(float(np.mean([r["cpt50"] for r in runs])), 4)
            row["cv"] = round(row["apgr"] - row["cpt50"], 4)
        else:
            row["cv"] = round(float(np.mean([_aiq(train, r["points"])["router"] for r in runs])), 4)
        tried.append(row)
        log(f"  cv {kind} {params}: {row}")
    best = max(tried, key=lambda r: float(r["cv"]))
    return str(best["kind"]), dict(best["params"]), tried


def references(t: Table, cascade: bool = False) -> dict[str, Any]:
    w, s = _two(t)
    Y, C = t.quality, t.cost
    args = (Y[:, w], Y[:, s], C[:, w], C[:, s])
    out = {}
    for name, pts in (("random", metrics.random_points(*args, escalate_pays_both=cascade)),
                      ("perfect", metrics.perfect_points(*args, escalate_pays_both=cascade))):
        out[name] = {**metrics.summary(pts, Y[:, w].mean(), Y[:, s].mean()),
                     "points": [asdict(p) for p in pts]}
    return out


def eval_router(train: Table, data: Table, *, kind: str | None = None,
                params: dict[str, Any] | None = None, embedder: str = DEFAULT_EMBEDDER,
                max_tokens: int | None = None, cache: Path | None = None,
                log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    _same_models(train, data)
    log(f"embedding {len(train)} + {len(data)} prompts ({embedder})")
    encoder = PromptEncoder.fit(embedder, train.prompts, disk_cache=True, cache=cache,
                                max_tokens=max_tokens)
    X_tr = encoder.encode(train.prompts, disk_cache=True, cache=cache)
    X_te = encoder.encode(data.prompts, disk_cache=True, cache=cache)
    tried: list[dict[str, Any]] = []
    if kind is None:
        kind, params, tried = select_router(train, X_tr, log=log)
    model = RouterModel.fit(X_tr, train.quality, train.cost, train.models, kind, params, folds=1,
                            encoder=encoder, prompts=train.prompts)
    res = _quality_of(data, model.predict(X_te, data.prompts))
    pts = res.pop("points")
    out: dict[str, Any] = {
        "apgr": res.get("apgr"), "cpt50": res.get("cpt50"), "cpt80": res.get("cpt80"),
        "aiq": _aiq(data, pts), "points": [asdict(p) for p in pts],
        "model": {"kind": kind, "params": params or {}, "embedder": embedder,
                  "max_tokens": max_tokens,
                  "cross_validation": tried},
        "n": {"train": len(train), "data": len(data)}, "models": data.models,
        "single_models": {m: {"quality": float(data.quality[:, j].mean()),
                              "cost_usd": float(data.cost[:, j].mean())}
                          for j, m in enumerate(data.models)},
    }
    if len(data.models) == 2:
        out["references"] = references(data)
    return out


def _judge_inputs(t: Table, embedding: bool, cache: Path | None) -> tuple[list[str], NDArray[np.float32] | None]:
    weak, _ = t.weak_strong()
    if weak not in t.responses:
        raise DataError(f"a cascade's judge reads the cheap model's answers: every line needs "
                        f"outcomes[{weak!r}].response")
    answers = t.responses[weak]
    vecs = encode_cached([judge_text(p, a) for p, a in zip(t.prompts, answers, strict=True)],
                         cache) if embedding else None
    return answers, vecs


def _cascade_points(t: Table, scores: Arr) -> list[metrics.Point]:
    w, s = _two(t)
    Y, C = t.quality, t.cost
    return metrics.sweep(1.0 - scores, Y[:, w], Y[:, s], C[:, w], C[:, s], escalate_pays_both=True)


def select_judge(train: Table, cache: Path | None, grid: Sequence[dict[str, Any]] = JUDGE_GRID,
                 log: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    w, s = _two(train)
    Y = train.quality
    idx = np.random.default_rng(0).permutation(len(train))
    tried = []
    for opts in grid:
        answers, vecs = _judge_inputs(train, opts["embedding"], cache)
        oof = np.zeros(len(train))
        for f in range(5):
            test = idx[f::5]
            fit = np.setdiff1d(idx, test)
            sc = AnswerScorer.fit([train.prompts[i] for i in fit], [answers[i] for i in fit],
                                  Y[fit, w], Y[fit, s], embedding=opts["embedding"],
                                  vectors=None if vecs is None else vecs[fit], l2=opts["l2"], folds=1)
            oof[test] = sc.score_many([train.prompts[i] for i in test], [answers[i] for i in test],
                                      vectors=None if vecs is None else vecs[test])
        sub = Table(train.prompts, train.models, Y, train.cost)
        apgr = metrics.summary(_cascade_points(sub, oof), Y[:, w].mean(), Y[:, s].mean())["apgr"]
        tried.append({**opts, "cv": round(float(apgr), 4)})
        log(f"  cv judge {opts}: {apgr:.4f}")
    best = max(tried, key=lambda r: r["cv"])
    return {"embedding": best["embedding"], "l2": best["l2"]}, tried


def fit_judge(train: Table, opts: dict[str, Any], cache: Path | None, **goal: Any) -> AnswerScorer:
    w, s = _two(train)
    answers, vecs = _judge_inputs(train, opts["embedding"], cache)
    return AnswerScorer.fit(train.prompts, answers, train.quality[:, w], train.quality[:, s],
                            embedding=opts["embedding"], vectors=vecs, l2=opts["l2"], **goal)


def eval_cascade(train: Table, data: Table, *, embedding: bool | None = None,
                 cache: Path | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    _same_models(train, data)
    tried: list[dict[str, Any]] = []
    if embedding is None:
        opts, tried = select_judge(train, cache, log=log)
    else:
        opts = {"embedding": embedding, "l2": 10.0}
    scorer = fit_judge(train, opts, cache)
    answers, vecs = _judge_inputs(data, opts["embedding"], cache)
    scores = scorer.score_many(data.prompts, answers, vectors=vecs)
    w, s = _two(data)
    Y = data.quality
    pts = _cascade_points(data, scores)
    esc = scores < scorer.threshold
    return {
        **metrics.summary(pts, Y[:, w].mean(), Y[:, s].mean()),
        "points": [asdict(p) for p in pts],
        "threshold": {"value": scorer.threshold, "goal": scorer.meta.get("goal"),
                      "escalated": float(esc.mean()),
                      "quality": float(np.where(esc, Y[:, s], Y[:, w]).mean()),
                      "cost_usd": float((data.cost[:, w] + np.where(esc, data.cost[:, s], 0)).mean())},
        "judge": {**opts, "cross_validation": tried},
        "n": {"train": len(train), "data": len(data)},
        "weak": data.models[w], "strong": data.models[s],
        "single_models": {m: {"quality": float(Y[:, j].mean()),
                              "cost_usd": float(data.cost[:, j].mean())}
                          for j, m in enumerate(data.models)},
        "references": references(data, cascade=True),
    }
