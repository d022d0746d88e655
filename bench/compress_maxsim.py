"""How the compressor's shortlist score was chosen: each shortlisted passage's whole cosine to
the question fused with its MaxSim (late interaction, ColBERT's score: every question token's
best cosine among the passage's output tokens, averaged; ``rank.maxsim``), and each embedded
sentence's score (its cosine, its MaxSim, or a mix: ``sentence_maxsim``), on the TRAIN half of
the NQ items only, with 5-fold cross-validation over the questions.

The vectors are the compressor's own (MiniLM's int8 export): pooled ones as in
bench/compress_fit.py (``--cache``), and the output tokens of every question and whole passage
and sentence text (``--tokens``, one forward pass each, float16), computed once. Each
``maxsim`` weight (0: the cosine alone, as before) and ``sentence_maxsim`` share (0: cosines,
as before) is run through the engine's own ``rank.shortlist``,
``rank.fuse`` and ``rank.select`` at the shipped ratio and scored as ``switchyard eval
compress`` scores. Printed: retention and top-1 (the gold passage first) for each, then the
5-fold figure (the weight chosen on four folds, scored on the fifth).

    python bench/nq_compress_items.py --split train --out /tmp/nq_train.jsonl
    python bench/compress_maxsim.py /tmp/nq_train.jsonl --cache /tmp/nq_train.int8.npz \\
        --tokens /tmp/nq_train.tokens.npz
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from compress_fit import Vectors, key, prepare

from plugins.compress import rank
from plugins.compress.answers import contains_answer
from plugins.compress.engine import DEFAULT_RATIO


def token_vectors(texts: list[str], path: Path | None) -> dict[str, np.ndarray]:
    """Every text's output tokens (int8 MiniLM, ``MiniLM.encode_tokens``), by ``key(text)``."""
    from plugins.compress.embedder import embedder

    table: dict[str, np.ndarray] = {}
    if path is not None and path.exists():
        with np.load(path) as f:
            table = {k: f[k] for k in f.files}
    todo = sorted({t for t in texts if key(t) not in table}, key=len)
    if todo:
        print(f"reading the output tokens of {len(todo)} texts", flush=True)
        model = embedder()
        for start in range(0, len(todo), 32):
            chunk = todo[start:start + 32]
            got = model.encode_tokens(chunk)
            if got is None:
                raise SystemExit("MiniLM runs in sentence-transformers here: no token vectors")
            for t, v in zip(chunk, got[1], strict=True):
                table[key(t)] = v.astype(np.float16)
        if path is not None:
            np.savez(path, **table)  # type: ignore[arg-type]
    return table


def kept(row: dict[str, Any], w: rank.Weights) -> tuple[bool, bool]:
    """The engine's ranking and selection on precomputed vectors: (gold answer kept, gold
    passage first)."""
    units, lex = row["units"], row["lex"]
    probe_cos = row["probe"][w.probe_words]
    probe = rank.probed(lex, w)
    ranked, short = rank.shortlist(lex, probe, [probe_cos[i] for i in probe], w)
    whole = {i: rank.whole_score(float(row["whole"][i]), float(row["late"][i]), w)
             for i in short}
    order, lead = rank.fuse(lex, ranked, {i: float(probe_cos[i]) for i in probe}, whole, w)
    bodies = row["lean"]
    sentence_cos = {i: [rank.sentence_score(c, m, w) for c, m in
                        zip(row["sentence"][i], row["sentence_late"][i], strict=True)]
                    for i in order[: w.sentences]} if short else {}
    sel = rank.select(row["q"], units, bodies, order, row["budget"], w, lead, sentence_cos)
    text = " ".join(units[i].header + "".join(bodies[i] if js is None else
                                              [bodies[i][j] for j in js]) for i, js in sel)
    gold = [i for i, u in enumerate(units) if contains_answer(f"{u.title} {u.text}", row["answers"])]
    return contains_answer(text, row["answers"]), bool(order) and order[0] in gold


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="TRAIN items (bench/nq_compress_items.py --split train)")
    p.add_argument("--cache", type=Path, help="the pooled int8 vectors, kept between runs (.npz)")
    p.add_argument("--tokens", type=Path, help="the output token vectors, kept (.npz)")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO)
    p.add_argument("--folds", type=int, default=5)
    args = p.parse_args()
    from plugins.embeddings import minilm_path
    from plugins.minilm import MiniLM
    from plugins.minilm_onnx import OnnxMiniLM

    MiniLM.shared()._model = OnnxMiniLM(minilm_path(), threads=1, int8=True)  # the compressor's
    base = rank.Weights()
    rows = prepare(args.data, [base.probe_words], Vectors(args.cache), args.ratio)
    texts = [r["q"] for r in rows] + [u.embed_text() for r in rows for u in r["units"]]
    texts += [t for r in rows for u in r["units"] for t in u.sentence_texts()]
    tokens = token_vectors(texts, args.tokens)
    for r in rows:
        q = tokens[key(r["q"])].astype(np.float32)
        r["late"] = np.array([rank.maxsim(q, tokens[key(u.embed_text())].astype(np.float32))
                              for u in r["units"]])
        r["sentence_late"] = [[rank.maxsim(q, tokens[key(t)].astype(np.float32))
                               for t in u.sentence_texts()] for u in r["units"]]
    grid = list(itertools.product((0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 0.5, 1.0)))
    results = {}
    for m, share in grid:
        w = replace(base, maxsim=m, sentence_maxsim=share)
        results[(m, share)] = np.array([kept(r, w) for r in rows], dtype=float)
        ret, top = results[(m, share)].mean(axis=0)
        print(f"maxsim {m:<4} sentence_maxsim {share:<3}: retention {ret:.4f}, top-1 {top:.4f}",
              flush=True)
    fold = np.arange(len(rows)) % args.folds
    cv = []
    for k in range(args.folds):
        # ties go to the smaller weights
        best = max(results, key=lambda g: (results[g][fold != k, 0].mean(), -g[0], -g[1]))
        cv.append(float(results[best][fold == k, 0].mean()))
        print(f"fold {k}: chosen on the rest maxsim {best[0]}, sentence_maxsim {best[1]} -> "
              f"held out {cv[-1]:.4f}")
    before = results[(0.0, 0.0)][:, 0].mean()
    print(f"{args.folds}-fold CV retention {np.mean(cv):.4f}; cosines alone (both 0, as before) "
          f"{before:.4f}")
    shipped = (base.maxsim, base.sentence_maxsim)
    if shipped in results:
        print(f"shipped maxsim {shipped[0]}, sentence_maxsim {shipped[1]}: "
              f"{results[shipped][:, 0].mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
