"""MiniLM forward pass: sentence-transformers/torch against ONNX Runtime, in one sitting.

Loads both paths of ``plugins.minilm.MiniLM`` (one thread each, as the cache uses them),
checks they agree (cosine per row over the held-out prompts), then times them alternating,
round by round, on one short sentence and on a batch of 8, so both see the same machine load.
Prints one JSON object with p50/p90 per path and the torch/ONNX ratio.

    nice -n 0 python bench/embed_speed.py --rounds 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.minilm import MiniLM

HELDOUT = Path(__file__).resolve().parent / "data" / "cache_heldout.jsonl"


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    texts = [str(r[k]) for r in rows for k in ("a", "b")]
    models = {"torch": MiniLM(threads=args.threads, backend="torch"),
              "onnx": MiniLM(threads=args.threads, backend="onnx")}
    vecs = {name: m.encode(texts) for name, m in models.items()}
    cos = (vecs["torch"] * vecs["onnx"]).sum(axis=1)
    cases = {"one": [texts[0]], "batch8": texts[1:9]}
    times: dict[str, dict[str, list[float]]] = {c: {n: [] for n in models} for c in cases}
    for r in range(args.rounds):
        for case, batch in cases.items():
            for name in (("torch", "onnx") if r % 2 else ("onnx", "torch")):
                t0 = time.perf_counter()
                models[name].encode(batch)
                times[case][name].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, object] = {
        "texts_compared": len(texts), "cosine_min": round(float(cos.min()), 7),
        "rounds": args.rounds, "threads": args.threads, "loadavg_1m": os.getloadavg()[0]}
    for case in cases:
        res = {n: {"p50_ms": pct(t, 50), "p90_ms": pct(t, 90)} for n, t in times[case].items()}
        out[case] = {**res, "torch_over_onnx_p50": round(
            res["torch"]["p50_ms"] / res["onnx"]["p50_ms"], 2)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
