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

Each ``--margin`` is a value of ``SemanticIndex(select_margin=...)`` (0: the nearest entry
alone decides; m > 0: on a hit, the passing candidates within m cosine of the nearest
compete on wording); ``--agreement on`` (what ships): a miss when the one whose wording the
request shares most is worded otherwise than the nearest, ``off``: that one is judged; each
``--ambiguity`` a value of ``ambiguity_margin`` (a miss when another passing candidate that
near is worded otherwise). ``--evidence``
names how wording is compared: ``chars`` (what ships: character 4-grams, case kept),
``chars-nocase``, or ``words`` (the Jaccard overlap of content words, an earlier rule). The
figures per setting: right, wrong, misses, and the utility the threshold rule itself assumes
(a right hit saves one call, a wrong hit costs two: right - 2 x wrong). ``--gptcache FILE``
runs GPTCache's ``mock_data.json`` the same way (every origin stored, every paraphrase
looked up), to report, not to choose.

    python bench/cache_retrieval.py --margin 0 0.025 1 --agreement on off
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qqp_pairs import DEFAULT, pairs

from plugins.cache import semantic
from plugins.cache.decide import overlap, parse
from plugins.cache.evaluate import vectors
from plugins.cache.semantic import SemanticIndex, grams, shared_wording
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


class Evidence(SemanticIndex):
    """The production index with another measure of shared wording (bench only)."""

    def __init__(self, *args: object, evidence: str = "chars", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.kind = evidence

    def evidence(self, stored: str, request: Counter[str]) -> float:
        if self.kind == "chars":
            return super().evidence(stored, request)
        if self.kind == "chars-nocase":
            return shared_wording(grams(stored.lower()), self._lower)
        return overlap(parse(stored), self._query)

    def decide(self, g: Any, text: str, vec: np.ndarray, threshold: float | None) -> Any:
        self._lower, self._query = grams(text.lower()), parse(text)
        return super().decide(g, text, vec, threshold)


async def run(stored: list[str], queries: list[str], right: list[set[int]],
              vec: dict[str, np.ndarray], margins: list[float], ambiguity: list[float],
              evidence: list[str], candidates: int, agreement: list[str],
              ) -> list[dict[str, Any]]:
    index = Evidence(MiniLM.shared(), max_entries=len(stored) + 1, candidates=candidates)
    for i, t in enumerate(stored):
        index.add("g", str(i), t, vec[t])
    out: list[dict[str, Any]] = []
    for e, m, g, a in [(e, m, g, a) for e in evidence for m in margins for g in agreement
                       for a in ambiguity]:
        index.kind, index.select_margin, index.ambiguity_margin = e, m, a
        index.agreement = g == "on"
        r = w = 0
        t0 = time.perf_counter()
        for q, ok in zip(queries, right, strict=True):
            match = await index.lookup("g", q, vec[q])
            if match is not None and match.hit:
                if int(match.entry_id) in ok:
                    r += 1
                else:
                    w += 1
        out.append({"evidence": e, "margin": m, "agreement": g, "ambiguity": a, "right": r,
                    "wrong": w,
                    "misses": len(queries) - r - w, "right_minus_2_wrong": r - 2 * w,
                    "precision": round(r / max(r + w, 1), 4),
                    "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(out[-1]), file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT, help="similiar_qqp_full.json")
    p.add_argument("--gptcache", type=Path, help="GPTCache's mock_data.json instead (report only)")
    p.add_argument("--margin", type=float, nargs="+", default=[semantic.SELECT_MARGIN],
                   help="values of SemanticIndex(select_margin=...)")
    p.add_argument("--ambiguity", type=float, nargs="+", default=[0.0],
                   help="values of SemanticIndex(ambiguity_margin=...) (each with each --margin)")
    p.add_argument("--agreement", nargs="+", default=["on"], choices=["on", "off"])
    p.add_argument("--evidence", nargs="+", default=["chars"],
                   choices=["chars", "chars-nocase", "words"])
    p.add_argument("--candidates", type=int, default=semantic.CANDIDATES)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/switchyard-embeddings"))
    p.add_argument("--limit", type=int, help="the first N QQP train pairs only")
    args = p.parse_args()
    task = gptcache_task(args.gptcache, args.cache_dir) if args.gptcache else qqp_task(args.data, args.cache_dir, args.limit)
    stored, queries, _, _ = task
    out = {"data": "GPTCache mock_data.json" if args.gptcache else "QQP train half",
           "stored": len(stored), "queries": len(queries), "candidates": args.candidates,
           "threshold": SemanticIndex(MiniLM.shared()).threshold,
           "by_margin": asyncio.run(run(*task, args.margin, args.ambiguity, args.evidence,
                                         args.candidates, args.agreement))}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
