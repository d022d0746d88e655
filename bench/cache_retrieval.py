"""The semantic tier as a retrieval problem: with many entries stored, which one serves.

``switchyard eval cache`` judges one stored prompt against one request. A real cache holds
many, some of them near-identical, and the decision first picks the entry to judge. This
bench measures that choice on the QQP TRAIN half (the verifier's own half; nothing here
reads a test half): every distinct ``a`` of the train pairs is stored as its own entry in
one group of the production ``SemanticIndex``; every ``b`` is looked up with its MiniLM
vector. A hit is right when the entry served is the request's own question or labelled a
duplicate of it (QQP's duplicate pairs, closed transitively); wrong otherwise; a miss is
a miss. QQP leaves most duplicate questions unlabelled, so part of the "wrong" hits are
another stored question asking the same thing: the same thing GPTCache's benchmark counts
wrong, which is why the rules for picking among near-identical entries are chosen here.

Each ``--margin`` is a value of ``semantic.TIE_MARGIN`` (0: judge the nearest entry alone;
m > 0: among the candidates within m cosine of the nearest, judge the one sharing the most
content words with the request). The figures per margin: right, wrong, misses, and the
utility the threshold rule itself assumes (a right hit saves one call, a wrong hit costs
two: right - 2 x wrong). ``--gptcache FILE`` runs GPTCache's ``mock_data.json`` the same
way (every origin stored, every paraphrase looked up), to report, not to choose.

    python bench/cache_retrieval.py --margin 0 0.02 0.05 0.1 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qqp_pairs import DEFAULT, pairs

from plugins.cache import semantic
from plugins.cache.evaluate import vectors
from plugins.cache.semantic import SemanticIndex
from plugins.minilm import MiniLM


def qqp_task(path: Path, cache_dir: Path, limit: int | None = None
             ) -> tuple[list[str], list[str], list[set[int]], dict[str, np.ndarray]]:
    """(stored, queries, right entries per query, vectors) from the QQP train half (its
    first ``limit`` pairs)."""
    rows = list(pairs(path, "train"))[:limit]
    vec = vectors([t for r in rows for t in (str(r["a"]), str(r["b"]))], cache_dir)
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for r in rows:
        if r["duplicate"]:
            parent[root(str(r["a"]))] = root(str(r["b"]))
    stored = list(dict.fromkeys(str(r["a"]) for r in rows))
    by_root: dict[str, set[int]] = {}
    for i, t in enumerate(stored):
        by_root.setdefault(root(t), set()).add(i)
    queries = [str(r["b"]) for r in rows]
    right = [by_root.get(root(q), set()) for q in queries]
    return stored, queries, right, vec


def gptcache_task(path: Path, cache_dir: Path) -> tuple[list[str], list[str], list[set[int]],
                                                        dict[str, np.ndarray]]:
    rows = json.loads(path.read_text())
    stored = [str(r["origin"]) for r in rows]
    queries = [str(r["similar"]) for r in rows]
    where: dict[str, set[int]] = {}
    for i, o in enumerate(stored):
        where.setdefault(o, set()).add(i)
    vec = vectors(sorted(set(stored) | set(queries)), cache_dir)
    return stored, queries, [where[o] for o in stored], vec


async def run(stored: list[str], queries: list[str], right: list[set[int]],
              vec: dict[str, np.ndarray], margins: list[float],
              ambiguity: list[float]) -> list[dict[str, float]]:
    index = SemanticIndex(MiniLM.shared(), max_entries=len(stored) + 1)
    for i, t in enumerate(stored):
        index.add("g", str(i), t, vec[t])
    out = []
    for m, a in [(m, a) for m in margins for a in ambiguity]:
        semantic.TIE_MARGIN = m
        semantic.AMBIGUITY_MARGIN = a
        r = w = 0
        t0 = time.perf_counter()
        for q, ok in zip(queries, right, strict=True):
            match = await index.lookup("g", q, vec[q])
            if match is not None and match.hit:
                if int(match.entry_id) in ok:
                    r += 1
                else:
                    w += 1
        out.append({"margin": m, "ambiguity": a, "right": r, "wrong": w, "misses": len(queries) - r - w,
                    "right_minus_2_wrong": r - 2 * w, "precision": round(r / max(r + w, 1), 4),
                    "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(out[-1]), file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT, help="similiar_qqp_full.json")
    p.add_argument("--gptcache", type=Path, help="GPTCache's mock_data.json instead (report only)")
    p.add_argument("--margin", type=float, nargs="+", default=[0.0])
    p.add_argument("--ambiguity", type=float, nargs="+", default=[0.0],
                   help="values of semantic.AMBIGUITY_MARGIN (each with each --margin)")
    p.add_argument("--candidates", type=int, default=semantic.CANDIDATES)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/switchyard-embeddings"))
    p.add_argument("--limit", type=int, help="the first N QQP train pairs only")
    args = p.parse_args()
    semantic.CANDIDATES = args.candidates
    task = gptcache_task(args.gptcache, args.cache_dir) if args.gptcache else qqp_task(args.data, args.cache_dir, args.limit)
    stored, queries, _, _ = task
    out = {"data": "GPTCache mock_data.json" if args.gptcache else "QQP train half",
           "stored": len(stored), "queries": len(queries), "candidates": args.candidates,
           "threshold": SemanticIndex(MiniLM.shared()).threshold,
           "by_margin": asyncio.run(run(*task, args.margin, args.ambiguity))}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
