"""The durable ledger: every UsageRecord as a row in SQLite.

Writes never run on the event loop: records go into a queue that a writer thread drains in
batches (one transaction per batch, WAL mode). ``close()`` drains the queue before it
returns, so a clean shutdown loses nothing.

The schema has a version (SQLite's ``PRAGMA user_version``) and numbered migrations
(``MIGRATIONS``, version N is ``MIGRATIONS[N - 1]``). Opening a ledger applies the missing
ones in one ``BEGIN IMMEDIATE`` transaction: two replicas opening one file at once take
turns, and the second finds the work done. Each step is idempotent (``IF NOT EXISTS``, a
column added only when missing), so a ledger written before versions existed (version 0,
the table already there) migrates too. A new column goes at the end of ``COLUMNS`` and into
a new migration that adds it; never edit a migration that has shipped.
"""

from __future__ import annotations

import logging
import operator
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.accounting import UsageRecord

log = logging.getLogger("switchyard.ledger")

_V1_COLUMNS: list[tuple[str, str]] = [
    ("request_id", "TEXT"),
    ("endpoint", "TEXT"),
    ("requested", "TEXT"),
    ("route", "TEXT"),
    ("backend", "TEXT"),
    ("model", "TEXT"),
    ("team", "TEXT"),
    ("key_id", "TEXT"),
    ("status", "INTEGER"),
    ("error_code", "TEXT"),
    ("stream", "INTEGER"),
    ("prompt_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("cached_tokens", "INTEGER"),
    ("cost_usd", "REAL"),
    ("energy_j", "REAL"),
    ("energy_source", "TEXT"),
    ("co2_g", "REAL"),
    ("bytes_sent", "INTEGER"),
    ("bytes_received", "INTEGER"),
    ("ttft_ms", "REAL"),
    ("latency_ms", "REAL"),
    ("attempts", "INTEGER"),
    ("reason", "TEXT"),
    ("decision", "TEXT"),
    ("started_at", "REAL"),
]
# version 2: the response cache (a hit, its entry, and what the call that stored it cost)
_V2_CACHE_COLUMNS: list[tuple[str, str]] = [
    ("cache", "TEXT"),
    ("cache_entry", "TEXT"),
    ("cache_similarity", "REAL"),
    ("saved_cost_usd", "REAL"),
    ("saved_energy_j", "REAL"),
    ("saved_co2_g", "REAL"),
    ("saved_bytes", "INTEGER"),
]
# every column the ledger writes: version 1's, then each later migration's, in order
COLUMNS: list[tuple[str, str]] = [*_V1_COLUMNS, *_V2_CACHE_COLUMNS]
_NAMES = [c for c, _ in COLUMNS]
_INSERT = (
    f"INSERT INTO requests ({', '.join(_NAMES)}) "
    f"VALUES ({', '.join('?' for _ in _NAMES)})"
)


_GET = operator.attrgetter(*_NAMES)
_STREAM, _DECISION = _NAMES.index("stream"), _NAMES.index("decision")


def _row(rec: UsageRecord) -> tuple[Any, ...]:
    row = list(_GET(rec))  # attrgetter, not dataclasses.asdict: this runs for every request
    row[_STREAM] = int(row[_STREAM])
    if row[_DECISION] is not None:
        row[_DECISION] = orjson.dumps(row[_DECISION]).decode()
    return tuple(row)


Migration = Callable[[sqlite3.Connection], None]


def add_columns(conn: sqlite3.Connection, table: str, columns: Iterable[tuple[str, str]]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each column the table lacks (idempotent)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns:
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _v1_requests(conn: sqlite3.Connection) -> None:
    cols = ", ".join(f"{n} {t}" for n, t in _V1_COLUMNS)
    # request_id is not the key: a client may send its own x-request-id twice, and the
    # ledger must keep both rows (a batch is one transaction, so a retry never duplicates)
    conn.execute(f"CREATE TABLE IF NOT EXISTS requests ({cols})")
    conn.execute("CREATE INDEX IF NOT EXISTS requests_request_id ON requests(request_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS requests_team_time ON requests(team, started_at)")


def _v2_cache(conn: sqlite3.Connection) -> None:
    add_columns(conn, "requests", _V2_CACHE_COLUMNS)


MIGRATIONS: list[Migration] = [_v1_requests, _v2_cache]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Brings the schema to ``len(migrations)``; returns the version it found. One
    transaction: a failed step leaves the file as it was. ``conn`` is in autocommit mode
    (``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")  # the write lock first: a second opener waits here
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for version in range(found + 1, len(migrations) + 1):
            migrations[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if found < len(migrations):
        log.info("ledger schema migrated from version %d to %d", found, len(migrations))
    elif found > len(migrations):  # a newer replica's ledger: it only added columns
        log.info("ledger schema version %d is newer than this code's %d", found,
                 len(migrations))
    return found


class Ledger:
    """SQLite ledger with a background writer thread."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.25) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._q: queue.SimpleQueue[UsageRecord | None] = queue.SimpleQueue()
        self._interval = flush_interval_s
        self._conn = self._connect()
        self._thread = threading.Thread(target=self._run, name="switchyard-ledger", daemon=True)
        self._thread.start()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                               timeout=30)  # another replica may be migrating the same file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
        return conn

    def write(self, rec: UsageRecord) -> None:
        """Queue one record; never blocks on disk."""
        self._q.put(rec)

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[UsageRecord] = []
            try:
                item = self._q.get(timeout=self._interval)
            except queue.Empty:
                continue
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                if len(batch) >= 1000:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._flush(batch)

    def _flush(self, batch: Iterable[UsageRecord]) -> None:
        rows = [_row(r) for r in batch]
        for attempt in range(5):
            try:
                with self._conn:
                    self._conn.execute("BEGIN")
                    self._conn.executemany(_INSERT, rows)
                return
            except sqlite3.OperationalError as e:  # locked by another replica: retry
                log.warning("ledger write failed (%s), retrying", e)
                threading.Event().wait(0.05 * (attempt + 1))
        log.error("ledger write failed 5 times; %d records kept in memory", len(rows))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=30)
        self._conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read rows (a fresh connection, so reads never wait behind the writer thread)."""
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()
