"""The savings report (``gateway.report.build``: what ``switchyard report``, ``GET
/admin/report`` and the dashboard run) over a ledger of N rows, on SQLite and PostgreSQL.

The rows use every column a gateway writes (schema v4): 90 days, 20 teams, 5 routes, 6
backends and the cache's pseudo-backend; one request in eight a cache hit (one in four of
those semantic), one in six compressed, one route a cascade (a later stage in a third of
its requests, with a judge score), routing savings against a dear baseline, 10 % of the
energy measured. They go in through each ledger's own insert (the migrations and indexes
a gateway creates). Then one whole report is timed per window (all 90 days, the last 7,
one team) and grouping (backend, team, day): best of 3 and the first, cold run.

    python bench/report_speed.py [--rows 1000000] [--only sqlite|postgres]
        [--pg-url postgresql://postgres@127.0.0.1:5432/postgres] [--html OUT]

``--html OUT`` also writes the 7-day report page (the README's screenshot). Goal (issue
16): a report in at most 2 s on each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import header

from gateway import LEDGER_COLUMNS, SQLiteLedger, UsageRecord
from gateway.ledger import _row
from gateway.ledger_queries import Window
from gateway.report import build

DAY = 86_400.0
T0 = 1_780_000_000.0
PRICE = {"smollm2": (0.0, 0.0), "vllm-8b": (0.05, 0.1), "gpt-4o-mini": (0.15, 0.6),
         "claude-haiku": (0.8, 4.0), "llama-70b": (0.6, 0.8), "gpt-4o": (2.5, 10.0)}


def _record(rnd: random.Random, i: int, n: int) -> UsageRecord:
    be = rnd.choice(list(PRICE))
    p, c = rnd.randint(20, 3000), rnd.randint(1, 600)
    inp, out = PRICE[be]
    cost = (p * inp + c * out) / 1e6
    measured = rnd.random() < 0.1
    rec = UsageRecord(
        request_id=f"req-{i:08d}", endpoint="chat", requested="auto",
        route=rnd.choice(["chat", "code", "support", "batch", "rag"]), backend=be, model=be,
        team=f"team-{rnd.randint(0, 19):02d}", key_id=f"k{rnd.randint(0, 99)}",
        status=200 if rnd.random() < 0.97 else 502, stream=rnd.random() < 0.5,
        prompt_tokens=p, completion_tokens=c, cost_usd=cost, energy_j=0.02 * (p + c),
        energy_source="nvml" if measured else "profile", co2_g=0.002 * (p + c),
        bytes_sent=4 * p, bytes_received=4 * c + 300, ttft_ms=rnd.uniform(20, 900),
        latency_ms=rnd.uniform(60, 9000), attempts=1, reason="cheapest",
        decision={"policy": "cost", "predictions": {b: {"cost_usd": cost * (k + 1)}
                                                    for k, b in enumerate(PRICE)}},
        started_at=T0 + 90 * DAY * i / n, baseline="gpt-4o", cache="miss")
    rec.saved_routing_usd = (p * 2.5 + c * 10.0) / 1e6 - cost
    rec.saved_routing_energy_j = 0.01 * (p + c)
    if rnd.random() < 0.125:
        rec.cache = "hit-semantic" if rnd.random() < 0.25 else "hit-exact"
        rec.backend, rec.saved_cost_usd, rec.cost_usd = "cache", cost, 0.0
        rec.saved_energy_j, rec.saved_bytes, rec.saved_routing_usd = rec.energy_j, 4 * p, 0.0
        rec.cache_similarity, rec.energy_j = rnd.uniform(0.9, 1.0), 0.0
        rec.saved_co2_g, rec.co2_g = rec.co2_g, 0.0
    elif rnd.random() < 0.16:
        rec.compress, rec.compress_saved_tokens = "compressed", p // 2
        rec.saved_compress_usd = p // 2 * inp / 1e6
    if rec.route == "support" and rnd.random() < 0.33:
        rec.cascade_step, rec.judge_score = 2, rnd.random()
        rec.saved_cascade_usd, rec.saved_routing_usd = -cost, 0.0
    return rec


def rows(n: int, seed: int = 16) -> Iterator[tuple[Any, ...]]:
    rnd = random.Random(seed)
    for i in range(n):
        yield _row(_record(rnd, i, n))


def fill(ledger: Any, n: int) -> float:
    t0 = time.perf_counter()
    chunk: list[tuple[Any, ...]] = []
    for row in rows(n):
        chunk.append(row)
        if len(chunk) == 20_000:
            ledger._insert(chunk)
            chunk = []
    if chunk:
        ledger._insert(chunk)
    return time.perf_counter() - t0


CASES = [("all 90 days", Window()), ("last 7 days", Window(since=T0 + 83 * DAY)),
         ("one team, 90 days", Window(team="team-07"))]


def time_reports(ledger: Any) -> dict[str, dict[str, float]]:
    out = {}
    for wname, window in CASES:
        for group in ("backend", "team", "day"):
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                build(ledger, window, group)
                runs.append(time.perf_counter() - t0)
            out[f"{wname}, by {group}"] = {"first_s": runs[0], "best_s": min(runs)}
    return out


def bench_sqlite(n: int, where: Path, html: str | None) -> dict[str, Any]:
    ledger = SQLiteLedger(where / "ledger.sqlite3")
    fill_s = fill(ledger, n)
    res = time_reports(ledger)
    if html:
        from gateway.report_html import page

        Path(html).write_text(page(build(ledger, CASES[1][1], "route")), encoding="utf-8")
    ledger.close()
    return {"fill_s": fill_s, **res}


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """The URL of a database made for this run from ``admin_url``, dropped after it."""
    import psycopg

    name = f"switchyard_report_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def bench_postgres(n: int, admin_url: str) -> dict[str, Any]:
    from plugins.ledger_postgres import PostgresLedger

    with scratch_database(admin_url) as url:
        ledger = PostgresLedger(url, buffer_max=10)
        asyncio.run(ledger.start())
        fill_s = fill(ledger, n)
        ledger._conn.execute("ANALYZE requests")
        out = {"fill_s": fill_s, **time_reports(ledger)}
        ledger.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    ap.add_argument("--html", help="write the 7-day report page here")
    args = ap.parse_args()
    print(header(), flush=True)
    assert len(LEDGER_COLUMNS) == len(_row(UsageRecord("r", "chat", "auto")))
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"sqlite": lambda: bench_sqlite(args.rows, Path(tmp), args.html),
                "postgres": lambda: bench_postgres(args.rows, args.pg_url)}
        results = {kind: run() for kind, run in runs.items() if args.only in (None, kind)}
    kinds = list(results)
    print(f"{args.rows:,} rows; fill: " + ", ".join(
        f"{k} {results[k]['fill_s']:.0f} s" for k in kinds))
    print(f"{'report':34s}" + "".join(f"{k + ' best (first)':>24s}" for k in kinds))
    for name in results[kinds[0]]:
        if name != "fill_s":
            print(f"{name:34s}" + "".join(
                f"{results[k][name]['best_s']:>14.2f} s ({results[k][name]['first_s']:.2f})"
                for k in kinds))


if __name__ == "__main__":
    main()
