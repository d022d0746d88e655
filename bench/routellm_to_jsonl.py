"""RouteLLM's MMLU and GSM8K tables -> the canonical routing format, split train/test.

Reads ``../shared/evaldata/routellm`` in place and writes, under ``--out`` (outside the
repository; default ``/tmp/switchyard-eval``), ``mmlu.train.jsonl``, ``mmlu.test.jsonl``,
``gsm8k.train.jsonl`` and ``gsm8k.test.jsonl``: one prompt per line,
``{"prompt", "outcomes": {MODEL: {"quality", "cost_usd", "response"?}}}``.

- Contaminated prompts (RouteLLM's ``contaminated_prompts.jsonl``, field ``eval_prompt``)
  are dropped, as RouteLLM's ``benchmarks.py`` does: 14,037 MMLU and 1,307 GSM8K prompts
  remain.
- Split (evaldata README): ``int(sha256(prompt).hexdigest(), 16) % 2 == 0`` is train, the
  rest test.
- Cost per prompt from the price table below, in USD per million tokens, with tokens
  estimated as characters / 4 (neither model's tokenizer ships here): the prompt is the
  input; the output is the model's response where the table has it (GSM8K), else one
  answer letter (MMLU, 1 token). The absolute dollars are an estimate; the ratio between
  the two models (about 17x input, 50x output) is what the routing curves depend on.

    python bench/routellm_to_jsonl.py [--data ../shared/evaldata/routellm] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
# USD per million tokens (input, output): OpenAI's list price for gpt-4-1106-preview at
# its release; Mixtral-8x7B-Instruct at Together AI's serverless price of the same period.
PRICES = {STRONG: (10.0, 30.0), WEAK: (0.60, 0.60)}
MMLU_OUTPUT_TOKENS = 1


def tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def cost_usd(model: str, prompt: str, output_tokens: int) -> float:
    pin, pout = PRICES[model]
    return (tokens(prompt) * pin + output_tokens * pout) / 1e6


def is_train(prompt: str) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 2 == 0


def contaminated(path: Path) -> set[str]:
    with path.open() as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def truth(value: str) -> float:
    if value not in ("True", "False"):
        raise ValueError(f"expected True/False, got {value!r}")
    return 1.0 if value == "True" else 0.0


def mmlu(root: Path) -> Iterator[dict[str, object]]:
    drop = contaminated(root / "mmlu" / "contaminated_prompts.jsonl")
    for path in sorted((root / "mmlu" / "responses").glob("mmlu_*.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                p = row["prompt"]
                if p in drop:
                    continue
                yield {"prompt": p, "outcomes": {
                    m: {"quality": truth(row[m]), "cost_usd": cost_usd(m, p, MMLU_OUTPUT_TOKENS)}
                    for m in (WEAK, STRONG)}}


def gsm8k(root: Path) -> Iterator[dict[str, object]]:
    drop = contaminated(root / "gsm8k" / "contaminated_prompts.jsonl")
    csv.field_size_limit(1 << 30)
    with (root / "gsm8k" / "gsm8k_responses.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            p = row["prompt"]
            if p in drop:
                continue
            out = {}
            for m in (WEAK, STRONG):
                resp = row[f"{m}_response"]
                out[m] = {"quality": truth(row[m]), "cost_usd": cost_usd(m, p, tokens(resp)),
                          "response": resp}
            yield {"prompt": p, "outcomes": out}


def write(rows: Iterator[dict[str, object]], out: Path, name: str) -> dict[str, int]:
    counts = {"train": 0, "test": 0}
    with (out / f"{name}.train.jsonl").open("w") as tr, (out / f"{name}.test.jsonl").open("w") as te:
        for row in rows:
            split = "train" if is_train(str(row["prompt"])) else "test"
            (tr if split == "train" else te).write(json.dumps(row) + "\n")
            counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=here.parent.parent / "shared/evaldata/routellm")
    ap.add_argument("--out", type=Path, default=Path("/tmp/switchyard-eval"))
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no RouteLLM data at {args.data} (pass --data)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mmlu", mmlu(args.data)), ("gsm8k", gsm8k(args.data))):
        counts = write(rows, args.out, name)
        print(f"{name}: {counts['train']} train, {counts['test']} test -> {args.out}/{name}.*.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
