"""Fit the semantic cache's verifier on the QQP TRAIN half and write
plugins/cache/verifier.json (its weights and the shipped threshold).

The verifier reads ``plugins.cache.decide.features`` (the cosine of the two MiniLM
embeddings and word features) and the two embeddings' element-wise product and absolute
difference (Sentence-BERT's pair features). ``--model logistic`` (the default, what ships)
fits a logistic regression by Newton's method with a small L2 penalty; ``--model mlp`` one
ReLU layer of ``--hidden`` units by Adam on the log loss (numpy only; measured, not
shipped: README). Pairs a veto rejects are left out (they are misses whatever the verifier
says).

The threshold is a rule, not a number tuned on an evaluation set: a wrong hit costs
``--wrong-hit-cost`` misses (2: wrong hits are worse), so serve when P(same question) >=
cost / (1 + cost); or, with ``--precision``, the lowest threshold at which out-of-fold
decisions on the train half reach that precision. Every train pair is scored by a verifier
fitted on the other folds (``--folds``; vetoed pairs count as misses), which gives the
reported train figures; then the verifier is fitted on the whole train half. No test half, no
held-out set and no GPTCache pair is read. It also prints what each veto costs on train:
the duplicates it turns away and the non-duplicates it stops.

    nice -n 10 python bench/fit_cache_verifier.py   # a few minutes once the vectors are kept
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qqp_pairs import DEFAULT, pairs

from plugins.cache.decide import (
    BASE_FEATURES,
    FEATURES,
    VERIFIER_FILE,
    features,
    pair_features,
    parse,
    vetoes,
    word_vectors,
)
from plugins.cache.evaluate import vectors


def embed_cached(texts: list[str], cache_dir: Path,
                 everything: bool = False) -> dict[str, np.ndarray]:
    """MiniLM vectors of ``texts``, kept in ``cache_dir`` (``switchyard eval cache
    --cache-dir`` reads the same chunks)."""
    t0 = time.perf_counter()
    out = vectors(texts, cache_dir, everything)
    print(f"vectors of {len(out)} texts in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Newton's method (IRLS); the bias (last column) is not penalised."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2 * len(y))
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -40, 40)))
        grad = x.T @ (p - y) + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 64, epochs: int = 15,
            lr: float = 1e-3, batch: int = 256, decay: float = 1e-4,
            seed: int = 0) -> dict[str, object]:
    """One ReLU layer over standardised inputs, trained by Adam on the log loss (numpy
    only). Returns the layer as ``plugins.cache.decide.Hidden`` reads it."""
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-3)  # a constant input stays 0, not inf
    xs = (x - mean) / scale
    w1 = rng.normal(0, np.sqrt(2 / x.shape[1]), (x.shape[1], hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, np.sqrt(1 / hidden), hidden)
    b2 = np.zeros(1)
    params = [w1, b1, w2, b2]
    m = [np.zeros_like(q) for q in params]
    v = [np.zeros_like(q) for q in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            j = order[start:start + batch]
            z = xs[j] @ w1 + b1
            h = np.maximum(z, 0)
            p = 1 / (1 + np.exp(-np.clip(h @ w2 + b2[0], -40, 40)))
            g = (p - y[j]) / len(j)
            gh = np.outer(g, w2) * (z > 0)
            grads = [xs[j].T @ gh + decay * w1, gh.sum(axis=0), h.T @ g + decay * w2,
                     np.array([g.sum()])]
            step += 1
            for q, gq, mq, vq in zip(params, grads, m, v, strict=True):
                mq *= 0.9
                mq += 0.1 * gq
                vq *= 0.999
                vq += 0.001 * gq * gq
                q -= lr * (mq / (1 - 0.9 ** step)) / (np.sqrt(vq / (1 - 0.999 ** step)) + 1e-8)
    return {"mean": mean, "scale": scale, "w1": w1, "b1": b1, "w2": w2, "b2": float(b2[0])}


def mlp_probability(net: dict[str, object], x: np.ndarray) -> np.ndarray:
    mean, scale, w1, b1, w2 = (np.asarray(net[k]) for k in ("mean", "scale", "w1", "b1", "w2"))
    h = np.maximum((x - mean) / scale @ w1 + b1, 0)
    return 1 / (1 + np.exp(-np.clip(h @ w2 + float(net["b2"]), -40, 40)))  # type: ignore[arg-type,no-any-return]


def fit_trees(x: np.ndarray, y: np.ndarray, iters: int = 200, depth: int = 6,
              seed: int = 0) -> Any:
    """scikit-learn's histogram gradient boosting over the scalar features."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=iters, learning_rate=0.05, max_depth=depth,
                                          max_leaf_nodes=31, l2_regularization=1.0,
                                          early_stopping=False, random_state=seed).fit(x, y)


