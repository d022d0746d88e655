"""QQP pairs (GPTCache's ``similiar_qqp_full.json``: ``text_a``, ``text_b``, ``label``) to the
canonical cache pair format ``{"a", "b", "duplicate"}``, one JSON object a line.

The split is the evaluation data's rule: a pair is TRAIN when
``int(sha256((text_a + text_b).encode()).hexdigest(), 16) % 2 == 0``, TEST otherwise. The
verifier is fitted on train (bench/fit_cache_verifier.py); only test figures are reported.

    python bench/qqp_pairs.py --split test > /tmp/qqp_test.jsonl
    switchyard eval cache --data /tmp/qqp_test.jsonl --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "evaldata" / "gptcache" / \
    "similiar_qqp_full.json"


def is_train(text_a: str, text_b: str) -> bool:
    return int(hashlib.sha256((text_a + text_b).encode()).hexdigest(), 16) % 2 == 0


def pairs(path: Path = DEFAULT, split: str = "test") -> Iterator[dict[str, object]]:
    """The canonical pairs of one split ("train", "test" or "all"), in the file's order."""
    for row in json.loads(path.read_text()):
        a, b = str(row["text_a"]), str(row["text_b"])
        if split == "all" or (split == "train") == is_train(a, b):
            yield {"a": a, "b": b, "duplicate": bool(int(row["label"]))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT, help="similiar_qqp_full.json")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    p.add_argument("--out", type=Path, help="write here (default: standard output)")
    args = p.parse_args()
    out = args.out.open("w") if args.out else sys.stdout
    n = 0
    for pair in pairs(args.data, args.split):
        out.write(json.dumps(pair) + "\n")
        n += 1
    print(f"{n} {args.split} pairs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
