"""NaturalQuestions (lost-in-the-middle's ``nq-open-oracle.jsonl.gz``) to compression items
``{"question", "context", "answers"}``, one JSON object a line, for
``switchyard eval compress``.

Each question's context is its gold passage among the 19 passages of OTHER questions nearest
to the question by MiniLM cosine (retrieval-like distractors, on topic) that contain none of
its answers (``plugins.compress.answers.contains_answer``, the same test the evaluation
scores with), in a fixed shuffled order (seeded by the question), each passage written as
lost-in-the-middle writes it: ``Document [i](Title: T) text``, one a line.

The split is the evaluation data's rule: an item is TRAIN when
``int(sha256(question.encode()).hexdigest(), 16) % 2 == 0``, TEST otherwise. Distractors come
from every question's gold passage (building the data is not tuning). Develop on train; report
test.

    python bench/nq_compress_items.py --split train --out /tmp/nq_train.jsonl
    switchyard eval compress --data /tmp/nq_train.jsonl --out /tmp/nq_train.out --json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "evaldata" / "lost_in_the_middle" / \
    "nq-open-oracle.jsonl.gz"
DISTRACTORS = 19


def is_train(question: str) -> bool:
    return int(hashlib.sha256(question.encode()).hexdigest(), 16) % 2 == 0


def load(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def gold(row: dict[str, Any]) -> dict[str, str]:
    ctx = next((c for c in row["ctxs"] if c.get("isgold")), row["ctxs"][0])
    return {"title": str(ctx["title"]), "text": str(ctx["text"])}


def items(rows: list[dict[str, Any]], split: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    from plugins.compress.answers import contains_answer
    from plugins.minilm import MiniLM

    chosen = [i for i, r in enumerate(rows) if split == "all" or (split == "train") == is_train(r["question"])]
    if limit:
        chosen = chosen[:limit]
    passages = [gold(r) for r in rows]
    model = MiniLM.shared()
    pvec = model.encode([f"{p['title']}\n{p['text']}" for p in passages])
    qvec = model.encode([rows[i]["question"] for i in chosen])
    out = []
    for qi, i in enumerate(chosen):
        row, own = rows[i], passages[i]
        picked: list[dict[str, str]] = []
        seen = {own["text"]}
        for j in np.argsort(-(pvec @ qvec[qi]), kind="stable"):
            p = passages[int(j)]
            if p["text"] in seen or contains_answer(f"{p['title']} {p['text']}", row["answers"]):
                continue
            seen.add(p["text"])
            picked.append(p)
            if len(picked) == DISTRACTORS:
                break
        docs = [own, *picked]
        random.Random(hashlib.sha256(row["question"].encode()).hexdigest()).shuffle(docs)
        context = "\n".join(f"Document [{k}](Title: {d['title']}) {d['text']}"
                            for k, d in enumerate(docs, 1))
        out.append({"question": row["question"], "context": context, "answers": list(row["answers"])})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT, help="nq-open-oracle.jsonl.gz")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    p.add_argument("--limit", type=int, help="only the first N items of the split")
    p.add_argument("--out", type=Path, help="write here (default: standard output)")
    args = p.parse_args()
    made = items(load(args.data), args.split, limit=args.limit)
    out = args.out.open("w") if args.out else sys.stdout
    out.writelines(json.dumps(item) + "\n" for item in made)
    words = sorted(len(f"{i['context']} {i['question']}".split()) for i in made)
    print(f"{len(made)} {args.split} items, median {words[len(words) // 2]} words",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
