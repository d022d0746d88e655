"""``switchyard eval cache --data FILE [--out DECISIONS] [--json] [--plot PNG]``: how the
semantic tier decides on labelled pairs, with its shipped defaults.

``FILE`` holds one pair a line, ``{"a": str, "b": str, "duplicate": bool}``. Each pair is
decided exactly as the production cache decides: ``a`` is stored in a ``SemanticIndex``
(one group), ``b`` is looked up, ``a`` is removed again. ``--out`` gets one line per pair,
in input order: ``{"hit": bool, "score": float}``. The report has the figures at the shipped
threshold, a sweep of the threshold (precision, recall, F1, hit rate), the same sweep for
plain cosine (what one threshold alone would do), and the p50 of a lookup including its
embedding; ``--plot`` draws both precision-recall curves (needs matplotlib: the ``eval``
extra). ``--cache-dir`` keeps the MiniLM vectors of the pairs' texts and reuses them (the
same model computes the same vectors; QQP's test half takes minutes to embed)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway import RegisterCommand, hookimpl
from plugins import evalplot

SWEEP = [round(0.05 * i, 2) for i in range(1, 20)]
COSINE_SWEEP = [round(0.70 + 0.025 * i, 3) for i in range(12)]
TIMED_LOOKUPS = 200


def read_pairs(path: Path) -> list[tuple[str, str, bool]]:
    out = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append((str(row["a"]), str(row["b"]), bool(row["duplicate"])))
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"switchyard: {path}:{n}: not a cache pair "
                                 f'{{"a", "b", "duplicate"}}: {e}') from None
    if not out:
        raise SystemExit(f"switchyard: {path}: no pairs")
    return out


def figures(predicted: Sequence[bool], truth: Sequence[bool]) -> dict[str, float]:
    tp = sum(1 for p, t in zip(predicted, truth, strict=True) if p and t)
    hits = sum(predicted)
    pos = sum(truth)
    precision = tp / hits if hits else 1.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "hit_rate": round(hits / len(truth), 4)}


def sweep(values: Sequence[float], truth: Sequence[bool],
          thresholds: Sequence[float]) -> list[dict[str, float]]:
    return [{"threshold": t, **figures([v >= t for v in values], truth)} for t in thresholds]


def vectors(texts: Sequence[str], cache_dir: Path | None = None,
            everything: bool = False) -> dict[str, np.ndarray]:
    """MiniLM vectors of ``texts`` (``everything``: and of every text cached). With
    ``cache_dir``, vectors computed before are read from it (chunks of ``minilm-KEY.npy``
    with their texts in ``minilm-KEY.json``) and only new texts are embedded, then kept
    there: the same model computes the same vectors, so a large set (QQP's 137,551
    questions take about 9 CPU minutes) is embedded once for every command that reads it.
    The chunks are the model's: clear the folder when the model changes."""
    from plugins.minilm import MiniLM

    known: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        for side in sorted(cache_dir.glob("minilm-*.json")):
            chunk = np.load(side.with_suffix(".npy"))
            known.update(zip(json.loads(side.read_text()), chunk, strict=True))
    missing = sorted(set(texts) - known.keys())
    if missing:
        vecs = MiniLM.shared().encode(missing)
        known.update(zip(missing, vecs, strict=True))
        if cache_dir is not None:
            key = hashlib.sha256("\n".join(missing).encode()).hexdigest()[:16]
            cache_dir.mkdir(parents=True, exist_ok=True)
            np.save(cache_dir / f"minilm-{key}.npy", vecs)
            (cache_dir / f"minilm-{key}.json").write_text(json.dumps(missing))
    return dict(known) if everything else {t: known[t] for t in set(texts)}