def export_trees(model: Any) -> dict[str, object]:
    """The fitted trees as ``plugins.cache.decide.Trees`` reads them (a leaf points at
    itself; shorter trees are padded with unreachable leaves)."""
    preds = [p[0] for p in model._predictors]
    width = max(len(p.nodes) for p in preds)
    shape = (len(preds), width)
    feature, left, right = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    threshold, value = np.zeros(shape), np.zeros(shape)
    depth = 0
    for t, pred in enumerate(preds):
        nodes = pred.nodes
        m = len(nodes)
        leaf = nodes["is_leaf"].astype(bool)
        idx = np.arange(m)
        feature[t, :m] = np.where(leaf, 0, nodes["feature_idx"])
        threshold[t, :m] = np.where(leaf, 0.0, nodes["num_threshold"])
        left[t, :m] = np.where(leaf, idx, nodes["left"])
        right[t, :m] = np.where(leaf, idx, nodes["right"])
        value[t, :m] = np.where(leaf, nodes["value"], 0.0)
        left[t, m:] = right[t, m:] = np.arange(m, width)
        depth = max(depth, int(nodes["depth"].max()))
    return {"baseline": float(np.ravel(model._baseline_prediction)[0]), "depth": depth,
            # thresholds in full: a split can sit exactly on a training value (x <= t)
            "feature": feature.tolist(), "threshold": threshold.tolist(),
            "left": left.tolist(), "right": right.tolist(), "value": rounded(value, 7)}


def threshold_for(scores: np.ndarray, y: np.ndarray, precision: float) -> float:
    """The lowest threshold whose precision on (scores, y) is at least ``precision``."""
    order = np.argsort(-scores)
    prec = np.cumsum(y[order]) / np.arange(1, len(y) + 1)
    ok = np.nonzero(prec >= precision)[0]
    return float(scores[order][ok.max()]) if len(ok) else 1.0


