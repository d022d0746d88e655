"""Semantic cache lookup latency with 100,000 entries, embedding included.

Fills a ``SemanticIndex`` with real prompts (QQP questions). Their MiniLM vectors are the
ones ``bench/fit_cache_verifier.py`` computed and kept in ``--cache-dir``, or with
``--embed N`` the first N computed here (about 3 minutes per 40,000 on one free core); the
rest are those vectors with Gaussian noise added (cosine about 0.9 to their source) and
normalised, so the graph holds clusters of near neighbours as a real cache does. Then it
times ``await index.lookup(group, text)`` for prompts
that are not stored: the embedding of the new prompt, the nearest entries of its group, the
decision. Three layouts: every entry in one group (the HNSW graph), the same entries spread
over 1,000 groups (a NumPy product per group), and, for comparison, one group searched by
NumPy alone (no graph). Prints one JSON object; run it alone, with nothing else busy.

    nice -n 10 python bench/cache_lookup.py --entries 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_cache_verifier import embed_cached
from qqp_pairs import DEFAULT, pairs

from plugins.cache import semantic
from plugins.cache.semantic import SemanticIndex
from plugins.minilm import MiniLM


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3)


async def timed(index: SemanticIndex, groups: list[str], queries: list[str]) -> dict[str, float]:
    """Per query: the whole lookup (embedding included), the embedding alone (as the request
    path gets it: batched, in the model's worker thread), the forward pass alone (the same
    ``encode`` called on this thread: what the embedding costs without the hop to the worker
    thread and back, measured here only), and the search and decision alone (the lookup
    given the vector)."""
    total, embed, forward, search = [], [], [], []
    for i, q in enumerate(queries):
        g = groups[i % len(groups)]
        t0 = time.perf_counter()
        await index.lookup(g, q)
        t1 = time.perf_counter()
        vec = await index.vector(q)
        t2 = time.perf_counter()
        await index.lookup(g, q, vec)
        t3 = time.perf_counter()
        index.embedder.encode([q])
        t4 = time.perf_counter()
        total.append((t1 - t0) * 1e3)
        embed.append((t2 - t1) * 1e3)
        search.append((t3 - t2) * 1e3)
        forward.append((t4 - t3) * 1e3)
    return {"lookup_ms_p50": pct(total, 50), "lookup_ms_p90": pct(total, 90),
            "lookup_ms_min": round(min(total), 3), "embed_ms_p50": pct(embed, 50),
            "embed_ms_min": round(min(embed), 3), "forward_pass_ms_p50": pct(forward, 50),
            "forward_pass_ms_min": round(min(forward), 3),
            "search_and_decide_ms_p50": pct(search, 50),
            "search_and_decide_ms_p90": pct(search, 90)}


def noisy_fill(texts: list[str], real: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not real:
        raise SystemExit("no MiniLM vectors cached: run bench/fit_cache_verifier.py or --embed")
    rng = np.random.default_rng(0)
    sources = np.stack(list(real.values()))
    out = {}
    for t in texts:
        if t in real:
            out[t] = real[t]
            continue
        v = sources[rng.integers(len(sources))] + rng.normal(0, 0.025, sources.shape[1])
        out[t] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def fill(model: MiniLM, texts: list[str], vecs: dict[str, np.ndarray], n_groups: int,
         ann_min: int) -> tuple[SemanticIndex, float]:
    semantic.ANN_MIN = ann_min
    index = SemanticIndex(model, max_entries=len(texts))
    t0 = time.perf_counter()
    for i, t in enumerate(texts):
        index.add(f"g{i % n_groups}", f"e{i}", t, vecs[t])
    return index, time.perf_counter() - t0


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/switchyard-embeddings"))
    p.add_argument("--embed", type=int, default=0, help="embed this many stored texts here")
    args = p.parse_args()
    rows = list(pairs(DEFAULT, "all"))
    texts = list(dict.fromkeys(t for r in rows for t in (str(r["a"]), str(r["b"]))))
    stored, queries = texts[: args.entries], texts[-args.queries:]
    if len(stored) + len(queries) > len(texts):
        raise SystemExit(f"only {len(texts)} distinct QQP texts")
    model = MiniLM.shared()
    real = embed_cached(stored[: args.embed], args.cache_dir) if args.embed else {}
    real.update(embed_cached([], args.cache_dir, everything=True))
    vecs = noisy_fill(stored, real)
    await model.embed("warm up")
    out: dict[str, object] = {"entries": len(stored), "queries": len(queries),
                              "real_vectors": sum(1 for t in stored if t in real)}
    for name, n_groups, ann_min in (("one_group_hnsw", 1, semantic.ANN_MIN),
                                    ("1000_groups_numpy", 1000, semantic.ANN_MIN),
                                    ("one_group_numpy_only", 1, 10**9)):
        index, build_s = fill(model, stored, vecs, n_groups, ann_min)
        groups = [f"g{i}" for i in range(n_groups)]
        out[name] = {"build_s": round(build_s, 1), **await timed(index, groups, queries)}
        print(name, out[name], file=sys.stderr)
        del index
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