async def decide_all(pairs: list[tuple[str, str, bool]],
                     cache_dir: Path | None = None) -> tuple[list[Any], float]:
    """Each pair through a SemanticIndex with the shipped defaults; the lookup p50 (ms)."""
    from plugins.cache.semantic import SemanticIndex
    from plugins.minilm import MiniLM

    model = MiniLM.shared()
    vecs = vectors([t for a, b, _ in pairs for t in (a, b)], cache_dir)
    index = SemanticIndex(model)
    matches = []
    for a, b, _ in pairs:
        index.add("eval", "a", a, vecs[a])
        matches.append(await index.lookup("eval", b, vecs[b]))
        index.remove("a")
    times = []  # a lookup as the request path makes it: its embedding included
    for a, b, _ in pairs[:TIMED_LOOKUPS]:
        index.add("eval", "a", a, vecs[a])
        t0 = time.perf_counter()
        await index.lookup("eval", b)
        times.append((time.perf_counter() - t0) * 1e3)
        index.remove("a")
    return matches, statistics.median(times)


def plot(report: dict[str, Any], path: Path, title: str) -> str | None:
    plt = evalplot.pyplot()
    if plt is None:
        return f"{evalplot.MISSING}: no curve drawn"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, label, style in (("thresholds", "switchyard decision", "o-"),
                              ("cosine_thresholds", "plain MiniLM cosine", "s--")):
        rows = [r for r in report[key] if r["recall"] > 0]
        ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], style, label=label,
                markersize=3)
    d = report["at_default"]
    ax.plot([d["recall"]], [d["precision"]], "r*", markersize=14,
            label=f"shipped default ({report['default_threshold']})")
    ax.set_xlabel("recall (duplicates served from cache)")
    ax.set_ylabel("precision (hits that were right)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(max(0.0, min(r["precision"] for r in report["cosine_thresholds"]) - 0.05), 1.01)
    ax.legend(loc="lower left")
    evalplot.save(plt, fig, ax, path, title)
    return None


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.is_file():
        print(f"switchyard: {data}: no such file", file=sys.stderr)
        return 2
    pairs = read_pairs(data)
    matches, p50 = asyncio.run(decide_all(pairs, Path(args.cache_dir) if args.cache_dir else None))
    truth = [d for _, _, d in pairs]
    scores = [m.score for m in matches]
    hits = [m.hit for m in matches]
    from plugins.cache.decide import load_verifier

    report: dict[str, Any] = {
        "data": str(data), "pairs": len(pairs), "duplicates": sum(truth),
        "default_threshold": load_verifier().threshold,
        "at_default": figures(hits, truth),
        "thresholds": sweep(scores, truth, SWEEP),
        "cosine_thresholds": sweep([m.similarity for m in matches], truth, COSINE_SWEEP),
        "lookup_ms_p50": round(p50, 2),
    }
    if args.out:
        with Path(args.out).open("w") as f:
            f.writelines(json.dumps({"hit": m.hit, "score": round(m.score, 6)}) + "\n" for m in matches)
    png = Path(args.plot) if args.plot else Path(f"{data.stem}-cache-curve.png")
    note = plot(report, png, f"{data.name}: {len(pairs)} pairs")
    report["plot"] = None if note else str(png)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        d = report["at_default"]
        print(f"{data}: {len(pairs)} pairs, threshold {report['default_threshold']}: "
              f"precision {d['precision']}, recall {d['recall']}, F1 {d['f1']}, "
              f"hit rate {d['hit_rate']}; lookup p50 {report['lookup_ms_p50']} ms")
    if note:
        print(f"switchyard: {note}", file=sys.stderr)
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help='pairs, one {"a", "b", "duplicate"} a line')
    p.add_argument("--out", help='write {"hit", "score"} per pair here, in input order')
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--plot", help="the precision-recall PNG (default: <data>-cache-curve.png)")
    p.add_argument("--cache-dir", help="keep MiniLM vectors here and reuse them (the texts' "
                                       "vectors computed before, by the same model)")


@hookimpl(trylast=True)
def switchyard_register_commands(register: RegisterCommand) -> None:
    register("eval cache", configure, run,
             help="the semantic cache's decisions on labelled pairs, and a threshold sweep")