def recall_at(scores: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    hit = scores >= t
    tp = float((hit & (y > 0)).sum())
    return tp / max(float(hit.sum()), 1.0), tp / max(float(y.sum()), 1.0)


def design(rows: list[dict[str, object]], vec: dict[str, np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Per pair: its features, its pair features, its label; and what each veto caught.
    A vetoed pair is a miss whatever the verifier says: it is left out of the fit and
    scored 0."""
    xs, ps, ys, keep = [], [], [], []
    words = word_vectors()
    vetoed = {k: [0, 0] for k in ("numbers", "negation", "opposite", "direction", "roles")}
    for r in rows:
        a, b, dup = str(r["a"]), str(r["b"]), bool(r["duplicate"])
        pa, pb = parse(a), parse(b)
        v = vetoes(pa, pb)
        for name in v:
            vetoed[name][0 if dup else 1] += 1
        xs.append(features(pa, pb, float(vec[a] @ vec[b]), words))
        ps.append(pair_features(vec[a], vec[b]))
        ys.append(float(dup))
        keep.append(not v)
    return (np.array(xs), np.array(ps), np.array(ys),
            {"keep": keep, **vetoed})  # type: ignore[dict-item]


def rounded(a: np.ndarray | float, digits: int = 5) -> object:
    """``digits`` significant digits (a small weight keeps its precision)."""
    arr = np.asarray(a, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"))(arr).tolist()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT)
    p.add_argument("--wrong-hit-cost", type=float, default=2.0,
                   help="a wrong hit costs this many misses: threshold = cost / (1 + cost)")
    p.add_argument("--precision", type=float,
                   help="instead: the lowest threshold whose out-of-fold precision on the "
                        "train half reaches this")
    p.add_argument("--model", choices=("logistic", "mlp", "trees"), default="logistic")
    p.add_argument("--trees", type=int, default=200, help="trees: how many")
    p.add_argument("--depth", type=int, default=6, help="trees: the deepest")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/switchyard-embeddings"))
    p.add_argument("--out", type=Path, default=VERIFIER_FILE)
    p.add_argument("--limit", type=int, help="use the first N train pairs only")
    p.add_argument("--l2", type=float, default=1e-3, help="logistic: the L2 penalty")
    p.add_argument("--features", choices=("all", "base"), default="all",
                   help="all: FEATURES with the soft word alignment; base: without it")
    p.add_argument("--no-pair", action="store_true",
                   help="leave the two embeddings' product and difference out")
    p.add_argument("--oof-out", type=Path, help="keep the out-of-fold scores here (.npy)")
    args = p.parse_args()
    train = list(pairs(args.data, "train"))[: args.limit]
    vec = embed_cached([t for r in train for t in (str(r["a"]), str(r["b"]))], args.cache_dir)
    x, pf, y, info = design(train, vec)
    names = list(FEATURES) if args.features == "all" else [*BASE_FEATURES, "bias"]
    x = x[:, [FEATURES.index(n) for n in names]]
    if args.no_pair:
        pf = pf[:, :0]
    keep = np.array(info.pop("keep"))
    nf = len(names)
    full = np.concatenate([x[:, :-1], pf], axis=1)  # the network's inputs (no bias column)

    def fit(idx: np.ndarray) -> tuple[dict[str, object], object]:
        if args.model == "trees":
            model = fit_trees(x[idx, :-1], y[idx], args.trees, args.depth)
            return {"trees": model}, lambda rows: model.predict_proba(x[rows, :-1])[:, 1]
        if args.model == "mlp":
            net = fit_mlp(full[idx], y[idx], args.hidden, args.epochs)
            return net, lambda rows: mlp_probability(net, full[rows])
        xl = np.concatenate([x[:, :-1], pf, x[:, -1:]], axis=1)  # bias last for fit_logistic
        w = fit_logistic(xl[idx], y[idx], args.l2)
        return {"w": w}, lambda rows: 1 / (1 + np.exp(-np.clip(xl[rows] @ w, -40, 40)))

    # out-of-fold scores over the whole train half: each pair scored by a verifier that
    # never saw it; vetoed pairs score 0 (a miss)
    fold = np.arange(len(y)) % args.folds
    oof = np.zeros(len(y))
    for k in range(args.folds):
        t0 = time.perf_counter()
        _, predict = fit(np.nonzero((fold != k) & keep)[0])
        rows_k = np.nonzero((fold == k) & keep)[0]
        oof[rows_k] = predict(rows_k)  # type: ignore[operator]
        print(f"fold {k}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.precision is not None:
        t = threshold_for(oof, y, args.precision)
        rule = (f"the lowest threshold at which the out-of-fold precision on the QQP train "
                f"half reaches {args.precision}")
    else:
        t = args.wrong_hit_cost / (1 + args.wrong_hit_cost)
        rule = f"a wrong hit costs {args.wrong_hit_cost:g} misses: P(same) >= {t:.4f}"
    prec, rec = recall_at(oof, y, t)
    order = np.argsort(-oof)
    tp = np.cumsum(y[order])
    prec_k, rec_k = tp / np.arange(1, len(y) + 1), tp / max(float(y.sum()), 1.0)
    f1_k = 2 * prec_k * rec_k / np.maximum(prec_k + rec_k, 1e-12)
    at90 = float(rec_k[prec_k >= 0.9].max()) if (prec_k >= 0.9).any() else 0.0
    if args.oof_out:
        np.save(args.oof_out, np.stack([oof, y]))
    sweep = {f"{u:.2f}": dict(zip(("precision", "recall"),
                                  (round(v, 4) for v in recall_at(oof, y, u)), strict=True))
             for u in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)}
    model, _ = fit(np.nonzero(keep)[0])
    report: dict[str, object] = {
        "fitted_on": f"QQP train half, by bench/fit_cache_verifier.py --model {args.model}: "
                     f"{len(y)} pairs ({int(y.sum())} duplicates), {int(keep.sum())} not "
                     f"vetoed; threshold from {args.folds}-fold out-of-fold scores",
        "features": names,
        "threshold": round(t, 4),
        "threshold_rule": rule,
        "out_of_fold_on_train": {"precision": round(prec, 4), "recall": round(rec, 4),
                                 "best_f1": round(float(f1_k.max()), 4),
                                 "recall_at_precision_0.90": round(at90, 4),
                                 "by_threshold": sweep},
        "vetoes_on_train": {k: {"duplicates_turned_away": d, "non_duplicates_stopped": n}
                            for k, (d, n) in info.items()},
    }
    if args.model == "trees":
        report["weights"] = [0.0] * nf  # unused: the trees decide
        report["trees"] = export_trees(model["trees"])
    elif args.model == "mlp":
        net = model
        report["weights"] = [0.0] * nf  # unused: the hidden layer decides
        report["hidden"] = {k: (rounded(v) if k != "b2" else round(float(v), 5))  # type: ignore[arg-type]
                            for k, v in net.items()}
    else:
        w = np.asarray(model["w"])
        report["weights"] = rounded(np.concatenate([w[: nf - 1], w[-1:]]))
        if not args.no_pair:
            report["pair_weights"] = rounded(w[nf - 1:-1])
        report["l2"] = args.l2
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items()
                      if k not in ("pair_weights", "hidden", "weights")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
