"""``ledger: {kind: postgres, url: postgresql://user:password@host:5432/db}``: one ledger
for many replicas (docs/ledger.md).

The driver is psycopg 3 (``pip install 'switchyard[postgres]'``), imported only when this
kind is configured. Each replica writes from its own thread (``gateway.BatchWriter``): a
batch of up to 1,000 rows is one ``COPY requests FROM STDIN`` in one transaction, so the
event loop never waits on PostgreSQL and a batch lands whole or not at all. While the
database is away, batches are kept and retried (backoff up to 30 s) and new records are
buffered up to ``ledger.buffer_max``; past it they are dropped, counted
(``switchyard_ledger_dropped_records``) and logged. Requests are served either way.

The schema is the SQLite ledger's (``gateway.LEDGER_MIGRATIONS``, one list), rendered here
in PostgreSQL's types (``INTEGER`` -> ``BIGINT``, ``REAL`` -> ``DOUBLE PRECISION``); its
version is the one row of ``switchyard_ledger_schema``. Migrations run in one transaction
under a transaction-level advisory lock, so replicas starting together migrate once: the
others wait on the lock and find the work done. A failed step rolls back whole (DDL is
transactional in PostgreSQL).

``query`` takes the SQLite-flavoured SQL of ``gateway.ledger_queries`` (``?``
placeholders) and returns plain ``int``/``float`` where PostgreSQL's ``SUM`` of a
``BIGINT`` gives a ``numeric``. The URL is a secret: it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from gateway import (
    LEDGER_BATCH_MOVE,
    LEDGER_BATCH_TABLE,
    LEDGER_COLUMNS,
    LEDGER_MIGRATIONS,
    BatchWriter,
    LedgerConfig,
    LedgerSchema,
    RegisterLedger,
    apply_ledger_migrations,
    daily_upsert,
    hookimpl,
)

BATCH_TABLE, BATCH_MOVE = LEDGER_BATCH_TABLE, LEDGER_BATCH_MOVE

log = logging.getLogger("switchyard.ledger")

_TYPES = {"TEXT": "TEXT", "INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION"}
LOCK_KEY = 0x5357_4C45_4447_4552  # "SWLEDGER": the advisory lock migrations run under
VERSION_TABLE = "switchyard_ledger_schema"
_COPY = f"COPY {BATCH_TABLE} ({', '.join(n for n, _ in LEDGER_COLUMNS)}) FROM STDIN"
_DAILY = daily_upsert("postgres", BATCH_TABLE)


class PostgresSchema:
    """``gateway.LedgerSchema`` in PostgreSQL's SQL (every statement idempotent)."""

    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)  # no parameters: a ``%`` in it is sent as it is

    def create_table(self, table: str, columns: Iterable[tuple[str, str]]) -> None:
        cols = ", ".join(f"{n} {_TYPES[t]}" for n, t in columns)
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")

    def add_columns(self, table: str, columns: Iterable[tuple[str, str]]) -> None:
        for name, kind in columns:
            self.conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {_TYPES[kind]}")

    def create_index(self, name: str, table: str, columns: Sequence[str],
                     unique: bool = False) -> None:
        self.conn.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {name} "
                          f"ON {table} ({', '.join(columns)})")


def migrate(conn: Any, migrations: Sequence[Any] = LEDGER_MIGRATIONS) -> int:
    """Brings the schema to ``len(migrations)`` under the advisory lock, in one transaction
    (``conn`` in autocommit mode); returns the version it found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        if row is None:
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (0)")
        found = 0 if row is None else int(row[0])
        schema: LedgerSchema = PostgresSchema(conn)
        apply_ledger_migrations(
            schema, found,
            lambda v: conn.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (v,)), migrations)
    return found


def to_pyformat(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). The
    ledger's queries carry no ``?`` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class PostgresLedger(BatchWriter):
    dialect = "postgres"

    def __init__(self, url: str, flush_interval_s: float = 0.25, buffer_max: int = 100_000,
                 connect_timeout_s: float = 5.0) -> None:
        super().__init__(flush_interval_s, buffer_max, "switchyard-ledger-postgres")
        self._url = url
        self._timeout = connect_timeout_s
        self._conn: Any = None
        self._migrated = False
        self._tried = threading.Event()  # the first connect and migration have been tried

    def connect(self, **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(self._url, autocommit=True, application_name="switchyard-ledger",
                               connect_timeout=max(1, round(self._timeout)), **kwargs)

    def _open(self) -> None:
        try:
            self._conn = self.connect()
            migrate(self._conn)
            cols = ", ".join(f"{n} {_TYPES[t]}" for n, t in LEDGER_COLUMNS)
            self._conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {BATCH_TABLE} ({cols}) "
                               "ON COMMIT DELETE ROWS")
            self._migrated = True
        finally:
            self._tried.set()

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        conn = self._conn
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(BATCH_MOVE)
            cur.execute(_DAILY)  # daily sums: the same transaction as the rows

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _shutdown(self) -> None:
        self._reset()

    async def start(self) -> None:
        """Starts the writer thread, which connects and migrates first; waits for that
        (a replica serves with the schema in place). A database that is away is not a
        start-up error: the thread keeps trying, and records wait in the buffer."""
        self._thread.start()
        await asyncio.to_thread(self._tried.wait, self._timeout + 30)
        if not self._migrated:
            log.error("the postgres ledger is not reachable at start-up; records are buffered "
                      "(up to %d) and written once it is", self._max)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read rows on a fresh connection (``?`` placeholders; blocking: off the loop)."""
        from psycopg.rows import dict_row

        with self.connect(row_factory=dict_row) as conn:
            rows = conn.execute(to_pyformat(sql), tuple(params)).fetchall()
        return [{k: _plain(v) for k, v in r.items()} for r in rows]


def postgres_ledger(config: LedgerConfig) -> PostgresLedger:
    if config.url is None:
        raise ValueError("ledger.url is required for kind postgres "
                         "(postgresql://user:password@host:5432/dbname)")
    try:
        import psycopg  # noqa: F401 - the driver is an optional extra: say so at start-up
    except ImportError:
        raise ValueError("the postgres ledger needs psycopg: "
                         "pip install 'switchyard[postgres]'") from None
    return PostgresLedger(config.url.get_secret_value(), config.flush_interval_s,
                          config.buffer_max, config.connect_timeout_s)


@hookimpl(trylast=True)
def switchyard_register_ledgers(register: RegisterLedger) -> None:
    register("postgres", postgres_ledger)
