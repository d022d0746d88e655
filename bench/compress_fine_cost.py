"""What LLMLingua's fine stage would cost here, at the least: one SmolLM2 pass with every
token's logits (llama-cpp-python in process, ``logits_all=True``, one thread) over the prompts
the coarse stage keeps, before any token is dropped.

    switchyard eval compress --data /tmp/nq_train.jsonl --out /tmp/nq_train.out --sweep-items 0
    python bench/compress_fine_cost.py /tmp/nq_train.out --items 20

Prints the prompt tokens p50 and the wall and CPU milliseconds p50 of the pass."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("compressed", type=Path, help='the --out of switchyard eval compress')
    p.add_argument("--items", type=int, default=20)
    args = p.parse_args()
    import numpy as np
    from llama_cpp import Llama

    from plugins.llamacpp import smollm2_path

    llm = Llama(model_path=str(smollm2_path()), logits_all=True, n_ctx=1024, n_threads=1,
                n_threads_batch=1, n_batch=512, verbose=False)
    with args.compressed.open() as f:
        texts = [json.loads(line)["compressed"] for line in f][: args.items]
    wall, cpu, tokens = [], [], []
    for text in texts:
        toks = llm.tokenize(text.encode(), add_bos=True)
        llm.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        llm.eval(toks)
        logits = np.asarray(llm.scores[: len(toks)])
        logprobs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                   keepdims=True)) - logits.max(1, keepdims=True)
        float(logprobs[np.arange(len(toks) - 1), toks[1:]].sum())
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        tokens.append(len(toks))
    print(json.dumps({"items": len(texts), "tokens_p50": statistics.median(tokens),
                      "ms_p50": round(statistics.median(wall), 1),
                      "cpu_ms_p50": round(statistics.median(cpu), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
