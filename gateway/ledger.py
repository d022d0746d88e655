"""The durable ledger: every UsageRecord as a row, in SQLite (here) or another database
(a ``switchyard_register_ledgers`` plugin: the built-in PostgreSQL one, for many replicas).

Writes never run on the event loop: records go into a bounded buffer that a writer thread
(``BatchWriter``) drains in batches (one transaction per batch). A batch that fails (the
database is away) is kept and retried with backoff; past ``buffer_max`` records held, new
ones are dropped, counted (``dropped``, the ``switchyard_ledger_dropped_records`` metric)
and logged, and the request that made them is served all the same. ``close()`` drains the
buffer before it returns, so a clean shutdown with the database up loses nothing.

The schema has a version (SQLite's ``PRAGMA user_version``) and numbered migrations
(``MIGRATIONS``, version N is ``MIGRATIONS[N - 1]``). A step is dialect-neutral: it calls
a ``Schema`` (create a table, add columns, create an index), which each database renders in
its own SQL, so SQLite and PostgreSQL run the one list. Opening a ledger applies the missing
ones in one transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: under an advisory lock):
two replicas opening one ledger at once take turns, and the second finds the work done.
Each step is idempotent (``IF NOT EXISTS``, a column added only when missing), so a ledger
written before versions existed (version 0, the table already there) migrates too. A new
column goes at the end of ``COLUMNS`` and into a new migration that adds it
(``add_columns(db, "requests", ...)``); never edit a migration that has shipped.
"""

from __future__ import annotations

import logging
import operator
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

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
# version 3: prompt compression (its outcome, the prompt's tokens before it, what it saved,
# the compressor's time)
_V3_COMPRESS_COLUMNS: list[tuple[str, str]] = [
    ("compress", "TEXT"),
    ("prompt_tokens_original", "INTEGER"),
    ("compress_saved_tokens", "INTEGER"),
    ("compress_saved_bytes", "INTEGER"),
    ("compress_ms", "REAL"),
]
# version 4: the savings report (docs/report.md): the baseline backend, what routing,
# compression and a cascade saved against it (``gateway.savings``), a cascade row's step and
# its judge's score; an index on time for reports over every team
_V4_SAVINGS_COLUMNS: list[tuple[str, str]] = [
    ("baseline", "TEXT"),
    ("saved_routing_usd", "REAL"),
    ("saved_routing_energy_j", "REAL"),
    ("saved_routing_co2_g", "REAL"),
    ("saved_compress_usd", "REAL"),
    ("saved_compress_energy_j", "REAL"),
    ("saved_compress_co2_g", "REAL"),
    ("saved_cascade_usd", "REAL"),
    ("saved_cascade_energy_j", "REAL"),
    ("saved_cascade_co2_g", "REAL"),
    ("cascade_step", "INTEGER"),
    ("judge_score", "REAL"),
]
COLUMNS: list[tuple[str, str]] = [*_V1_COLUMNS, *_V2_CACHE_COLUMNS, *_V3_COMPRESS_COLUMNS,
                                  *_V4_SAVINGS_COLUMNS]
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


# version 5: ``requests_daily``, the report's summary: per UTC day (days since 1970) and
# team, route, backend, model, endpoint and energy source, the sums of ``DAILY_SUMS``, kept
# by the writer in the same transaction as the rows it sums (LiteLLM keeps daily spend
# tables likewise), so a report over months reads thousands of rows, not millions.
# ``DAILY_SUMS``: name -> what one row adds, in the SQL both SQLite and PostgreSQL speak.
DAILY_KEYS: list[tuple[str, str]] = [
    ("day", "INTEGER"), ("team", "TEXT"), ("route", "TEXT"), ("backend", "TEXT"),
    ("model", "TEXT"), ("endpoint", "TEXT"), ("energy_source", "TEXT"),
]
_HIT = "cache LIKE 'hit%'"
DAILY_SUMS: dict[str, str] = {
    "requests": "CASE WHEN cascade_step IS NULL OR cascade_step = 1 THEN 1 ELSE 0 END",
    "calls": "1",
    "succeeded": "CASE WHEN status = 200 THEN 1 ELSE 0 END",
    "cache_hits": f"CASE WHEN {_HIT} THEN 1 ELSE 0 END",
    "cache_lookups": "CASE WHEN cache IS NOT NULL AND cache <> 'bypass' THEN 1 ELSE 0 END",
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "cost_usd": "cost_usd",
    "energy_j": "energy_j",
    "energy_measured_j": "CASE WHEN energy_source NOT IN ('profile', 'none') THEN energy_j "
                         "ELSE 0 END",
    "co2_g": "co2_g",
    "bytes": "bytes_sent + bytes_received",
    "saved_cost_usd": "saved_cost_usd",
    "saved_energy_j": "saved_energy_j",
    "saved_co2_g": "saved_co2_g",
    "saved_bytes": "saved_bytes",
    "compress_saved_tokens": "compress_saved_tokens",
    "compress_saved_bytes": "compress_saved_bytes",
    **{c: c for c, _ in _V4_SAVINGS_COLUMNS if c.startswith("saved_")},
}
DAILY_INTEGERS = frozenset({"requests", "calls", "succeeded", "cache_hits", "cache_lookups",
                            "prompt_tokens", "completion_tokens", "bytes", "saved_bytes",
                            "compress_saved_tokens", "compress_saved_bytes"})
