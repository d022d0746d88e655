"""Read the semantic cache's "wrong hits" on QQP by hand: how many ask the same question?

QQP's labels say whether two Quora questions were judged duplicates; they are known to be
noisy (its release says so). A cache's precision on QQP counts every served pair labelled
"not duplicate" as a wrong answer. This script draws the pairs to read, and, given the
verdicts of a reader (``bench/data/qqp_train_audit.json``: pair indices and verdicts only,
never QQP's text), says what the precision would be if the pairs read as the same question
were counted right, with a 95 % interval for the share of such pairs among all the wrong hits.

The pairs come from the QQP train half (tune nothing on the test half: this reads labels,
it chooses nothing), the decisions from ``switchyard eval cache --out``:

    python bench/qqp_pairs.py --split train --out /tmp/qqp_train.jsonl
    switchyard eval cache --data /tmp/qqp_train.jsonl --out /tmp/train.out --json
    python bench/cache_label_audit.py --data /tmp/qqp_train.jsonl --decisions /tmp/train.out
    python bench/cache_label_audit.py ... --show      # the sampled pairs, to read them

The verdicts were read on the decisions of commit 76ab262; a later decision serves other
pairs and so draws another sample (the script says so): run the eval in a worktree of that
commit (``git worktree add /tmp/at 76ab262``) to check them, or read the new sample.

The sample is the one read for the file: 8,000 train pairs at random (``random.seed(13)``),
their wrong hits in that order, 60 of them at random (``random.seed(2026)``). The file also
keeps the verdicts on the band of the same 8,000 pairs whose plain MiniLM cosine is 0.975
or more and whose label is "not duplicate" (read the same way; its indices are there).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

VERDICTS = Path(__file__).resolve().parent / "data" / "qqp_train_audit.json"
LABELS = {"same": "the same question: one answer serves both",
          "unsure": "close; one answer would mostly serve",
          "different": "different questions"}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return mid - half, mid + half


def sample(rows: list[dict[str, object]], decisions: list[dict[str, object]],
           n_pairs: int = 8000, n_wrong: int = 60, n_right: int = 40
           ) -> tuple[list[int], list[int], list[int], int, int]:
    """(the wrong hits read, the right hits read, the subsample, its hits, its wrong hits)."""
    random.seed(13)
    sub = random.sample(range(len(rows)), n_pairs)
    wrong = [i for i in sub if decisions[i]["hit"] and not rows[i]["duplicate"]]
    right = [i for i in sub if decisions[i]["hit"] and rows[i]["duplicate"]]
    random.seed(2026)
    read_wrong = random.sample(wrong, n_wrong)
    random.seed(2027)
    read_right = random.sample(right, n_right)
    return read_wrong, read_right, sub, len(wrong) + len(right), len(wrong)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="qqp_pairs.py --split train")
    p.add_argument("--decisions", type=Path, required=True, help="switchyard eval cache --out")
    p.add_argument("--verdicts", type=Path, default=VERDICTS)
    p.add_argument("--show", action="store_true", help="print the sampled pairs to read")
    args = p.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    decisions = [json.loads(line) for line in args.decisions.read_text().splitlines()
                 if line.strip()]
    if len(rows) != len(decisions):
        raise SystemExit(f"{len(rows)} pairs but {len(decisions)} decisions")
    read, read_right, sub, hits, wrong = sample(rows, decisions)
    if args.show:
        for kind, drawn in (("wrong", read), ("right", read_right)):
            for i in drawn:
                print(json.dumps({"hit": kind, "index": i, "a": rows[i]["a"], "b": rows[i]["b"]}))
        return 0
    audit = json.loads(args.verdicts.read_text())
    verdicts: dict[str, str] = audit["wrong_hits"]
    right_verdicts: dict[str, str] = audit["right_hits"]
    if (sorted(map(str, read)) != sorted(verdicts)
            or sorted(map(str, read_right)) != sorted(right_verdicts)):
        print("the decisions give another sample than the one read (the decision changed): "
              "read it again with --show", file=sys.stderr)
        return 1
    out: dict[str, object] = {
        "pairs": len(sub), "hits": hits, "wrong_hits": wrong,
        "precision_by_labels": round((hits - wrong) / hits, 4)}
    out.update(estimate(verdicts, right_verdicts, hits, wrong))
    band = audit.get("band")
    if band:
        out["band"] = {"what": band["what"], "pairs": band["pairs"],
                       "labelled_duplicates": band["labelled_duplicates"],
                       "read": tally(band["verdicts"])}
    second = audit.get("second_reader")
    if second:
        two = estimate(second["wrong_hits"], second["right_hits"], hits, wrong)
        agree = {part: sum(1 for k, v in mine.items() if second[part].get(k) == v)
                 for part, mine in (("wrong_hits", verdicts), ("right_hits", right_verdicts),
                                    ("band", (band or {}).get("verdicts", {})))}
        out["second_reader"] = {"how": second["how"], **two,
                                "band_read": tally(second.get("band", {})),
                                "agreement_with_first": agree}
    print(json.dumps(out, indent=2))
    return 0


def tally(verdicts: dict[str, str]) -> dict[str, int]:
    return {v: sum(1 for x in verdicts.values() if x == v) for v in LABELS}


def estimate(verdicts: dict[str, str], right_verdicts: dict[str, str], hits: int,
             wrong: int) -> dict[str, object]:
    """One reader's counts, and the precision if the pairs read as the same question (and
    then the close ones too) counted right, with 95 % intervals; served pairs labelled
    duplicate that read as different questions count against."""
    counts, right_counts = tally(verdicts), tally(right_verdicts)
    n = len(verdicts)
    right = (hits - wrong) * (1 - right_counts["different"] / len(right_verdicts))
    out: dict[str, object] = {"read": n, "verdicts": counts,
                              "right_hits_read": len(right_verdicts),
                              "right_hits_verdicts": right_counts}
    for name, k in (("same", counts["same"]),
                    ("same_or_unsure", counts["same"] + counts["unsure"])):
        lo, hi = wilson(k, n)
        out[f"precision_if_{name}_right"] = round((right + k / n * wrong) / hits, 4)
        out[f"precision_if_{name}_right_95"] = [round((right + lo * wrong) / hits, 4),
                                                round((right + hi * wrong) / hits, 4)]
    return out


if __name__ == "__main__":
    sys.exit(main())
