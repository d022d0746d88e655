"""What the compress stage costs a request, in process (no HTTP), against the echo backend
(tests' plugin in .venv/test-plugins): per-request time of ``Gateway.complete`` with
compression off (no stage), on for a short prompt (counted, then skipped), and for a long
retrieval prompt sent whole (``off`` per request) or compressed; and the compressor's
warm-up measure (ms per prompt token), the prior of the "only where it pays" decision.

Ratios measured in one sitting, rounds interleaved; medians of the rounds.

    PYTHONPATH=.venv/test-plugins:tests/http .venv/bin/python bench/compress_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from compress_data import QUESTION, context

from gateway.assembly import build_parts, running
from gateway.config import load_settings
from gateway.pipeline.context import RequestContext
from plugins.compress.engine import eval_messages

SHORT = [{"role": "user", "content": "Name three bridges and the year each one was opened."}]
RAG = eval_messages(QUESTION, context())


def _settings(tmp: Path, compress: dict[str, Any]) -> Any:
    return load_settings(
        None, backends=[{"name": "echo", "plugin": "echo",
                         "pricing": {"input_per_mtok": 3.0}}],
        routes=[{"name": "m", "backends": ["echo"]}], compress=compress,
        ledger={"kind": "none"})


async def _round(gw: Any, messages: list[dict[str, Any]], n: int,
                 extra: dict[str, Any] | None = None) -> float:
    body = {"model": "m", "messages": messages, "max_tokens": 4, **(extra or {})}
    t0 = time.perf_counter()
    for i in range(n):
        await gw.complete("chat", dict(body), RequestContext(request_id=f"b{i}"))
    return (time.perf_counter() - t0) / n * 1e6


async def main(n: int, rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    off = build_parts(_settings(tmp, {"enabled": False}))
    on = build_parts(_settings(tmp, {"enabled": True, "when": "always"}))
    cases = {
        "off_short": (off, SHORT, None),
        "on_short_skipped": (on, SHORT, None),
        "on_rag_off_per_request": (on, RAG, {"switchyard": {"compress": {"off": True}}}),
        "on_rag_compressed": (on, RAG, None),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    async with running(off), running(on):
        assert on.compress is not None
        warm = on.compress.reach.ms_per_token
        for _ in range(rounds):
            for name, (parts, msgs, extra) in cases.items():
                times[name].append(await _round(parts.gateway, msgs, n, extra))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"us_per_request": {k: round(v, 1) for k, v in med.items()},
            "short_on_over_off": round(med["on_short_skipped"] / med["off_short"], 3),
            "rag_compressed_minus_whole_us": round(
                med["on_rag_compressed"] - med["on_rag_off_per_request"], 1),
            "warmup_ms_per_1k_tokens": round((warm or 0.0) * 1000, 2),
            "n": n, "rounds": rounds}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.n, args.rounds)), indent=2))
