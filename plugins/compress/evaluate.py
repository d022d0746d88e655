"""``switchyard eval compress --data FILE [--out OUT] [--json] [--plot PNG]``: what the prompt
compressor keeps of long-context items, with its shipped defaults.

``FILE`` holds one item a line, ``{"question", "context", "answers"}``. Each item becomes a chat
request with ``eval_messages`` (the shape a RAG application sends) and goes through
``Compressor.compress`` exactly as the gateway's compress stage calls it: the shipped defaults,
the compressor's MiniLM (``plugins.compress.embedder``: the int8 export). ``--out`` gets one line per item, in input order,
``{"compressed": ...}``: the whole prompt as it would be sent (every message's text, joined by
blank lines). The report: ``ratio`` (words in over words out, all items together),
``retention`` (the share of items whose compressed prompt still holds a gold answer, by
``plugins.compress.answers.contains_answer``), ``ms_p50`` (wall time of one ``compress`` call,
the model already loaded) and ``cpu_ms_p50`` (the CPU time it used: on a shared machine the
steadier figure), their p90 and the mean CPU time (MiniLM's second pass runs only where its
first is unsure, so the time per item has two levels), and a sweep of the target ratio on the first ``--sweep-items`` items for the
ratio-retention curve (``--plot``, needs matplotlib: the ``eval`` extra)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gateway import RegisterCommand, hookimpl
from plugins import evalplot
from plugins.compress.answers import contains_answer

SWEEP = (4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 25.0, 30.0)


def read_items(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append({"question": str(row["question"]), "context": str(row["context"]),
                            "answers": [str(a) for a in row.get("answers", [])]})
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"switchyard: {path}:{n}: not a compression item "
                                 f'{{"question", "context", "answers"}}: {e}') from None
    if not out:
        raise SystemExit(f"switchyard: {path}: no items")
    return out


def prompt_text(messages: list[dict[str, Any]]) -> str:
    return "\n\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))


async def run_items(items: list[dict[str, Any]], ratio: float | None = None,
                    compressor: Any = None) -> dict[str, Any]:
    """Every item through the compressor; the figures and the compressed prompts."""
    from plugins.compress.embedder import embedder
    from plugins.compress.engine import Compressor, eval_messages

    comp = compressor or Compressor(embedder())
    await comp.compress(eval_messages(items[0]["question"], items[0]["context"]))  # load models
    words_in = words_out = kept = 0
    wall, cpu, texts = [], [], []
    stages: set[str] = set()
    for item in items:
        messages = eval_messages(item["question"], item["context"])
        t0, c0 = time.perf_counter(), time.process_time()
        result = await comp.compress(messages, ratio=ratio)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        text = prompt_text(result.messages)
        texts.append(text)
        words_in += result.words_before
        words_out += result.words_after
        kept += contains_answer(text, item["answers"])
        stages.update(result.stages)
    return {"items": len(items), "ratio": round(words_in / max(1, words_out), 2),
            "retention": round(kept / len(items), 4), "ms_p50": round(statistics.median(wall), 1),
            "cpu_ms_p50": round(statistics.median(cpu), 1), "ms_p90": _p90(wall),
            "cpu_ms_p90": _p90(cpu), "cpu_ms_mean": round(statistics.fmean(cpu), 1),
            "words_in": words_in,
            "words_out": words_out, "stages": sorted(stages), "compressed": texts}


def _p90(xs: list[float]) -> float:
    return round(sorted(xs)[int(0.9 * (len(xs) - 1))], 1)


def plot(points: list[dict[str, Any]], shipped: dict[str, Any], path: Path, title: str) -> str | None:
    plt = evalplot.pyplot()
    if plt is None:
        return f"{evalplot.MISSING}: no curve drawn"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([p["ratio"] for p in points], [p["retention"] for p in points], "o-",
            label="target ratio swept", markersize=4)
    ax.plot([shipped["ratio"]], [shipped["retention"]], "r*", markersize=14,
            label=f"shipped defaults ({shipped['ratio']}x, {shipped['retention']:.3f})")
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")
    ax.axvline(15, color="grey", lw=0.8, ls=":", label="goal: 15x at 0.95")
    ax.set_xlabel("compression ratio (words in / words out)")
    ax.set_ylabel("retention (gold answer still in the prompt)")
    ax.legend(loc="lower left")
    evalplot.save(plt, fig, ax, path, title)
    return None


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.is_file():
        print(f"switchyard: {data}: no such file", file=sys.stderr)
        return 2
    items = read_items(data)
    shipped = asyncio.run(run_items(items))
    texts = shipped.pop("compressed")
    if args.out:
        with Path(args.out).open("w") as f:
            f.writelines(json.dumps({"compressed": t}) + "\n" for t in texts)
    report: dict[str, Any] = {"data": str(data), **shipped}
    if args.sweep_items:
        sub = items[: args.sweep_items]
        points = []
        for target in SWEEP:
            point = asyncio.run(run_items(sub, ratio=target))
            point.pop("compressed")
            points.append({"target": target, **{k: point[k] for k in
                                                 ("ratio", "retention", "ms_p50", "cpu_ms_p50")}})
        report["sweep"] = {"items": len(sub), "points": points}
        png = Path(args.plot) if args.plot else Path(f"{data.stem}-compress-curve.png")
        note = plot(points, shipped, png,
                    f"{data.name}: {len(items)} items (sweep: the first {len(sub)})")
        report["plot"] = None if note else str(png)
        if note:
            print(f"switchyard: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{data}: {report['items']} items: {report['ratio']}x fewer words, gold answer kept "
              f"in {report['retention']:.1%}, {report['ms_p50']} ms p50 "
              f"({report['cpu_ms_p50']} ms CPU)")
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help='items, one {"question", "context", "answers"} a line')
    p.add_argument("--out", help='write {"compressed"} per item here, in input order')
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--plot", help="the ratio-retention PNG (default: <data>-compress-curve.png)")
    p.add_argument("--sweep-items", type=int, default=200,
                   help="items for the ratio sweep behind the curve (0: no sweep, no curve)")


@hookimpl(trylast=True)
def switchyard_register_commands(register: RegisterCommand) -> None:
    register("eval compress", configure, run,
             help="what the prompt compressor keeps of long-context items (ratio, retention, time)")