# the dialect shim of the schema: the UTC day number of ``started_at``
DAY_NUMBER = {"sqlite": "CAST(started_at / 86400 AS INTEGER)",
              "postgres": "CAST(FLOOR(started_at / 86400) AS BIGINT)"}


def daily_upsert(dialect: str, source: str) -> str:
    """Adds the rows of ``source`` (``requests``, or a batch's table of the same columns)
    into ``requests_daily``: one statement, the same on both dialects but the day."""
    keys = [k for k, _ in DAILY_KEYS]
    exprs = [DAY_NUMBER[dialect], *(f"COALESCE({k}, '')" for k in keys[1:]),
             *(f"COALESCE(SUM({e}), 0)" for e in DAILY_SUMS.values())]
    nums = ", ".join(str(i + 1) for i in range(len(keys)))
    sets = ", ".join(f"{n} = requests_daily.{n} + excluded.{n}" for n in DAILY_SUMS)
    return (f"INSERT INTO requests_daily ({', '.join([*keys, *DAILY_SUMS])}) "
            f"SELECT {', '.join(exprs)} FROM {source} WHERE true GROUP BY {nums} ORDER BY {nums} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}")


BATCH_TABLE = "ledger_batch"  # a connection's temporary table: one batch on its way in
# a batch lands in the temporary table, then goes into ``requests`` and ``requests_daily``
BATCH_MOVE = (f"INSERT INTO requests ({', '.join(_NAMES)}) "
              f"SELECT {', '.join(_NAMES)} FROM {BATCH_TABLE}")


class Schema(Protocol):
    """What a migration step may do, in any database: each ledger kind renders these in its
    own SQL (column kinds are SQLite's ``TEXT``, ``INTEGER``, ``REAL``), each idempotent.
    ``dialect`` and ``execute`` are for a step's data changes, in SQL both dialects speak
    (or picked from a per-dialect dict such as ``DAY_NUMBER``)."""

    dialect: str

    def create_table(self, table: str, columns: Iterable[tuple[str, str]]) -> None: ...

    def add_columns(self, table: str, columns: Iterable[tuple[str, str]]) -> None: ...

    def create_index(self, name: str, table: str, columns: Sequence[str],
                     unique: bool = False) -> None: ...

    def execute(self, sql: str) -> None: ...


Migration = Callable[[Schema], None]


def add_columns(db: Schema, table: str, columns: Iterable[tuple[str, str]]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each column the table lacks (idempotent)."""
    db.add_columns(table, columns)


class SQLiteSchema:
    """``Schema`` in SQLite's SQL, on a connection inside the migration's transaction."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def create_table(self, table: str, columns: Iterable[tuple[str, str]]) -> None:
        cols = ", ".join(f"{n} {t}" for n, t in columns)
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")

    def add_columns(self, table: str, columns: Iterable[tuple[str, str]]) -> None:
        have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in have:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def create_index(self, name: str, table: str, columns: Sequence[str],
                     unique: bool = False) -> None:
        self.conn.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {name} "
                          f"ON {table}({', '.join(columns)})")


def _v1_requests(db: Schema) -> None:
    # request_id is not the key: a client may send its own x-request-id twice, and the
    # ledger must keep both rows (a batch is one transaction, so a retry never duplicates)
    db.create_table("requests", _V1_COLUMNS)
    db.create_index("requests_request_id", "requests", ["request_id"])
    db.create_index("requests_team_time", "requests", ["team", "started_at"])


