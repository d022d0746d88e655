"""What logprobs cost on the in-process model: SmolLM2-135M through llama-cpp-python with
``logits_all`` False and True (n_ctx 2048, a ~200-token prompt, 128 generated tokens).

Each configuration runs in a fresh subprocess so its resident memory is its own.

    python bench/llamacpp_logprobs.py [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from provenance import header

PROMPT_WORDS = ("The lighthouse keeper climbed the stairs every evening to light the lamp, "
                "watching ships pass far out at sea while the wind moved over the rocks. ")


# name: (logits_all, ask for logprobs)
MODES = {"plain": (False, False), "logits_all": (True, False), "logprobs": (True, True)}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(logits_all: bool, logprobs: bool, runs: int, threads: int | None) -> dict[str, Any]:
    from llama_cpp import Llama

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from plugins.llamacpp import smollm2_path

    before = rss_mb()
    t0 = time.perf_counter()
    llm = Llama(model_path=str(smollm2_path()), n_ctx=2048, n_batch=256, n_threads=threads,
                logits_all=logits_all, verbose=False)
    load_s = time.perf_counter() - t0
    prompt = PROMPT_WORDS
    while len(llm.tokenize(prompt.encode())) < 200:
        prompt += PROMPT_WORDS
    tokens = llm.tokenize(prompt.encode())[:200]
    prompt = llm.detokenize(tokens).decode()
    eos = llm.token_eos()
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(runs):
        llm.reset()
        t0 = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=128, temperature=0,
                                    logit_bias={str(eos): -100.0}, stream=True,
                                    logprobs=1 if logprobs else None)
        first = None
        n = 0
        for _chunk in out:
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        assert first is not None and n >= 100, n
        best_prefill = min(best_prefill, first - t0)
        best_decode = min(best_decode, (end - first) / max(1, n - 1))
    return {"logits_all": logits_all, "logprobs": logprobs, "load_s": load_s, "prompt_tokens": len(tokens),
            "ttft_s": best_prefill, "decode_tps": 1.0 / best_decode,
            "rss_mb": rss_mb(), "rss_delta_mb": rss_mb() - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(*MODES[args.child], args.runs, args.threads)))
        return
    rows = []
    for flag in MODES:
        cmd = [sys.executable, __file__, "--child", flag, "--runs", str(args.runs)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(header())
    print(f"SmolLM2-135M Q4_1, n_ctx 2048, {rows[0]['prompt_tokens']}-token prompt, 128 tokens, "
          f"best of {args.runs}, {os.cpu_count()} CPUs")
    print(f"{'logits_all':>10} {'logprobs':>8} {'load s':>7} {'TTFT ms':>8} {'decode tok/s':>13} "
          f"{'RSS MB':>7}")
    for r in rows:
        print(f"{r['logits_all']!s:>10} {r['logprobs']!s:>8} {r['load_s']:7.2f} "
              f"{r['ttft_s'] * 1000:8.1f} {r['decode_tps']:13.1f} {r['rss_mb']:7.0f}")


if __name__ == "__main__":
    main()
