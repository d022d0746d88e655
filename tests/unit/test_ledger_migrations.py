"""Ledger schema versions: a ledger written by an older schema opens, keeps its rows and
gains what the migrations add; two replicas opening one file at once are safe."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.accounting import UsageRecord
from gateway.ledger import COLUMNS, MIGRATIONS, Ledger, Migration, add_columns, migrate

# the statements the ledger ran before it had schema versions, verbatim
UNVERSIONED = [
    ("CREATE TABLE IF NOT EXISTS requests (request_id TEXT, endpoint TEXT, requested TEXT, "
    "route TEXT, backend TEXT, model TEXT, team TEXT, key_id TEXT, status INTEGER, "
    "error_code TEXT, stream INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, "
    "cached_tokens INTEGER, cost_usd REAL, energy_j REAL, energy_source TEXT, co2_g REAL, "
    "bytes_sent INTEGER, bytes_received INTEGER, ttft_ms REAL, latency_ms REAL, "
    "attempts INTEGER, reason TEXT, decision TEXT, started_at REAL)"),
    "CREATE INDEX IF NOT EXISTS requests_request_id ON requests(request_id)",
    "CREATE INDEX IF NOT EXISTS requests_team_time ON requests(team, started_at)",
]


def _old_ledger(path: Path, rows: int = 3) -> None:
    conn = sqlite3.connect(path)
    for stmt in UNVERSIONED:
        conn.execute(stmt)
    conn.executemany(
        "INSERT INTO requests (request_id, endpoint, requested, team, status, cost_usd, "
        "started_at) VALUES (?, 'chat', 'tiny', 'red', 200, ?, ?)",
        [(f"old-{i}", 0.01 * i, 1000.0 + i) for i in range(rows)])
    conn.commit()
    conn.close()


def _read(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _columns(path: Path) -> list[tuple[str, str]]:
    return [(r[1], r[2]) for r in _read(path, "PRAGMA table_info(requests)")]  # type: ignore[misc]


def test_a_ledger_of_the_unversioned_schema_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _old_ledger(path)
    assert _read(path, "PRAGMA user_version") == [(0,)]
    ledger = Ledger(path, flush_interval_s=0.01)
    ledger.write(UsageRecord(request_id="new-1", endpoint="chat", requested="tiny", team="red"))
    ledger.close()
    assert _read(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert _columns(path) == COLUMNS
    rows = _read(path, "SELECT request_id, cost_usd FROM requests ORDER BY started_at")
    assert rows[:3] == [("old-0", 0.0), ("old-1", 0.01), ("old-2", 0.02)]
    assert [r[0] for r in rows] == ["old-0", "old-1", "old-2", "new-1"]


def _with_column(name: str) -> list[Migration]:
    def step(conn: sqlite3.Connection) -> None:
        add_columns(conn, "requests", [(name, "INTEGER")])
    return [*MIGRATIONS, step]


def test_a_new_migration_adds_its_column_to_an_existing_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _old_ledger(path)
    Ledger(path).close()  # today's schema, as a replica of the current version leaves it
    migrations = _with_column("cache_hit")
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, migrations) == len(MIGRATIONS)
    assert migrate(conn, migrations) == len(migrations)  # nothing left to do: a no-op
    conn.execute("PRAGMA user_version = 0")  # every step again: each one is idempotent
    assert migrate(conn, migrations) == 0
    conn.close()
    assert _read(path, "PRAGMA user_version") == [(len(migrations),)]
    assert _columns(path) == [*COLUMNS, ("cache_hit", "INTEGER")]
    assert _read(path, "SELECT COUNT(*), COUNT(cache_hit) FROM requests") == [(3, 0)]


def test_a_failed_migration_leaves_the_ledger_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _old_ledger(path)

    def broken(conn: sqlite3.Connection) -> None:
        add_columns(conn, "requests", [("cascade_step", "INTEGER")])
        raise sqlite3.OperationalError("disk I/O error")

    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        migrate(conn, [*MIGRATIONS, broken])
    conn.close()
    assert _read(path, "PRAGMA user_version") == [(0,)]  # not even version 1 half-applied
    assert "cascade_step" not in dict(_columns(path))
    assert _read(path, "SELECT COUNT(*) FROM requests") == [(3,)]


def test_replicas_opening_one_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _old_ledger(path)
    migrations = _with_column("savings_usd")
    start = threading.Barrier(6)
    found: list[int] = []
    failures: list[BaseException] = []

    def replica() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            start.wait()
            found.append(migrate(conn, migrations))
        except BaseException as e:  # noqa: BLE001 - the assertion below reports it
            failures.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert sorted(found) == [0, *[len(migrations)] * 5]  # one replica did the work
    assert _columns(path) == [*COLUMNS, ("savings_usd", "INTEGER")]
    assert _read(path, "SELECT COUNT(*) FROM requests") == [(3,)]
