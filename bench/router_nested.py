"""Nested cross-validation of the ``distilled`` embedder on a training file only: inside each
of 5 folds the IDF weights and the fitted rows are computed from the other four folds'
prompts alone, so a held-out prompt meets tokens the fit never saw, as a new prompt does in
serving (the plain CV of ``router_cv.py`` fits the rows on every training prompt first).
kNN over 100/150/200 neighbours; three fold splits averaged; APGR, CPT(50 %) and their
difference (the criterion ``train router`` chooses by).

``--unseen``: the weight of a token no fitting prompt holds: ``max`` (the IDF formula's own,
the largest weight), ``zero`` (left out of the bag), ``median`` (the median IDF weight of the
tokens seen).

    python bench/router_nested.py --train /tmp/switchyard-eval/mmlu.train.jsonl \\
        --unseen max --unseen zero --unseen median
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from provenance import header

from plugins.learn import data as datafile
from plugins.learn.embed import PromptEncoder, StaticTable, encode_cached, fit_rows, weigh_unseen
from plugins.learn.evaluate import _quality_of
from plugins.learn.features import route_text
from plugins.learn.models import KNN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=Path, default=Path("/tmp/switchyard-eval/mmlu.train.jsonl"))
    ap.add_argument("--unseen", action="append", choices=["max", "zero", "median"], required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    args = ap.parse_args()
    if ".test." in args.train.name:
        sys.exit("router_nested: that is a test file; cross-validate on training data only")
    print(header(), flush=True)
    train = datafile.load(args.train)
    texts = [route_text(p) for p in train.prompts]
    static = StaticTable.shared()
    ids = static.ids(texts)
    targets = encode_cached(texts)  # MiniLM fp32, as PromptEncoder.fit reads them
    base = static.distilled()
    n = len(texts)
    for unseen in args.unseen:
        t0 = time.perf_counter()
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            idx = np.random.default_rng(seed).permutation(n)
            Q = np.zeros_like(train.quality)
            for f in range(5):
                test = idx[f::5]
                fit = np.setdiff1d(idx, test)
                idf = weigh_unseen(static.idf([texts[i] for i in fit]), unseen)
                rows, fitted = fit_rows([ids[i] for i in fit], idf, base, targets[fit])
                enc = PromptEncoder("distilled", idf, rows, fitted)
                X_fit = enc.encode([train.prompts[i] for i in fit])
                X_te = enc.encode([train.prompts[i] for i in test])
                Q[test] = KNN(ks=[100, 150, 200]).fit(X_fit, train.quality[fit]).predict(X_te)
            runs.append(_quality_of(train, Q))
        apgr = float(np.mean([r["apgr"] for r in runs]))
        cpt50 = float(np.mean([r["cpt50"] for r in runs]))
        seeds = ", ".join(f"{r['apgr']:.4f}/{r['cpt50']:.4f}" for r in runs)
        print(f"unseen {unseen}: APGR {apgr:.4f} CPT50 {cpt50:.4f} criterion {apgr - cpt50:.4f} "
              f"(seeds: {seeds}; "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
