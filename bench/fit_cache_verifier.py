"""Fit the semantic cache's verifier on the QQP TRAIN half and write
plugins/cache/verifier.json (its weights and the shipped threshold).

The verifier is a logistic regression over ``plugins.cache.decide.features`` (the cosine of
the two MiniLM embeddings and cheap word features), fitted by Newton's method with a small
L2 penalty on the pairs no veto rejects (a vetoed pair is a miss whatever the verifier says).
With ``--pair-features`` it also fits weights over the two embeddings' element-wise product
and absolute difference (768 more numbers). It fits on the first three quarters of the
train half and reports precision and recall on the last quarter. The shipped threshold is
a decision rule, not a number tuned on any evaluation set: with a wrong hit costing
``--wrong-hit-cost`` misses (2 by default: wrong hits are worse), serve from cache when
P(same question) >= cost / (1 + cost). It also prints what each veto costs on train: the
duplicates it turns away and the non-duplicates it stops.

    nice -n 10 python bench/fit_cache_verifier.py --pair-features   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qqp_pairs import DEFAULT, pairs

from plugins.cache.decide import (
    FEATURES,
    VERIFIER_FILE,
    features,
    pair_features,
    parse,
    vetoes,
)
from plugins.minilm import MiniLM


def embed_cached(texts: list[str], cache_dir: Path,
                 everything: bool = False) -> dict[str, np.ndarray]:
    """MiniLM vectors of ``texts`` (``everything``: of all texts cached). Vectors computed
    once are kept in ``cache_dir`` (chunks of ``minilm-KEY.npy`` with their texts in
    ``minilm-KEY.json``); only new texts are embedded."""
    known: dict[str, np.ndarray] = {}
    for side in sorted(cache_dir.glob("minilm-*.json")):
        chunk = np.load(side.with_suffix(".npy"))
        known.update(zip(json.loads(side.read_text()), chunk, strict=True))
    missing = sorted(set(texts) - known.keys())
    if missing:
        t0 = time.perf_counter()
        vecs = MiniLM.shared().encode(missing)
        key = hashlib.sha256("\n".join(missing).encode()).hexdigest()[:16]
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache_dir / f"minilm-{key}.npy", vecs)
        (cache_dir / f"minilm-{key}.json").write_text(json.dumps(missing))
        known.update(zip(missing, vecs, strict=True))
        print(f"embedded {len(missing)} texts in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    return dict(known) if everything else {t: known[t] for t in set(texts)}


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


def design(rows: list[dict[str, object]], vec: dict[str, np.ndarray],
           pair: bool) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Features of the pairs no veto rejects, their labels, and what each veto caught."""
    xs, ys = [], []
    vetoed = {"numbers": [0, 0], "negation": [0, 0], "opposite": [0, 0], "direction": [0, 0]}
    for r in rows:
        a, b, dup = str(r["a"]), str(r["b"]), bool(r["duplicate"])
        pa, pb = parse(a), parse(b)
        v = vetoes(pa, pb)
        for name in v:
            vetoed[name][0 if dup else 1] += 1
        if v:
            continue
        x = features(pa, pb, float(vec[a] @ vec[b]))
        xs.append(np.concatenate([x, pair_features(vec[a], vec[b])]) if pair else x)
        ys.append(float(dup))
    return np.array(xs), np.array(ys), vetoed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT)
    p.add_argument("--wrong-hit-cost", type=float, default=2.0,
                   help="a wrong hit costs this many misses: threshold = cost / (1 + cost)")
    p.add_argument("--precision", type=float,
                   help="instead: the lowest threshold reaching this precision on held-back "
                        "train pairs")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/switchyard-embeddings"))
    p.add_argument("--out", type=Path, default=VERIFIER_FILE)
    p.add_argument("--limit", type=int, help="use the first N train pairs only")
    p.add_argument("--pair-features", action="store_true",
                   help="also fit weights over the embeddings' product and difference")
    p.add_argument("--l2", type=float, default=1e-3)
    args = p.parse_args()
    train = list(pairs(args.data, "train"))[: args.limit]
    vec = embed_cached([t for r in train for t in (str(r["a"]), str(r["b"]))], args.cache_dir)
    cut = len(train) * 3 // 4  # fit on the first 3/4 of train, report on the rest
    x, y, vetoed = design(train[:cut], vec, args.pair_features)
    xv, yv, _ = design(train[cut:], vec, args.pair_features)
    # the bias is FEATURES' last column; keep it last for fit_logistic
    nf = len(FEATURES)
    order = [*range(nf - 1), *range(nf, x.shape[1]), nf - 1]
    w_ordered = fit_logistic(x[:, order], y, args.l2)
    w = np.empty_like(w_ordered)
    w[order] = w_ordered
    val = 1 / (1 + np.exp(-np.clip(xv @ w, -40, 40)))
    if args.precision is not None:
        t = threshold_for(val, yv, args.precision)
        rule = f"precision {args.precision} on the held-back train pairs"
    else:
        t = args.wrong_hit_cost / (1 + args.wrong_hit_cost)
        rule = f"a wrong hit costs {args.wrong_hit_cost:g} misses: P(same) >= {t:.4f}"
    prec, rec = recall_at(val, yv, t)
    sweep = {f"{u:.2f}": dict(zip(("precision", "recall_of_not_vetoed"),
                                  (round(v, 4) for v in recall_at(val, yv, u)), strict=True))
             for u in (0.5, 0.6, 0.7, 0.8, 0.9)}
    n_dup = sum(1 for r in train if r["duplicate"])
    report: dict[str, object] = {
        "fitted_on": f"QQP train half, by bench/fit_cache_verifier.py: {cut} pairs fitted "
                     f"({len(y)} not vetoed), the other {len(train) - cut} held back to report "
                     f"on ({len(train)} pairs, {n_dup} duplicates in all)",
        "features": list(FEATURES),
        "weights": [round(float(v), 5) for v in w[:nf]],
        "threshold": round(t, 4),
        "threshold_rule": rule,
        "on_held_back_train": {"precision": round(prec, 4), "recall_of_not_vetoed": round(rec, 4),
                               "by_threshold": sweep},
        "l2": args.l2,
        "vetoes_on_fitted_pairs": {k: {"duplicates_turned_away": d, "non_duplicates_stopped": n}
                            for k, (d, n) in vetoed.items()},
    }
    if args.pair_features:
        report["pair_weights"] = [round(float(v), 5) for v in w[nf:]]
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "pair_weights"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
