"""Development bench for the compressor's passage ranking, on the TRAIN half of the NQ items
only: which signals, fused with the whole passage's MiniLM cosine, put the gold passage first
more often, and what that does to retention at the shipped ratio.

Vectors are computed once (``--cache``, as bench/compress_fit.py keeps them), and so are the
"late" sentence vectors: one forward pass over a unit's whole ``embed_text``, its output
token vectors mean-pooled over each sentence's tokens (late chunking: every sentence's vector
read in its passage's context, at no extra forward pass), in ``--late-cache``.

    python bench/compress_rerank.py /tmp/nq_train.jsonl --cache /tmp/nq_train.vectors.npz \\
        --late-cache /tmp/nq_train.late.npz
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from compress_fit import Vectors, key, prepare

from plugins.compress import rank
from plugins.compress.answers import contains_answer


def late_vectors(units: list[rank.Unit], table: dict[str, np.ndarray], path: Path | None,
                 batch: int = 16) -> None:
    """Per unit (by its embed_text's key): an array (sentences, dim) of its sentences' vectors
    pooled from one forward pass over the whole unit (title tokens not pooled)."""
    from plugins.minilm import MiniLM

    model = MiniLM.shared()._load()
    todo = {}
    for u in units:
        k = key(u.embed_text())
        if k not in table:
            todo[k] = u
    if not todo:
        return
    print(f"late-chunking {len(todo)} units", flush=True)
    items = sorted(todo.items(), key=lambda kv: len(kv[1].embed_text()))
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        texts = [u.embed_text() for _, u in chunk]
        enc = model.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        out = np.asarray(model.session.run(None, feed)[0], dtype=np.float32)
        for (k, u), e, tok in zip(chunk, enc, out, strict=True):
            table[k] = spans_pooled(u, e.offsets, e.attention_mask, tok)
    if path is not None:
        np.savez(path, **table)  # type: ignore[arg-type]


def spans_pooled(u: rank.Unit, offsets: list[tuple[int, int]], mask: list[int],
                 tok: np.ndarray) -> np.ndarray:
    start = len(u.title) + 1 if u.title else 0
    sents = rank.sentences(u.text)
    bounds = []
    pos = start
    for s in sents:
        bounds.append((pos, pos + len(s)))
        pos += len(s)
    vecs = np.zeros((len(sents), tok.shape[1]), dtype=np.float32)
    for j, (a, b) in enumerate(bounds):
        sel = [t for t, (x, y) in enumerate(offsets) if mask[t] and y > x and x >= a and y <= b]
        if not sel:  # truncated away: the whole unit's mean
            sel = [t for t, m in enumerate(mask) if m]
        v = tok[sel].mean(axis=0)
        vecs[j] = v / max(float(np.linalg.norm(v)), 1e-12)
    return vecs


def gold_units(row: dict[str, Any]) -> list[int]:
    return [i for i, u in enumerate(row["units"])
            if contains_answer(f"{u.title} {u.text}", row["answers"])]


def kept_text(row: dict[str, Any], order: list[int], lead: float, w: rank.Weights,
              sentence_cos: dict[int, list[float]]) -> bool:
    units = row["units"]
    bodies = row["lean"]
    sel = rank.select(row["q"], units, bodies, order, row["budget"], w, lead, sentence_cos)
    text = " ".join(units[i].header + "".join(bodies[i] if js is None else
                                              [bodies[i][j] for j in js]) for i, js in sel)
    return contains_answer(text, row["answers"])


FEATURES = ("whole", "probe", "bm25", "title", "late_max", "sent_max", "kind")


def features(row: dict[str, Any], late: dict[str, np.ndarray], qvec: np.ndarray,
             w: rank.Weights) -> dict[str, Any]:
    units = row["units"]
    n = len(units)
    q = rank.terms(row["q"])
    bm = rank._scaled(rank.bm25(q, [rank.terms(f"{u.title} {u.text}") for u in units]))
    qset = set(q)
    title = np.array([len(qset & set(rank.terms(u.title))) / max(1, len(qset)) for u in units])
    kind = rank.asks_for(row["q"])
    late_cos = [late[key(u.embed_text())] @ qvec for u in units]
    return {"whole": row["whole"], "probe": row["probe"][w.probe_words], "bm25": bm,
            "title": title,
            "late_max": np.array([float(c.max()) for c in late_cos]),
            "sent_max": np.array([max(s) for s in row["sentence"]]),
            "kind": np.array([float(rank.fits(kind, u.text)) for u in units]) if kind
            else np.zeros(n), "late": late_cos}


def evaluate(rows: list[dict[str, Any]], feats: list[dict[str, Any]], coef: dict[str, float],
             w: rank.Weights, sentences: str, every: bool = False) -> tuple[float, float]:
    """Top-1 gold and retention: the engine's probe and shortlist as shipped, then the
    shortlist ordered by sum(coef x feature) (``every``: all units, as if all were embedded),
    the cut unit's sentences by ``sentences`` ("indep": their own embedding, "late": late
    chunking, "bm25": none)."""
    top1 = ret = 0
    for row, f in zip(rows, feats, strict=True):
        lex = row["lex"]
        probe_cos = f["probe"]
        probe = rank.probed(lex, w)
        ranked, short = rank.shortlist(lex, probe, [probe_cos[i] for i in probe], w)
        if every:
            short = list(range(len(row["units"])))
        score = {i: sum(c * float(f[k][i]) for k, c in coef.items()) for i in short}
        first = sorted(score, key=lambda i: -score[i])
        lead = score[first[0]] - score[first[1]] if len(first) > 1 else math.inf
        rest = [i for i in ranked if i not in score]
        order = first + rest + [i for i in range(len(row["units"])) if i not in first + rest]
        scos: dict[int, list[float]] = {}
        if short and w.sentences:
            for i in order[: w.sentences]:
                if sentences == "indep":
                    scos[i] = list(row["sentence"][i])
                elif sentences == "late":
                    scos[i] = [float(x) for x in f["late"][i]]
        top1 += order[0] in f["gold"]
        ret += kept_text(row, order, lead, w, scos)
    return top1 / len(rows), ret / len(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="TRAIN items")
    p.add_argument("--cache", type=Path)
    p.add_argument("--late-cache", type=Path)
    p.add_argument("--limit", type=int)
    args = p.parse_args()
    w = rank.Weights()
    vec = Vectors(args.cache)
    rows = prepare(args.data, [w.probe_words], vec, 15.0)
    if args.limit:
        rows = rows[: args.limit]
    table: dict[str, np.ndarray] = {}
    if args.late_cache and args.late_cache.exists():
        with np.load(args.late_cache) as z:
            table = {k: z[k] for k in z.files}
    late_vectors([u for r in rows for u in r["units"]], table, args.late_cache)
    feats = []
    for row in rows:
        feat = features(row, table, vec.table[key(row["q"])], w)
        feat["gold"] = set(gold_units(row))
        feats.append(feat)
    print(f"{len(rows)} items; gold passage present in {np.mean([bool(x['gold']) for x in feats]):.4f}")
    shipped = {"whole": 1.0}
    for s in ("indep", "late", "bm25"):
        top, ret = evaluate(rows, feats, shipped, w, s)
        print(f"shipped order, sentences {s}: top-1 / retention {top:.4f} / {ret:.4f}")
    top, ret = evaluate(rows, feats, shipped, replace(w, sentences=0), "bm25")
    print(f"sentences 0 (no sentence pass): {top:.4f} / {ret:.4f}")
    for k in ("late_max", "sent_max", "bm25", "title", "kind", "probe"):
        for c in (0.1, 0.25, 0.5):
            top, ret = evaluate(rows, feats, {"whole": 1.0, k: c}, w, "late")
            print(f"whole + {c} x {k}: late sentences {top:.4f} / {ret:.4f}", flush=True)
    grid = {"late_max": (0, 0.25, 0.5), "bm25": (0, 0.05, 0.1), "title": (0, 0.05, 0.1),
            "kind": (0, 0.03, 0.06)}
    folds = 5
    idx = np.arange(len(rows)) % folds
    combos = [dict(zip(grid, v, strict=True)) for v in itertools.product(*grid.values())]
    results = {}
    for n, combo in enumerate(combos):
        coef = {"whole": 1.0, **{k: v for k, v in combo.items() if v}}
        per = []
        for row, f in zip(rows, feats, strict=True):
            per.append(evaluate([row], [f], coef, w, "late")[1])
        results[n] = np.array(per)
    cv = []
    for fold in range(folds):
        best = max(results, key=lambda n: results[n][idx != fold].mean())
        cv.append(results[best][idx == fold].mean())
        print(f"fold {fold}: best on the rest {combos[best]} -> held out {cv[-1]:.4f}")
    best = max(results, key=lambda n: results[n].mean())
    print(f"5-fold CV retention {statistics.fmean(cv):.4f}; best on all train {combos[best]} "
          f"{results[best].mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
