"""The report's queries (``gateway.ledger_queries``) give the same answers on both ledger
kinds, equal to sums over the records written: one contract, run on SQLite and on a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway import LEDGER_COLUMNS, LEDGER_MIGRATIONS, LedgerStore, SQLiteLedger, UsageRecord
from gateway.ledger import _row, migrate
from gateway.ledger_queries import GROUPS, Window, grouped, totals
from plugins.ledger_postgres import PostgresLedger
from plugins.ledger_postgres import migrate as pg_migrate

DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def _records(n: int = 300) -> list[UsageRecord]:
    rnd = random.Random(3)
    out = []
    for i in range(n):
        hit = i % 7 == 0
        out.append(UsageRecord(
            request_id=f"r{i}", endpoint="chat", requested="auto",
            route=rnd.choice(["chat", "code", None]), backend=rnd.choice(["a", "b", "c"]),
            model="m", team=rnd.choice(["red", "blue"]), status=200 if i % 11 else 429,
            prompt_tokens=rnd.randint(1, 500), completion_tokens=rnd.randint(0, 300),
            cost_usd=round(rnd.random() / 100, 6), energy_j=rnd.random() * 50,
            co2_g=rnd.random(), bytes_sent=rnd.randint(100, 900), bytes_received=rnd.randint(1, 90),
            cache="hit-exact" if hit else "miss", saved_cost_usd=0.01 if hit else 0.0,
            started_at=T0 + rnd.random() * 5 * DAY))
    return out


RECORDS = _records()


def _previous_schema(kind: str, where: str) -> None:
    """A ledger the previous schema wrote (before the daily table): every record in it."""
    rows = [_row(r) for r in RECORDS]
    cols = ", ".join(n for n, _ in LEDGER_COLUMNS)
    if kind == "sqlite":
        conn = sqlite3.connect(where, isolation_level=None)
        migrate(conn, LEDGER_MIGRATIONS[:-1])
        conn.executemany(f"INSERT INTO requests ({cols}) VALUES "
                         f"({', '.join('?' for _ in LEDGER_COLUMNS)})", rows)
        conn.close()
        return
    with psycopg.connect(where, autocommit=True) as pg:
        pg_migrate(pg, LEDGER_MIGRATIONS[:-1])
        with pg.cursor() as cur, cur.copy(f"COPY requests ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


@pytest.fixture(params=["sqlite", "postgres", "sqlite, previous schema",
                        "postgres, previous schema"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    kind, _, previous = request.param.partition(", ")
    where = str(tmp_path / "ledger.sqlite3") if kind == "sqlite" else request.getfixturevalue(
        "pg_url")
    if previous:  # the migration sums what the ledger held into the daily table
        _previous_schema(kind, where)
    made: LedgerStore = (SQLiteLedger(where, flush_interval_s=0.01) if kind == "sqlite"
                         else PostgresLedger(where, flush_interval_s=0.01))
    asyncio.run(made.start())
    if not previous:
        for rec in RECORDS:
            made.write(rec)
    made.close()  # drained: every record is in
    yield made


def _expected(recs: list[UsageRecord]) -> dict[str, Any]:
    return {
        "requests": len(recs), "calls": len(recs), "succeeded": sum(r.status == 200 for r in recs),
        "cache_hits": sum((r.cache or "").startswith("hit") for r in recs),
        "prompt_tokens": sum(r.prompt_tokens for r in recs),
        "completion_tokens": sum(r.completion_tokens for r in recs),
        "cost_usd": sum((r.cost_usd for r in recs), 0.0), "energy_j": sum((r.energy_j for r in recs), 0.0),
        "bytes": sum(r.bytes_sent + r.bytes_received for r in recs),
        "saved_cost_usd": sum((r.saved_cost_usd for r in recs), 0.0),
    }


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k
        assert type(got[k]) is type(v), k  # ints stay ints (no Decimal), sums of reals floats


def test_totals_over_a_window_equal_the_records(ledger: LedgerStore) -> None:
    _same(totals(ledger), _expected(RECORDS))
    w = Window(since=T0 + DAY, until=T0 + 3 * DAY, team="red")
    inside = [r for r in RECORDS if w.since <= r.started_at < w.until and r.team == "red"]  # type: ignore[operator]
    _same(totals(ledger, w), _expected(inside))
    _same(totals(ledger, Window(since=T0 + 10 * DAY)), _expected([]))  # empty: zeros, not None


@pytest.mark.parametrize(("since", "until"), [(0.5, 3.7), (1.25, 1.75), (None, 2.5), (3.2, None)])
def test_windows_that_cut_days_count_each_row_once(
        ledger: LedgerStore, since: float | None, until: float | None) -> None:
    """Whole days come from the daily table, the part-days from the rows: never both."""
    w = Window(since=None if since is None else T0 + since * DAY,
               until=None if until is None else T0 + until * DAY, route="chat")
    inside = [r for r in RECORDS if r.route == "chat"
              and (w.since is None or r.started_at >= w.since)
              and (w.until is None or r.started_at < w.until)]
    _same(totals(ledger, w), _expected(inside))
    by_team = {g["team"]: g for g in grouped(ledger, ["team"], w)}
    for team in ("red", "blue"):
        _same(by_team[team], _expected([r for r in inside if r.team == team]))


@pytest.mark.parametrize("by", [["team"], ["route"], ["backend"], ["day"], ["day", "backend"]])
def test_groups_equal_the_records(ledger: LedgerStore, by: list[str]) -> None:
    def key(r: UsageRecord) -> tuple[Any, ...]:
        day = datetime.fromtimestamp(r.started_at, UTC).strftime("%Y-%m-%d")
        return tuple(day if g == "day" else getattr(r, GROUPS[g]) for g in by)

    want: dict[tuple[Any, ...], list[UsageRecord]] = defaultdict(list)
    for r in RECORDS:
        want[key(r)].append(r)
    rows = grouped(ledger, by)
    assert {tuple(row[g] for g in by) for row in rows} == set(want)
    for row in rows:
        _same(row, _expected(want[tuple(row[g] for g in by)]))


def test_an_unknown_group_is_refused(ledger: LedgerStore) -> None:
    with pytest.raises(ValueError, match="group by"):
        grouped(ledger, ["colour"])