def _v2_cache(db: Schema) -> None:
    add_columns(db, "requests", _V2_CACHE_COLUMNS)


def _v3_compress(db: Schema) -> None:
    add_columns(db, "requests", _V3_COMPRESS_COLUMNS)


def _v4_savings(db: Schema) -> None:
    add_columns(db, "requests", _V4_SAVINGS_COLUMNS)
    db.create_index("requests_time", "requests", ["started_at"])


def _v5_daily(db: Schema) -> None:
    sums = [(n, "INTEGER" if n in DAILY_INTEGERS else "REAL") for n in DAILY_SUMS]
    db.create_table("requests_daily", [*DAILY_KEYS, *sums])
    db.create_index("requests_daily_key", "requests_daily", [k for k, _ in DAILY_KEYS],
                    unique=True)
    db.execute("DELETE FROM requests_daily")  # run again, it sums the rows once
    db.execute(daily_upsert(db.dialect, "requests"))  # what the ledger held before


MIGRATIONS: list[Migration] = [_v1_requests, _v2_cache, _v3_compress, _v4_savings, _v5_daily]


def apply_migrations(db: Schema, found: int, set_version: Callable[[int], object],
                     migrations: Sequence[Migration] = MIGRATIONS) -> None:
    """Runs the steps after version ``found`` in order, recording each version as it goes;
    the caller holds the transaction (and the lock), so a failed step undoes them all."""
    for version in range(found + 1, len(migrations) + 1):
        migrations[version - 1](db)
        set_version(version)
    if found < len(migrations):
        log.info("ledger schema migrated from version %d to %d", found, len(migrations))
    elif found > len(migrations):  # a newer replica's ledger: it only added columns
        log.info("ledger schema version %d is newer than this code's %d", found,
                 len(migrations))


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Brings a SQLite ledger's schema to ``len(migrations)``; returns the version it found.
    One transaction: a failed step leaves the file as it was. ``conn`` is in autocommit mode
    (``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")  # the write lock first: a second opener waits here
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        apply_migrations(SQLiteSchema(conn), found,
                         lambda v: conn.execute(f"PRAGMA user_version = {v}"), migrations)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


_BATCH = 1000  # rows per transaction
_WAKE_AT = _BATCH  # records queued that wake the writer before its interval is out


class BatchWriter:
    """The writer side every ledger shares: ``write`` puts a record in a buffer (never
    blocks, never raises); a thread wakes every ``flush_interval_s``, converts what is
    queued to rows and hands them to ``_insert`` in batches of up to 1,000, one transaction
    each. It sleeps between flushes rather than waiting on the queue: a thread woken by each
    record wrote one-row transactions at low traffic (at one connection, a transaction, its
    daily-sums upsert and a GIL hand-off per request), where a batch per interval costs the
    same at any rate. It wakes early when ``_WAKE_AT`` records (or half of ``buffer_max``)
    are queued, and at ``close``. A batch that fails is kept and retried with backoff (1 s
    doubling to 30 s, after ``_reset``; new records do not cut the wait short); while it
    fails, records pile up to ``buffer_max``, and past it new ones are dropped, counted in
    ``dropped`` and logged (one line when dropping starts, one when writing resumes). A
    subclass provides ``_open`` (connect and migrate; called before the first insert and
    after a reset), ``_insert`` and, if it holds a connection, ``_reset`` and
    ``_shutdown``."""

    dialect = "sqlite"  # the SQL its ``query`` speaks: "sqlite" or "postgres"

    def __init__(self, flush_interval_s: float, buffer_max: int, name: str) -> None:
        self._q: queue.SimpleQueue[UsageRecord | None] = queue.SimpleQueue()
        self._interval = flush_interval_s
        self._max = buffer_max
        self._held = 0  # rows the thread holds, not yet written
        self._dropped_full = 0  # by ``write`` (the event loop's thread)
        self._dropped_held = 0  # by the writer thread
        self._dropping = False
        self._opened = False
        self._closed = False
        # enough queued to write now: the writer wakes before its interval is out
        self._wake_at = max(1, min(_WAKE_AT, buffer_max // 2))
        self._wake = threading.Event()  # set by ``write`` at ``_wake_at``, and by ``close``
        self._closing = threading.Event()  # set by ``close``: ends a backoff wait too
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def dropped(self) -> int:
        """Records given up since start (the database was away and the buffer full)."""
        return self._dropped_full + self._dropped_held

    @property
    def buffered(self) -> int:
        """Records waiting to be written."""
        return self._q.qsize() + self._held

    def write(self, rec: UsageRecord) -> None:
        """Queue one record; never blocks on the database, never raises."""
        queued = self._q.qsize()
        if queued + self._held >= self._max:
            self._dropped_full += 1
            if not self._dropping:
                self._dropping = True
                log.error("ledger buffer full (%d records): dropping new records until the "
                          "database takes writes again", self._max)
            return
        self._q.put(rec)
        if queued + 1 >= self._wake_at and not self._wake.is_set():  # the writer clears it
            self._wake.set()

    def _open(self) -> None:
        return None

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        return None

    def _shutdown(self) -> None:
        return None

    def _take(self, rows: list[tuple[Any, ...]], wait: float, backoff: bool) -> bool:
        """Sleeps ``wait`` s (less when woken: by ``close``, or by a full batch unless
        ``backoff``), then moves what is queued into ``rows``; True when ``close`` was
        called."""
        (self._closing if backoff else self._wake).wait(wait)
        self._wake.clear()  # records queued from here on wake it again at ``_wake_at``
        try:
            item = self._q.get_nowait()
        except queue.Empty:
            return False
        while item is not None:
            if len(rows) < self._max:
                rows.append(_row(item))
                self._held = len(rows)
            else:
                self._dropped_held += 1
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
        self._held = len(rows)
        return item is None

    def _flush(self, rows: list[tuple[Any, ...]]) -> bool:
        """Writes ``rows`` in batches, removing each batch once committed; False (rows
        kept) when the database refuses."""
        try:
            if not self._opened:
                self._open()
                self._opened = True
            while rows:
                self._insert(rows[:_BATCH])
                del rows[:_BATCH]
                self._held = len(rows)
        except Exception as e:  # noqa: BLE001 - the database's problem, never the request's
            log.warning("ledger write failed (%s: %s); %d records held, retrying",
                        type(e).__name__, e, len(rows))
            self._opened = False
            self._reset()
            return False
        if self._dropping:
            self._dropping = False
            log.warning("ledger writes resumed; %d records dropped so far", self.dropped)
        return True

    def _run(self) -> None:
        rows: list[tuple[Any, ...]] = []
        closing, backoff = False, 0.0
        if not self._flush(rows):  # connect and migrate first (a no-op once open)
            backoff = 1.0
        while True:
            closing = self._take(rows, backoff or self._interval, backoff > 0) or closing
            if rows and not self._flush(rows):
                backoff = min(30.0, max(1.0, backoff * 2))
                if closing:  # one last try failed: what is held is lost, and said so
                    self._dropped_held += len(rows)
                    log.error("ledger closed with the database away: %d records dropped",
                              len(rows))
                    rows.clear()
            else:
                backoff = 0.0
            self._held = len(rows)
            if closing and not rows:
                break
        self._shutdown()

    async def start(self) -> None:
        return None

    def close(self) -> None:
        """Writes what is buffered (one last try when the database is away), then stops."""
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():  # never started: what was queued cannot be written
            return
        self._q.put(None)
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=60)


_INSERT_BATCH = _INSERT.replace("INSERT INTO requests", f"INSERT INTO {BATCH_TABLE}", 1)
_DAILY_SQLITE = daily_upsert("sqlite", BATCH_TABLE)


class Ledger(BatchWriter):
    """SQLite ledger with a background writer thread (``ledger: {kind: sqlite}``)."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.25,
                 buffer_max: int = 100_000) -> None:
        super().__init__(flush_interval_s, buffer_max, "switchyard-ledger")
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._connect()
        self._opened = True
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                               timeout=30)  # another replica may be migrating the same file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
        SQLiteSchema(conn).create_table(f"temp.{BATCH_TABLE}", COLUMNS)
        return conn

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(_INSERT_BATCH, rows)
            self._conn.execute(BATCH_MOVE)
            self._conn.execute(_DAILY_SQLITE)
            self._conn.execute(f"DELETE FROM {BATCH_TABLE}")

    def _shutdown(self) -> None:
        self._conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read rows (a fresh connection, so reads never wait behind the writer thread)."""
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()
