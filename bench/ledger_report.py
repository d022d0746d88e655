"""The report's queries over a ledger of 1,000,000 rows, on SQLite and on PostgreSQL.

Fills one ledger of each kind with the same N rows (90 days, 20 teams, 5 routes, 6
backends, a decision of about 400 bytes per row, a cache hit in one row of eight), through
the ledgers' own schema and insert paths (``SQLiteLedger``, ``PostgresLedger``: the
migrations and indexes a gateway creates), then times each query of
``gateway.ledger_queries`` (best of 3, cold runs shown too) and one whole report: the
totals, the four group-bys (team, route, backend, day) and cost per day and backend.

    python bench/ledger_report.py [--rows 1000000] [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
                                  [--keep DIR] [--json out.json]

The PostgreSQL ledger goes into a database of its own (created, then dropped), and is
ANALYZEd once filled, as autovacuum would do; the SQLite file is left as the gateway
leaves it. Goal (issue 16): a report in at most 2 s on each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import header

from gateway import LEDGER_COLUMNS, SQLiteLedger
from gateway.ledger_queries import Window, grouped, totals
from plugins.ledger_postgres import PostgresLedger

NAMES = [n for n, _ in LEDGER_COLUMNS]
DAY = 86_400.0
T0 = 1_780_000_000.0  # a fixed start: the same rows every run


def rows(n: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    rnd = random.Random(seed)
    teams = [f"team-{i:02d}" for i in range(20)]
    routes = ["chat", "code", "support", "batch", "rag"]
    backends = ["smollm2", "vllm-8b", "gpt-4o-mini", "gpt-4o", "claude-haiku", "llama-70b"]
    for i in range(n):
        be = rnd.choice(backends)
        hit = rnd.random() < 0.125
        p, c = rnd.randint(20, 4000), rnd.randint(1, 800)
        cost = 0.0 if hit else (p * 0.15 + c * 0.6) / 1e6
        decision = json.dumps({"policy": "cost", "candidates": {
            b: {"cost_usd": cost * (k + 1), "latency_ms": 300.0 + 40 * k, "energy_j": 12.5 * k}
            for k, b in enumerate(backends)}})
        row = {
            "request_id": f"req-{i:08d}", "endpoint": "chat", "requested": "auto",
            "route": rnd.choice(routes), "backend": be, "model": be, "team": rnd.choice(teams),
            "key_id": f"key-{rnd.randint(0, 99)}", "status": 200 if rnd.random() < 0.97 else 429,
            "stream": rnd.randint(0, 1), "prompt_tokens": p, "completion_tokens": c,
            "cached_tokens": 0, "cost_usd": cost, "energy_j": 0.02 * (p + c),
            "energy_source": "profile", "co2_g": 0.002 * (p + c), "bytes_sent": 4 * p,
            "bytes_received": 4 * c + 300, "ttft_ms": rnd.uniform(50, 900),
            "latency_ms": rnd.uniform(100, 9000), "attempts": 1, "reason": "cheapest",
            "decision": decision, "started_at": T0 + 90 * DAY * i / n,
            "cache": "hit-exact" if hit else "miss",
            "saved_cost_usd": (p * 0.15 + c * 0.6) / 1e6 if hit else 0.0,
        }
        yield tuple(row.get(name) for name in NAMES)


def fill(insert: Callable[[list[tuple[Any, ...]]], None], n: int) -> float:
    t0 = time.perf_counter()
    chunk: list[tuple[Any, ...]] = []
    for row in rows(n):
        chunk.append(row)
        if len(chunk) == 20_000:
            insert(chunk)
            chunk = []
    if chunk:
        insert(chunk)
    return time.perf_counter() - t0


QUERIES: list[tuple[str, Callable[[Any], Any]]] = [
    ("totals, all 90 days", lambda L: totals(L)),
    ("totals, last 7 days", lambda L: totals(L, Window(since=T0 + 83 * DAY))),
    ("totals, one team", lambda L: totals(L, Window(team="team-07"))),
    ("by team", lambda L: grouped(L, ["team"])),
    ("by route", lambda L: grouped(L, ["route"])),
    ("by backend", lambda L: grouped(L, ["backend"])),
    ("by day", lambda L: grouped(L, ["day"])),
    ("by day, backend", lambda L: grouped(L, ["day", "backend"])),
    ("by day, one team, 30 days", lambda L: grouped(
        L, ["day"], Window(since=T0 + 60 * DAY, team="team-07"))),
]
REPORT = ["totals, all 90 days", "by team", "by route", "by backend", "by day",
          "by day, backend"]


def time_queries(ledger: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    expect = None
    for name, q in QUERIES:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            result = q(ledger)
            runs.append(time.perf_counter() - t0)
        if name == "totals, all 90 days":
            expect = result
        out[name] = {"first_s": runs[0], "best_s": min(runs)}
    out["_totals"] = expect  # type: ignore[assignment]
    return out


def bench_sqlite(n: int, where: Path) -> dict[str, Any]:
    path = where / "ledger.sqlite3"
    ledger = SQLiteLedger(path)
    fill_s = fill(ledger._insert, n)  # the writer thread's own insert, in bigger batches
    res = time_queries(ledger)
    ledger.close()
    return {"fill_s": fill_s, "bytes": path.stat().st_size, **res}


def bench_postgres(n: int, admin_url: str) -> dict[str, Any]:
    import psycopg

    db = f"switchyard_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    url = admin_url.rsplit("/", 1)[0] + "/" + db
    try:
        ledger = PostgresLedger(url, buffer_max=10)
        asyncio.run(ledger.start())
        fill_s = fill(ledger._insert, n)
        ledger._conn.execute("ANALYZE requests")
        size = ledger.query("SELECT pg_total_relation_size('requests') AS b")[0]["b"]
        res = time_queries(ledger)
        ledger.close()
        return {"fill_s": fill_s, "bytes": size, **res}
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="a database to CREATE DATABASE from (the ledger gets its own)")
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    ap.add_argument("--json")
    args = ap.parse_args()
    print(header())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "postgres":
            results["sqlite"] = bench_sqlite(args.rows, Path(tmp))
        if args.only != "sqlite":
            results["postgres"] = bench_postgres(args.rows, args.pg_url)
    kinds = list(results)
    print(f"{args.rows:,} rows; fill: " + ", ".join(
        f"{k} {results[k]['fill_s']:.0f} s ({results[k]['bytes'] / 1e6:.0f} MB)" for k in kinds))
    print(f"{'query':32s}" + "".join(f"{k + ' best (first)':>24s}" for k in kinds))
    for name, _ in QUERIES:
        print(f"{name:32s}" + "".join(
            f"{results[k][name]['best_s']:>14.3f} s ({results[k][name]['first_s']:.3f})"
            for k in kinds))
    for k in kinds:
        report = sum(results[k][q]["best_s"] for q in REPORT)
        results[k]["report_s"] = report
        print(f"one report ({', '.join(REPORT)}) on {k}: {report:.2f} s")
    if len(kinds) == 2:
        a, b = (results[k]["_totals"] for k in kinds)
        same = a.keys() == b.keys() and all(
            abs(a[m] - b[m]) <= 1e-6 * max(1.0, abs(a[m])) for m in a)
        print("same totals on both:", same)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
