"""The PostgreSQL ledger on a real server (a database of each test's own): the numbered
migrations of the SQLite ledger, a ledger written by the previous schema, replicas that
start together, a failed step, and an outage that never fails the writer's caller."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from pg_support import db_url, drop_database
from support import wait_until

from gateway import LEDGER_COLUMNS, LEDGER_MIGRATIONS, UsageRecord
from plugins.ledger_postgres import PostgresLedger, PostgresSchema, migrate

PG_TYPES = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision"}


def _columns(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'requests' ORDER BY ordinal_position")]


def _version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM switchyard_ledger_schema").fetchone()
        assert row is not None
        return int(row[0])


def _started(ledger: PostgresLedger) -> PostgresLedger:
    asyncio.run(ledger.start())
    return ledger


def _old_ledger(url: str, version: int, rows: int = 3) -> None:
    """A ledger as a gateway of schema ``version`` left it, with ``rows`` requests."""
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, LEDGER_MIGRATIONS[:version]) == 0
        conn.cursor().executemany(
            "INSERT INTO requests (request_id, endpoint, requested, team, status, cost_usd, "
            "started_at) VALUES (%s, 'chat', 'tiny', 'red', 200, %s, %s)",
            [(f"old-{i}", 0.01 * i, 1000.0 + i) for i in range(rows)])


@pytest.mark.parametrize("previous", [1, len(LEDGER_MIGRATIONS) - 1])
def test_a_ledger_written_by_an_earlier_schema_migrates_and_keeps_its_rows(
        pg_url: str, previous: int) -> None:
    _old_ledger(pg_url, previous)
    assert _version(pg_url) == previous
    ledger = _started(PostgresLedger(pg_url, flush_interval_s=0.01))
    ledger.write(UsageRecord(request_id="new-1", endpoint="chat", requested="tiny", team="red",
                             cost_usd=0.5, decision={"chosen": "a"}))
    ledger.close()
    assert _version(pg_url) == len(LEDGER_MIGRATIONS)
    assert _columns(pg_url) == [(n, PG_TYPES[t]) for n, t in LEDGER_COLUMNS]
    rows = ledger.query("SELECT request_id, cost_usd, decision FROM requests ORDER BY started_at")
    assert [(r["request_id"], r["cost_usd"]) for r in rows] == [
        ("old-0", 0.0), ("old-1", 0.01), ("old-2", 0.02), ("new-1", 0.5)]
    assert rows[-1]["decision"] == '{"chosen":"a"}'


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    _old_ledger(pg_url, 1)
    start = threading.Barrier(6)

    def replica(_: int) -> int:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            start.wait()
            return migrate(conn)

    with ThreadPoolExecutor(6) as pool:  # a replica's exception is raised here
        found = list(pool.map(replica, range(6), timeout=60))
    assert sorted(found) == [1, *[len(LEDGER_MIGRATIONS)] * 5]  # one replica did the work
    assert _version(pg_url) == len(LEDGER_MIGRATIONS)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM switchyard_ledger_schema").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (3,)


def test_a_failed_step_leaves_the_ledger_as_it_was(pg_url: str) -> None:
    _old_ledger(pg_url, 1)

    def broken(db: Any) -> None:
        db.add_columns("requests", [("cascade_step", "INTEGER")])
        raise RuntimeError("disk full")

    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(RuntimeError):
        migrate(conn, [*LEDGER_MIGRATIONS, broken])
    assert _version(pg_url) == 1  # not even version 2 half-applied
    assert "cascade_step" not in dict(_columns(pg_url))
    assert "cache" not in dict(_columns(pg_url))


def test_each_step_is_idempotent(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate(conn)
        schema = PostgresSchema(conn)
        for step in LEDGER_MIGRATIONS:  # every step again, on the finished schema
            step(schema)
    assert _columns(pg_url) == [(n, PG_TYPES[t]) for n, t in LEDGER_COLUMNS]


def _record(i: int) -> UsageRecord:
    return UsageRecord(request_id=f"r-{i}", endpoint="chat", requested="m", team="red",
                       cost_usd=0.25)


def test_records_wait_for_a_database_that_is_away_then_land(pg_admin_url: str) -> None:
    """The database does not exist yet (as good as down): writes never raise or block;
    once it is there, the writer connects, migrates and writes everything it held."""
    name = f"switchyard_test_late_{threading.get_ident()}"
    url = db_url(pg_admin_url, name)
    ledger = PostgresLedger(url, flush_interval_s=0.01, connect_timeout_s=1)
    _started(ledger)  # not reachable: logged, not raised
    for i in range(50):
        ledger.write(_record(i))
    assert ledger.buffered == 50 and ledger.dropped == 0
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        wait_until(lambda: ledger.buffered == 0, timeout=60, what="the held records written")
        ledger.close()
        assert ledger.query("SELECT COUNT(*) AS n, SUM(cost_usd) AS usd FROM requests") == [
            {"n": 50, "usd": 12.5}]
        assert ledger.dropped == 0
    finally:
        ledger.close()
        drop_database(pg_admin_url, name)


def test_past_the_buffer_new_records_are_dropped_and_counted(pg_admin_url: str) -> None:
    url = db_url(pg_admin_url, "switchyard_test_never_there")
    ledger = PostgresLedger(url, flush_interval_s=0.01, buffer_max=20, connect_timeout_s=1)
    _started(ledger)
    for i in range(35):
        ledger.write(_record(i))  # never raises, never blocks
    wait_until(lambda: (ledger.buffered, ledger.dropped) == (20, 15), timeout=10,
               what="20 records held, 15 dropped")
    ledger.close()  # one last try, then what it held is given up, and counted
    assert ledger.dropped == 35 and ledger.buffered == 0


def _terminate_writer(url: str) -> int:
    """Ends the ledger writer's server session, as a PostgreSQL restart or a failover ends
    its clients' connections; returns how many it ended."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'switchyard-ledger' AND datname = current_database()"
        ).fetchone()
        return int(row[0]) if row else 0


def test_a_dropped_connection_loses_no_record_and_counts_none_twice(pg_url: str) -> None:
    ledger = _started(PostgresLedger(pg_url, flush_interval_s=0.01))
    try:
        for cut in range(3):  # the connection ends while batches are on their way
            for i in range(100 * cut, 100 * (cut + 1)):
                ledger.write(_record(i))
            # the writer may be between a failure and its reconnect: end its next session
            wait_until(lambda: _terminate_writer(pg_url), timeout=60, what="a writer session")
            wait_until(lambda: ledger.buffered == 0, timeout=60, what="the held records written")
    finally:
        ledger.close()
    assert ledger.dropped == 0
    assert ledger.query("SELECT COUNT(*) AS n, COUNT(DISTINCT request_id) AS ids, "
                        "SUM(cost_usd) AS usd FROM requests") == [{"n": 300, "ids": 300,
                                                                   "usd": 75.0}]
    assert ledger.query("SELECT SUM(calls) AS calls, SUM(cost_usd) AS usd FROM requests_daily"
                        ) == [{"calls": 300, "usd": 75.0}]
