"""How the compressor's ranking weights were chosen: on the TRAIN half of the NQ items only.

Every unit's MiniLM vectors (its probe, ``Unit.probe_text``, at each ``--probe-words``, its
whole ``embed_text`` and its ``sentence_texts``) are computed once (kept in ``--cache``, a text -> vector table), then
each combination of the weights below is run through the engine's own ``rank.fuse`` and
``rank.select`` (with ``rank.lean`` or without) at the shipped ratio, and scored as
``switchyard eval compress`` scores: does the kept text still hold a gold answer. Printed:
the best combinations, with the MiniLM tokens each costs per item (probes + shortlist, p50).
It ranks by pooled cosines alone (the engine with ``maxsim`` and ``sentence_maxsim`` at 0):
the MaxSim on top of these weights is chosen by bench/compress_maxsim.py.

    python bench/nq_compress_items.py --split train --out /tmp/nq_train.jsonl
    python bench/compress_fit.py /tmp/nq_train.jsonl --cache /tmp/nq_train.vectors.npz
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from plugins.compress import rank
from plugins.compress.answers import contains_answer
from plugins.compress.engine import DEFAULT_RATIO, count_words, eval_messages
from plugins.compress.units import split_content

GRID = {"shortlist": (8,), "confident": (0.3, 0.35), "lexical": (0.0,),
        "hedge_lead": (0.04, 0.06, 0.08), "hedge_share": (0.7, 0.8), "sentences": (0, 2, 3)}


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Vectors:
    """MiniLM vectors by text, computed once and kept in an .npz file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.table: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            with np.load(path) as f:
                self.table = {k: f[k] for k in f.files}

    def fill(self, texts: list[str]) -> None:
        from plugins.minilm import MiniLM

        todo = sorted({t for t in texts if key(t) not in self.table})
        if todo:
            print(f"embedding {len(todo)} texts", flush=True)
            for k, v in zip(todo, MiniLM.shared().encode(todo), strict=True):
                self.table[key(k)] = v
            if self.path is not None:
                np.savez(self.path, **self.table)  # type: ignore[arg-type]

    def cos(self, a: str, b: str) -> float:
        return float(self.table[key(a)] @ self.table[key(b)])


def prepare(path: Path, probe_words: list[int], vectors: Vectors,
            ratio: float) -> list[dict[str, Any]]:
    rows = []
    for line in path.open():
        item = json.loads(line)
        segs = [s for s in split_content(item["context"], paragraphs_are_units=False) if s.unit]
        units = [rank.Unit(s.text, s.header, s.title) for s in segs]
        before = count_words(eval_messages(item["question"], item["context"]))
        unit_words = sum(rank.words(u.header) + rank.words(u.text) for u in units)
        budget = max(24, math.ceil(before / ratio) - (before - unit_words))
        rows.append({"q": item["question"], "answers": item["answers"], "units": units,
                     "budget": budget, "lex": rank.lexical(item["question"], units, rank.Weights()),
                     "plain": [rank.sentences(u.text) for u in units]})
    texts = [r["q"] for r in rows] + [u.embed_text() for r in rows for u in r["units"]]
    texts += [u.probe_text(n) for n in probe_words for r in rows for u in r["units"]]
    texts += [t for r in rows for u in r["units"] for t in u.sentence_texts()]
    vectors.fill(texts)
    for r in rows:
        r["lean"] = [[rank.lean(x) for x in b] for b in r["plain"]]
        r["whole"] = np.array([vectors.cos(r["q"], u.embed_text()) for u in r["units"]])
        r["probe"] = {n: np.array([vectors.cos(r["q"], u.probe_text(n)) for u in r["units"]])
                      for n in probe_words}
        r["sentence"] = [[vectors.cos(r["q"], t) for t in u.sentence_texts()] for u in r["units"]]
    return rows


