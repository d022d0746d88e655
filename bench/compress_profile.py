"""Where the compressor's time goes, and engines compared in one sitting: every item of a
compression data set (``bench/nq_compress_items.py``, the TRAIN half for development) through
``Compressor.compress`` as ``switchyard eval compress`` runs it, under one or more engine
settings alternated item by item (the same load for each), with every MiniLM forward pass
recorded: its batch size, its padded length and its CPU time, by pass (1st: question and
probes; then, where the probe is unsure, the question alone (its output tokens, for MaxSim),
the shortlist's whole units, and the first units' sentences; with ``maxsim=0`` the question's
pass is not run).

    python bench/compress_profile.py /tmp/nq_train.jsonl --limit 200 \\
        --engine shipped= --engine nosent=sentences=0

``--engine NAME=k=v,k=v``: ``rank.Weights`` fields and ``Compressor`` options (``lean``; ``int8=false``: the shared
fp32 MiniLM, else its int8 export as shipped);
an empty list is the shipped defaults. Printed per engine: retention, ratio, CPU per item
(p50, p90, mean), the share of items with a second pass, and per pass the tokens fed (padded)
and the CPU it took; the load average before and after."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from plugins.compress import rank
from plugins.compress.answers import contains_answer
from plugins.compress.embedder import embedder
from plugins.compress.engine import Compressor, eval_messages
from plugins.compress.evaluate import prompt_text, read_items
from plugins.minilm_onnx import OnnxMiniLM

_calls: list[tuple[int, int, float]] = []  # (batch, padded length, CPU ms) of the current item


def _record() -> None:
    """Wrap ``OnnxMiniLM._forward`` to record each forward pass (``encode``'s batches in the
    model's thread, ``encode_tokens``' in the compressor's)."""
    inner = OnnxMiniLM._forward

    def forward(self: OnnxMiniLM, texts: list[str]) -> tuple[np.ndarray, list[Any], np.ndarray]:
        c0 = time.thread_time()
        out = inner(self, texts)
        n = len(out[1][0].ids) if texts else 0  # padded
        _calls.append((len(texts), n, (time.thread_time() - c0) * 1e3))
        return out

    OnnxMiniLM._forward = forward  # type: ignore[method-assign]


def engine(spec: str) -> tuple[str, Compressor]:
    name, _, rest = spec.partition("=")
    fields = {f.name: f.type for f in dataclasses.fields(rank.Weights)}
    weights: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        k, _, v = pair.partition("=")
        if k in fields:
            weights[k] = int(v) if fields[k] in (int, "int") else float(v)
        else:
            options[k] = json.loads(v)
    w = dataclasses.replace(rank.Weights(), **weights)
    int8 = bool(options.pop("int8", True))  # as make_compressor: the int8 export by default
    return name, Compressor(embedder(int8), weights=w, **options)


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))] if xs else 0.0


async def main_async(args: argparse.Namespace) -> None:
    items = read_items(args.data)[args.skip: args.skip + args.limit]
    engines = [engine(s) for s in (args.engine or ["shipped="])]
    for _, comp in engines:  # load the model, warm up
        await comp.compress(eval_messages(items[0]["question"], items[0]["context"]))
    stats: dict[str, dict[str, list[Any]]] = {n: {"cpu": [], "wall": [], "kept": [], "in": [],
                                                  "out": [], "passes": []} for n, _ in engines}
    load0 = os.getloadavg()
    for k, item in enumerate(items):
        order = engines if k % 2 == 0 else engines[::-1]
        for name, comp in order:
            _calls.clear()
            messages = eval_messages(item["question"], item["context"])
            t0, c0 = time.perf_counter(), time.process_time()
            out = await comp.compress(messages)
            s = stats[name]
            s["wall"].append((time.perf_counter() - t0) * 1e3)
            s["cpu"].append((time.process_time() - c0) * 1e3)
            s["kept"].append(contains_answer(prompt_text(out.messages), item["answers"]))
            s["in"].append(out.words_before)
            s["out"].append(out.words_after)
            s["passes"].append(list(_calls))
    load1 = os.getloadavg()
    print(f"{len(items)} items, load average {load0[0]:.2f} -> {load1[0]:.2f}")
    for name, s in stats.items():
        cpu = s["cpu"]
        second = [len(p) > 1 for p in s["passes"]]
        print(f"{name}: retention {np.mean(s['kept']):.4f} ratio {sum(s['in']) / sum(s['out']):.2f} "
              f"CPU p50 {statistics.median(cpu):.1f} p90 {pct(cpu, .9):.1f} mean "
              f"{statistics.fmean(cpu):.1f}; wall p50 {statistics.median(s['wall']):.1f}; "
              f"second pass {np.mean(second):.1%}")
        for j, label in enumerate(("1st (probe)", "2nd", "3rd", "4th")):
            rows = [p[j] for p in s["passes"] if len(p) > j]
            if not rows:
                continue
            toks = [b * n for b, n, _ in rows]
            ms = [c for _, _, c in rows]
            print(f"   {label}: {len(rows)} items, batch p50 {statistics.median(b for b, _, _ in rows):.0f}, "
                  f"padded tokens p50 {statistics.median(toks):.0f} mean {statistics.fmean(toks):.0f}, "
                  f"CPU ms p50 {statistics.median(ms):.1f} mean {statistics.fmean(ms):.1f}, "
                  f"{1e3 * sum(ms) / max(1, sum(toks)):.3f} ms per 1,000 tokens")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--engine", action="append", help="NAME=k=v,k=v (rank.Weights, options)")
    args = p.parse_args()
    _record()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
