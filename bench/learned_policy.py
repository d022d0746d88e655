"""The ``learned`` policy's decision cost, embedding included.

Each prompt is routed once (no LRU hit: every prompt is new) by ``Learned.plan`` over two
candidates, exactly as the router calls it on the event loop; the time is the whole call
(the prompt's vector, the model's prediction, the built-in constraints and predictions, the
ordering), wall clock and the calling thread's CPU time (the forward pass runs in the
calling thread, one intra-op thread, with ONNX Runtime and with torch alike; on a shared
machine the wall clock also counts the waits for a core). MiniLM runs in ONNX Runtime when it
is installed; ``SWITCHYARD_MINILM_BACKEND=torch`` measures sentence-transformers instead. The
``weighted`` policy on the same candidates is measured in the same sitting,
for the ratio. Models come from ``switchyard train router``.

    python bench/learned_policy.py --model /tmp/cml/mmlu-minilm.npz --model /tmp/cml/mmlu-static.npz \\
        --model /tmp/cml/mmlu-distilled.npz [--data /tmp/switchyard-eval/mmlu.test.jsonl] [--n 300] \\
        [--rounds 2]

(``--rounds N``: the files in turn N times, every other round in reverse order, for
same-sitting ratios; the load average is printed before and after each run)

(each file from ``switchyard train router --data mmlu.train.jsonl --model knn --embedder E``)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from provenance import header

from gateway import Candidate, Constraints, RequestFeatures
from plugins.learn.router import RouterModel
from policies.learned import Learned
from policies.weighted import DEFAULT_WEIGHTS, Weighted


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def run(policy: object, prompts: list[str],
        cands: list[Candidate]) -> tuple[list[float], list[float], list[str]]:
    times, cpu, firsts = [], [], []
    plan = policy.plan  # type: ignore[attr-defined]
    for text in prompts:
        req = RequestFeatures(endpoint="chat", requested="auto", prompt_tokens=len(text) // 4,
                              max_tokens=16, text=text)
        t0, c0 = time.perf_counter(), time.thread_time()
        p = plan(req, cands, Constraints())
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        firsts.append(p.order[0])
    return times, cpu, firsts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=Path("/tmp/switchyard-eval/mmlu.test.jsonl"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    with args.data.open() as f:
        prompts = [json.loads(line)["prompt"] for line, _ in zip(f, range(args.n), strict=False)]
    print(header())
    print(f"{len(prompts)} prompts from {args.data.name}, each routed once (no cache hit)")
    print("| policy | embedder | file | load s | p50 ms | p90 ms | p99 ms | CPU p50 ms | strong first | load avg |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    order = [p for r in range(args.rounds) for p in (args.model if r % 2 == 0 else args.model[::-1])]
    cands: list[Candidate] = []
    for path in order:
        before = os.getloadavg()[0]
        rm = RouterModel.load(path)
        names = [rm.models[j] for j in rm.mean_cost.argsort()]  # the cheap model first
        cands = [Candidate.make("weak", model=names[0], input_usd_per_token=6e-7,
                                output_usd_per_token=6e-7),
                 Candidate.make("strong", model=names[1], input_usd_per_token=1e-5,
                                output_usd_per_token=3e-5)]
        t0 = time.perf_counter()
        policy = Learned({"model": str(path)})
        load_s = time.perf_counter() - t0
        run(policy, ["warm up one", "warm up two"], cands)
        times, cpu, firsts = run(policy, prompts, cands)
        ms = [t * 1000 for t in times]
        kind = policy.model.encoder.kind
        if kind == "minilm":
            from plugins.minilm import MiniLM

            kind += f" ({MiniLM.shared().runtime})"
        print(f"| learned | {kind} | {path.name} | {load_s:.2f} | {statistics.median(ms):.2f} | "
              f"{_pct(ms, 0.9):.2f} | {_pct(ms, 0.99):.2f} | {statistics.median(cpu) * 1000:.2f} | "
              f"{firsts.count('strong') / len(firsts):.0%} | {before:.2f} to {os.getloadavg()[0]:.2f} |",
              flush=True)
    weighted = Weighted("weighted", DEFAULT_WEIGHTS, {})
    times, cpu, _ = run(weighted, prompts, cands)
    ms = [t * 1000 for t in times]
    print(f"| weighted | - | - | - | {statistics.median(ms):.3f} | {_pct(ms, 0.9):.3f} | {_pct(ms, 0.99):.3f} | "
          f"{statistics.median(cpu) * 1000:.3f} | - | {os.getloadavg()[0]:.2f} |")


if __name__ == "__main__":
    main()