def kept(row: dict[str, Any], w: rank.Weights, lean: bool) -> bool:
    """The engine's ranking and selection (``Compressor._cosines`` and ``_apply``) on
    precomputed cosines: does the kept text hold a gold answer?"""
    units, lex = row["units"], row["lex"]
    probe_cos = row["probe"][w.probe_words]
    probe = rank.probed(lex, w)
    ranked, short = rank.shortlist(lex, probe, [probe_cos[i] for i in probe], w)
    whole = {i: float(row["whole"][i]) for i in short}
    order, lead = rank.fuse(lex, ranked, {i: float(probe_cos[i]) for i in probe}, whole, w)
    bodies = row["lean" if lean else "plain"]
    sentence_cos = {i: row["sentence"][i] for i in order[: w.sentences]} if short else {}
    sel = rank.select(row["q"], units, bodies, order, row["budget"], w, lead, sentence_cos)
    text = " ".join(units[i].header + "".join(bodies[i] if js is None else
                                              [bodies[i][j] for j in js]) for i, js in sel)
    return contains_answer(text, row["answers"])


def tokens(rows: list[dict[str, Any]], w: rank.Weights) -> tuple[float, float]:
    """MiniLM tokens per item (p50, mean over 200 items): the probes in one padded batch, then,
    where the probes were not clear enough, the shortlist's whole units in another and the
    first units' sentences in a third."""
    from plugins.minilm import MiniLM

    tok = MiniLM.shared()._load().tokenizer  # pads a batch to its longest text, as encode does

    def batch(texts: list[str]) -> int:
        return len(texts) * max(len(e.ids) for e in tok.encode_batch(texts)) if texts else 0

    per = []
    for row in rows[:200]:
        units, lex = row["units"], row["lex"]
        probe = rank.probed(lex, w)
        probe_cos = row["probe"][w.probe_words]
        ranked, short = rank.shortlist(lex, probe, [probe_cos[i] for i in probe], w)
        sents: list[str] = []
        if short and w.sentences:
            whole = {i: float(row["whole"][i]) for i in short}
            order, _ = rank.fuse(lex, ranked, {i: float(probe_cos[i]) for i in probe}, whole, w)
            sents = [t for i in order[: w.sentences] for t in units[i].sentence_texts()]
        per.append(batch([row["q"], *(units[i].probe_text(w.probe_words) for i in probe)])
                   + batch([units[i].embed_text() for i in short]) + batch(sents))
    return statistics.median(per), statistics.mean(per)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="TRAIN items (bench/nq_compress_items.py --split train)")
    p.add_argument("--cache", type=Path, help="the MiniLM vectors, kept between runs (.npz)")
    p.add_argument("--probe-words", type=int, nargs="+", default=[20, 24, 28])
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--int8", action="store_true", help="MiniLM's int8 export (plugins.minilm_onnx)")
    args = p.parse_args()
    if args.int8:
        from plugins.embeddings import minilm_path
        from plugins.minilm import MiniLM
        from plugins.minilm_onnx import OnnxMiniLM

        MiniLM.shared()._model = OnnxMiniLM(minilm_path(), threads=1, int8=True)
    base = rank.Weights()
    rows = prepare(args.data, sorted({base.probe_words, *args.probe_words}), Vectors(args.cache),
                   args.ratio)
    print(f"{len(rows)} items; shipped weights: lean {np.mean([kept(r, base, True) for r in rows]):.4f}, "
          f"plain {np.mean([kept(r, base, False) for r in rows]):.4f}")
    results = []
    for n in args.probe_words:
        for values in itertools.product(*GRID.values()):
            w = replace(base, probe_words=n, **dict(zip(GRID, values, strict=True)))  # type: ignore[arg-type]
            results.append((float(np.mean([kept(r, w, True) for r in rows])), w))
    results.sort(key=lambda x: -x[0])
    for score, w in results[: args.top]:
        print(f"{score:.4f}  " + " ".join(f"{k}={getattr(w, k)}" for k in ("probe_words", *GRID))
              + "  MiniLM tokens per item p50 {:.0f}, mean {:.0f}".format(*tokens(rows, w)))
    whole = replace(base, shortlist=len(rows[0]["units"]), confident=math.inf)
    print(f"every unit embedded whole (the cost the time goal rules out): lean "
          f"{np.mean([kept(r, whole, True) for r in rows]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
