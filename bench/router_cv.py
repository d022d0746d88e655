"""Cross-validate the learned router's embedders on a training file only (never a test file):
for each embedder, the prompts' vectors (kept on disk as ``eval router`` keeps them), then
``select_router``'s grid, each entry the mean over three 5-fold splits of APGR and CPT(50 %)
and the criterion ``eval router`` / ``train router`` choose by (APGR minus CPT(50 %)). The
best entry of each embedder is starred; the embedder with the best criterion is what the
training data chooses.

``--fidelity``: also the mean cosine of each ``minilm-*`` embedder's vectors to ``minilm``'s
(how far int8 or a token cap moves them).

    python bench/router_cv.py --train /tmp/switchyard-eval/mmlu.train.jsonl \\
        --embedder minilm --embedder minilm-int8 --embedder minilm-int8:32 \\
        --embedder distilled [--grid knn|words] [--seeds 3] [--json OUT]

(``KIND:N``: int8 MiniLM capped at N tokens, ``--max-tokens N`` of ``train router``)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from provenance import header

from plugins.learn import data as datafile
from plugins.learn.embed import EMBEDDERS, PromptEncoder
from plugins.learn.evaluate import ROUTER_GRID, select_router

KS = [100, 150, 200]
# the word ridge's strength and share beside the kNN (plugins/learn/words.py)
WORDS_GRID = [("knn", {"ks": KS})] + [("knn", {"ks": KS, "words": {"l2": l2, "share": s}})
                                      for l2, s in ((10.0, 0.2), (20.0, 0.2), (20.0, 0.3), (40.0, 0.3))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=Path, default=Path("/tmp/switchyard-eval/mmlu.train.jsonl"))
    ap.add_argument("--embedder", action="append", required=True,
                    help=f"one of {', '.join(EMBEDDERS)}, optionally :N (a token cap)")
    ap.add_argument("--grid", choices=["all", "knn", "words"], default="all",
                    help="knn: only the grid's kNN entries (the others never won on MMLU); "
                    "words: the kNN over 100/150/200 alone and with the word ridge beside it "
                    "(WORDS_GRID)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fidelity", action="store_true")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if args.train.name.split(".")[-2:-1] == ["test"]:
        sys.exit("router_cv: that is a test file; cross-validate on training data only")
    print(header(), flush=True)
    train = datafile.load(args.train)
    grid = WORDS_GRID if args.grid == "words" else \
        [g for g in ROUTER_GRID if args.grid == "all" or g[0] == "knn"]
    rows: list[dict[str, Any]] = []
    base: np.ndarray | None = None
    for spec in args.embedder:
        kind, _, cap = spec.partition(":")
        t0 = time.perf_counter()
        encoder = PromptEncoder.fit(kind, train.prompts, disk_cache=True, cache=args.cache,
                                    max_tokens=int(cap) if cap else None)
        X = encoder.encode(train.prompts, disk_cache=True, cache=args.cache)
        fid = None
        if args.fidelity and kind.startswith("minilm"):
            if base is None:
                base = PromptEncoder("minilm").encode(train.prompts, disk_cache=True, cache=args.cache)
            fid = float(np.mean(np.sum(X * base, axis=1)))
        print(f"{spec}: {len(X)} vectors in {time.perf_counter() - t0:.0f} s"
              + (f", mean cosine to minilm {fid:.5f}" if fid is not None else ""), flush=True)
        _, _, tried = select_router(train, X, grid, seeds=args.seeds)
        best = max(float(r["cv"]) for r in tried)
        for r in tried:
            rows.append({"embedder": spec, **r, "fidelity": fid})
            star = " *" if float(r["cv"]) == best else ""
            print(f"  {r['kind']} {json.dumps(r['params'])}: APGR {r.get('apgr', 0):.4f} "
                  f"CPT50 {r.get('cpt50', 0):.4f} criterion {r['cv']:.4f}{star}", flush=True)
    top = max(rows, key=lambda r: float(r["cv"]))
    print(f"chosen: {top['embedder']} {top['kind']} {json.dumps(top['params'])} "
          f"(criterion {top['cv']:.4f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
