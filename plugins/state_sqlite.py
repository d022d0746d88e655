"""``state: {kind: sqlite, path: ...}``: state shared by the workers of one host
(``switchyard serve --workers N``) through one SQLite file, without a server.

Every method is atomic across every process that opens the file: N workers behave as one,
as N replicas do on Redis. A write (a reservation's read-check-write, say) runs inside a
transaction that holds the file's write lock (``BEGIN IMMEDIATE``). Writes are group
committed: the writes queued on one event loop by the time the lock is taken share one
transaction, each in a savepoint of its own (one that raises is undone alone, and its
caller gets the error), so under load a worker takes the lock and writes the log once per
batch, not once per call (CPU per reservation and settlement, 3,000 of each at 32 at a time:
about 55 us the pair, against 277 us with a transaction each and 4 KiB pages). The
connection never waits inside SQLite (``busy_timeout`` 0): a lock another worker holds is
retried after an ``asyncio.sleep`` (0.1 ms, doubling to 1 ms), so the event loop keeps
serving; a lock still held after ``state.timeout_s`` is an outage (``StateUnavailable``, for
every call in the batch; ``state.failure_mode`` handles it). Nothing awaits between a
transaction's ``BEGIN`` and its ``COMMIT``. A read is one statement, at once (WAL: readers
never wait for the writer); a caller reads its own writes, since it awaits them first.
Expired holds (their replica died) are released when a budget looks full and when the
spend is read, not on every reservation.

The file has 1 KiB pages (a commit logs whole pages: a quarter of the default's bytes) and
is in WAL mode with ``synchronous=NORMAL``:
a commit writes the log without an ``fsync``, so a crashed worker loses nothing, and a power
cut may lose the last commits but never corrupts the file. Checkpoints (copying the log into
the file, with its ``fsync``) run in a thread every second, never in a commit on the event
loop (``wal_autocheckpoint`` is off). The clock is the host's wall clock, one for every
worker. Money is in integer nano-dollars, added in Python, stored as SQLite's 64-bit
integers (every amount up to 2**63 - 1).

Tables: ``teams``, ``keys`` (records as JSON: the salted hash, never the secret),
``periods`` (a team's spend, reserved total and alert flag per budget period), ``holds``
(reservations; a NULL amount: released by expiry, still to be settled once), ``charges``,
``windows`` and ``hits`` (sliding-window limits: a running total per limit and its
entries), ``down`` and ``drained`` (backend marks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway import (
    KeyRecord,
    Limit,
    RegisterStateStore,
    Reserved,
    Settled,
    Spend,
    StateConfig,
    StateUnavailable,
    Team,
    hookimpl,
)

log = logging.getLogger("switchyard.state.sqlite")
T = TypeVar("T")
Row = tuple[Any, ...]

SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (name TEXT PRIMARY KEY, doc TEXT NOT NULL,
  budget INTEGER NOT NULL, soft INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, team TEXT NOT NULL,
  doc TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_team ON keys (team);
CREATE TABLE IF NOT EXISTS periods (team TEXT NOT NULL, period TEXT NOT NULL,
  spent INTEGER NOT NULL, reserved INTEGER NOT NULL, alerted INTEGER NOT NULL,
  expires_at REAL, PRIMARY KEY (team, period)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (team TEXT NOT NULL, period TEXT NOT NULL,
  res_id TEXT NOT NULL, amount INTEGER, expires_at REAL NOT NULL,
  PRIMARY KEY (team, period, res_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS charges (team TEXT NOT NULL, period TEXT NOT NULL,
  charge_id TEXT NOT NULL, PRIMARY KEY (team, period, charge_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (team TEXT NOT NULL, name TEXT NOT NULL,
  total INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (team, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hits (team TEXT NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL,
  seq INTEGER NOT NULL, cost INTEGER NOT NULL,
  PRIMARY KEY (team, name, ts, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS down (backend TEXT PRIMARY KEY, until REAL NOT NULL,
  replica TEXT NOT NULL, reason TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drained (backend TEXT PRIMARY KEY, by TEXT NOT NULL,
  reason TEXT NOT NULL, since REAL NOT NULL) WITHOUT ROWID;
"""

_PER_TEAM = ("keys", "periods", "holds", "charges", "windows", "hits")


def _busy(e: sqlite3.OperationalError) -> bool:
    return getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
        or "locked" in str(e)


class SQLiteStore:
    kind = "sqlite"

    def __init__(self, path: str | Path, *, timeout_s: float = 2.0,
                 checkpoint_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        self.timeout_s = timeout_s
        self._clock = clock
        self._interval = checkpoint_interval_s
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None

    # ---- the file ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL and create the tables. Several workers do this at once at
        start-up: here, and only here, SQLite's own busy handler waits (up to 30 s)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA page_size=1024")  # a new file: less log written per commit
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.executescript(SCHEMA)  # each statement idempotent: workers race harmlessly
            conn.execute("PRAGMA busy_timeout=0")
        except BaseException:
            conn.close()
            raise
        return conn

    def open(self) -> None:
        """Open the file now: a path that cannot be opened is a configuration error, said
        at start-up (ValueError, with the path and why)."""
        try:
            self._conn = self._conn or self._open()
        except (OSError, sqlite3.Error) as e:
            raise ValueError(f"state.path {self.path} cannot be opened "
                             f"({type(e).__name__}: {e})") from None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = self._open()
            except (OSError, sqlite3.Error) as e:
                raise StateUnavailable(f"the SQLite state file {self.path} cannot be opened "
                                       f"({type(e).__name__}: {e})") from e
        return self._conn

    async def start(self) -> None:
        self._db()
        if self._checkpointer is None:
            self._checkpointer = asyncio.create_task(self._checkpoints())

    async def close(self) -> None:
        if self._flush_task is not None and not self._flush_task.done():
            await self._flush_task  # what is queued is written
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        await self._tx(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    async def _checkpoints(self) -> None:
        """Every ``checkpoint_interval_s``: a passive checkpoint in a thread, on a
        connection of its own (it never blocks a writer; another worker's running one makes
        this one a no-op). Stopped by cancelling; a checkpoint under way is finished first
        (closing its connection under it would crash the process)."""
        loop = asyncio.get_running_loop()
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0,
                               check_same_thread=False)
        running: asyncio.Future[None] | None = None
        try:
            while True:
                await asyncio.sleep(self._interval)
                running = loop.run_in_executor(None, self._checkpoint, conn)
                await asyncio.shield(running)
        finally:
            if running is not None and not running.done():
                await asyncio.wait([running])
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:  # busy (another worker checkpoints), or a full disk
            log.debug("WAL checkpoint skipped: %s", e)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """``fn`` atomically: a read at once; a write queued for the next group commit."""
        if not write:
            try:
                return fn(self._db())
            except sqlite3.Error as e:
                raise StateUnavailable(f"the SQLite state store failed ({e})") from e
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut))
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        """Group commit: every write queued by then, in one transaction, each in a
        savepoint of its own (one that fails is undone alone). It starts one loop iteration
        after the first write was queued, so the requests that the same iteration reached
        share the commit (and the file's lock, and the log's pages); while another worker
        holds the lock, more join."""
        try:
            while self._queue:
                await self._begin()
                batch, self._queue = self._queue, []
                self._run(batch)
        except StateUnavailable as e:
            batch, self._queue = self._queue, []
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StateUnavailable(e.detail))
        finally:
            self._flushing = False

    async def _begin(self) -> None:
        """``BEGIN IMMEDIATE``: the file's write lock, waited for on the event loop."""
        conn = self._db()
        delay, deadline = 0.0001, 0.0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not _busy(e):
                    raise StateUnavailable(f"the SQLite state store failed ({e})") from e
                now = time.monotonic()
                deadline = deadline or now + self.timeout_s
                if now >= deadline:
                    raise StateUnavailable(
                        f"the SQLite state file stayed locked for {self.timeout_s:g} s") from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.001)

    def _run(self, batch: list[tuple[Callable[[sqlite3.Connection], Any],
                                     asyncio.Future[Any]]]) -> None:
        conn = self._db()
        done: list[tuple[asyncio.Future[Any], Any, Exception | None]] = []
        try:
            for fn, fut in batch:
                if fut.done():  # its caller was cancelled: nothing to do for it
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn)
                except sqlite3.Error:
                    raise
                except Exception as e:  # noqa: BLE001 - this one call's error, for its caller
                    conn.execute("ROLLBACK TO op")
                    done.append((fut, None, e))
                else:
                    done.append((fut, result, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:  # the file failed (disk full, I/O): the whole batch did
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StateUnavailable(f"the SQLite state store failed ({e})"))
            return
        for fut, result, err in done:
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(result)

    # ---- teams -------------------------------------------------------------------------

    async def create_team(self, team: Team) -> bool:
        doc = orjson.dumps(team.to_dict()).decode()
        return await self._tx(lambda c: c.execute(
            "INSERT OR IGNORE INTO teams VALUES (?, ?, ?, ?)",
            (team.name, doc, team.budget_nano, team.soft_nano)).rowcount == 1)

    async def update_team(self, team: Team) -> bool:
        doc = orjson.dumps(team.to_dict()).decode()
        return await self._tx(lambda c: c.execute(
            "UPDATE teams SET doc = ?, budget = ?, soft = ? WHERE name = ?",
            (doc, team.budget_nano, team.soft_nano, team.name)).rowcount == 1)

    async def get_team(self, name: str) -> Team | None:
        row = await self._tx(lambda c: c.execute(
            "SELECT doc FROM teams WHERE name = ?", (name,)).fetchone(), write=False)
        return Team.from_dict(orjson.loads(row[0])) if row else None

    async def list_teams(self) -> list[Team]:
        rows = await self._tx(lambda c: c.execute(
            "SELECT doc FROM teams ORDER BY name").fetchall(), write=False)
        return [Team.from_dict(orjson.loads(r[0])) for r in rows]

    async def has_teams(self) -> bool:
        return bool(await self._tx(lambda c: c.execute(
            "SELECT 1 FROM teams LIMIT 1").fetchone(), write=False))

    async def delete_team(self, name: str) -> list[str]:
        def run(c: sqlite3.Connection) -> list[str]:
            if c.execute("DELETE FROM teams WHERE name = ?", (name,)).rowcount == 0:
                return []
            ids = [r[0] for r in c.execute(
                "SELECT key_id FROM keys WHERE team = ? ORDER BY key_id", (name,))]
            for table in _PER_TEAM:
                c.execute(f"DELETE FROM {table} WHERE team = ?", (name,))
            return ids

        return await self._tx(run)

    # ---- keys --------------------------------------------------------------------------

    async def put_key(self, key: KeyRecord) -> None:
        doc = orjson.dumps(key.to_dict()).decode()
        await self._tx(lambda c: c.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)",
                                           (key.key_id, key.team, doc)))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._tx(lambda c: c.execute(
            "SELECT doc FROM keys WHERE key_id = ?", (key_id,)).fetchone(), write=False)
        return KeyRecord.from_dict(orjson.loads(row[0])) if row else None

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        def run(c: sqlite3.Connection) -> list[Row]:
            if team is None:
                return c.execute("SELECT doc FROM keys").fetchall()
            return c.execute("SELECT doc FROM keys WHERE team = ?", (team,)).fetchall()

        keys = [KeyRecord.from_dict(orjson.loads(r[0])) for r in await self._tx(run, write=False)]
        return sorted(keys, key=lambda k: (k.team, k.created_at, k.key_id))

    # ---- budgets (each helper runs inside a write transaction) ----------------------------

    def _period(self, c: sqlite3.Connection, team: str, period: str,
                keep_s: int = 0) -> list[Any]:
        """The period's [spent, reserved, alerted, expires_at], made (or remade, once
        expired) as needed; ``keep_s`` > 0 moves its expiry (saved by ``_save``)."""
        now = self._clock()
        row = c.execute("SELECT spent, reserved, alerted, expires_at FROM periods "
                        "WHERE team = ? AND period = ?", (team, period)).fetchone()
        expires = now + keep_s if keep_s > 0 else None
        if row is None or (row[3] is not None and row[3] <= now):
            self._sweep(c, now)  # a new period: rare, so the time to drop expired ones
            c.execute("INSERT OR REPLACE INTO periods VALUES (?, ?, 0, 0, 0, ?)",
                      (team, period, expires))
            return [0, 0, 0, expires]
        p = list(row)
        if expires is not None:
            p[3] = expires
        return p

    def _purge(self, c: sqlite3.Connection, team: str, period: str, p: list[Any]) -> bool:
        """Release the holds whose replica never settled them (it died), remembered for
        their settle (amount NULL); True when there were some. Run where it matters: when a
        budget looks full, and when the spend is read."""
        old = c.execute("SELECT res_id, amount FROM holds WHERE team = ? AND period = ? "
                        "AND amount IS NOT NULL AND expires_at <= ?",
                        (team, period, self._clock())).fetchall()
        if not old:
            return False
        p[1] -= sum(a for _, a in old)
        c.executemany("UPDATE holds SET amount = NULL WHERE team = ? AND period = ? "
                      "AND res_id = ?", [(team, period, rid) for rid, _ in old])
        self._save(c, team, period, p)
        return True

    @staticmethod
    def _sweep(c: sqlite3.Connection, now: float) -> None:
        """Drop expired periods (with their holds and charges) and expired backend marks."""
        for team, period in c.execute("SELECT team, period FROM periods "
                                      "WHERE expires_at <= ?", (now,)).fetchall():
            for table in ("periods", "holds", "charges"):
                c.execute(f"DELETE FROM {table} WHERE team = ? AND period = ?",
                          (team, period))
        c.execute("DELETE FROM down WHERE until <= ?", (now,))

    @staticmethod
    def _save(c: sqlite3.Connection, team: str, period: str, p: list[Any]) -> None:
        c.execute("UPDATE periods SET spent = ?, reserved = ?, alerted = ?, expires_at = ? "
                  "WHERE team = ? AND period = ?", (*p, team, period))

    @staticmethod
    def _budget(c: sqlite3.Connection, team: str) -> int | None:
        row = c.execute("SELECT budget FROM teams WHERE name = ?", (team,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _held(c: sqlite3.Connection, team: str, period: str, res_id: str) -> bool:
        return c.execute("SELECT 1 FROM holds WHERE team = ? AND period = ? AND res_id = ?",
                         (team, period, res_id)).fetchone() is not None

    def _hold(self, c: sqlite3.Connection, team: str, period: str, res_id: str, amount: int,
              ttl_s: float, keep_s: int, budget: int) -> Reserved:
        p = self._period(c, team, period, keep_s)
        if self._held(c, team, period, res_id):  # held already (a retry)
            return Reserved(True, p[0], p[1], budget)
        if budget >= 0 and p[0] + p[1] + amount > budget and (
                not self._purge(c, team, period, p) or p[0] + p[1] + amount > budget):
            return Reserved(False, p[0], p[1], budget)
        c.execute("INSERT INTO holds VALUES (?, ?, ?, ?, ?)",
                  (team, period, res_id, amount, self._clock() + ttl_s))
        p[1] += amount
        self._save(c, team, period, p)
        return Reserved(True, p[0], p[1], budget)

    async def reserve(self, team: str, period: str, res_id: str, amount: int, ttl_s: float,
                      keep_s: int) -> Reserved:
        def run(c: sqlite3.Connection) -> Reserved:
            budget = self._budget(c, team)
            if budget is None:
                return Reserved(False, 0, 0, -1, exists=False)
            return self._hold(c, team, period, res_id, amount, ttl_s, keep_s, budget)

        return await self._tx(run)

    async def reserve_within(self, team: str, limits: Sequence[Limit], period: str,
                             res_id: str, amount: int, ttl_s: float, keep_s: int) -> Reserved:
        def run(c: sqlite3.Connection) -> Reserved:
            budget = self._budget(c, team)
            if budget is None:
                return Reserved(False, 0, 0, -1, exists=False)
            if self._held(c, team, period, res_id):  # a retry: held, and hit, already
                p = self._period(c, team, period, keep_s)
                return Reserved(True, p[0], p[1], budget)
            now = self._clock()
            windows, wait = self._wait(c, team, limits, now)
            if wait > 0:
                return Reserved(False, 0, 0, budget, wait_s=wait)
            r = self._hold(c, team, period, res_id, amount, ttl_s, keep_s, budget)
            if r.ok:
                self._take(c, team, limits, windows, now)
            return r

        return await self._tx(run)

    def _add_spend(self, c: sqlite3.Connection, team: str, period: str, p: list[Any],
                   actual: int) -> Settled:
        p[0] += actual
        row = c.execute("SELECT soft FROM teams WHERE name = ?", (team,)).fetchone()
        soft = -1 if row is None else int(row[0])
        alert = soft >= 0 and p[0] >= soft and not p[2]
        if alert:
            p[2] = 1
        self._save(c, team, period, p)
        return Settled(True, p[0], alert)

    def _settle(self, c: sqlite3.Connection, team: str, period: str, res_id: str,
                actual: int) -> Settled:
        p = self._period(c, team, period)
        row = c.execute("SELECT amount FROM holds WHERE team = ? AND period = ? AND res_id = ?",
                        (team, period, res_id)).fetchone()
        if row is None:
            return Settled(False, p[0], False)
        if row[0] is not None:  # NULL: released by expiry already
            p[1] -= row[0]
        c.execute("DELETE FROM holds WHERE team = ? AND period = ? AND res_id = ?",
                  (team, period, res_id))
        return self._add_spend(c, team, period, p, actual)

    async def settle(self, team: str, period: str, res_id: str, actual: int) -> Settled:
        return await self._tx(lambda c: self._settle(c, team, period, res_id, actual))

    async def settle_adding(self, team: str, period: str, res_id: str, actual: int,
                            limits: Sequence[Limit]) -> Settled:
        def run(c: sqlite3.Connection) -> Settled:
            settled = self._settle(c, team, period, res_id, actual)
            if settled.applied:
                self._record(c, team, limits, self._clock())
            return settled

        return await self._tx(run)

    async def charge(self, team: str, period: str, charge_id: str, amount: int,
                     keep_s: int) -> Settled:
        def run(c: sqlite3.Connection) -> Settled:
            p = self._period(c, team, period, keep_s)
            if c.execute("INSERT OR IGNORE INTO charges VALUES (?, ?, ?)",
                         (team, period, charge_id)).rowcount == 0:
                return Settled(False, p[0], False)
            return self._add_spend(c, team, period, p, amount)

        return await self._tx(run)

    async def spend(self, team: str, period: str) -> Spend:
        def run(c: sqlite3.Connection) -> Spend:
            p = self._period(c, team, period)
            self._purge(c, team, period, p)
            return Spend(p[0], p[1], bool(p[2]))

        return await self._tx(run)

    # ---- rate limits -------------------------------------------------------------------

    @staticmethod
    def _window(c: sqlite3.Connection, team: str, lim: Limit, now: float) -> tuple[int, int]:
        """The limit's (total over its window, last entry's number), the entries older than
        the window dropped."""
        cutoff = now - lim.window_s
        row = c.execute("SELECT total, seq FROM windows WHERE team = ? AND name = ?",
                        (team, lim.name)).fetchone()
        total, seq = (0, 0) if row is None else (int(row[0]), int(row[1]))
        n, old = c.execute("SELECT COUNT(*), TOTAL(cost) FROM hits WHERE team = ? AND name = ? "
                           "AND ts <= ?", (team, lim.name, cutoff)).fetchone()
        if n:
            total -= int(old)
            c.execute("DELETE FROM hits WHERE team = ? AND name = ? AND ts <= ?",
                      (team, lim.name, cutoff))
            c.execute("UPDATE windows SET total = ? WHERE team = ? AND name = ?",
                      (total, team, lim.name))
        return total, seq

    def _wait(self, c: sqlite3.Connection, team: str, limits: Sequence[Limit],
              now: float) -> tuple[list[tuple[int, int]], float]:
        """The limits' windows, and the seconds until every limit fits (0.0: now)."""
        windows = [self._window(c, team, lim, now) for lim in limits]
        wait = 0.0
        for (total, _), lim in zip(windows, limits, strict=True):
            if lim.cost > 0 and total + lim.cost > lim.limit:
                wait = max(wait, self._wait_one(c, team, lim, total, now))
        return windows, wait

    @staticmethod
    def _wait_one(c: sqlite3.Connection, team: str, lim: Limit, total: int,
                  now: float) -> float:
        if lim.cost > lim.limit:
            return lim.window_s
        freed = 0
        for ts, cost in c.execute("SELECT ts, cost FROM hits WHERE team = ? AND name = ? "
                                  "ORDER BY ts, seq", (team, lim.name)):
            freed += cost
            if total - freed + lim.cost <= lim.limit:
                return float(max(0.001, ts + lim.window_s - now))
        return lim.window_s

    @staticmethod
    def _take(c: sqlite3.Connection, team: str, limits: Sequence[Limit],
              windows: list[tuple[int, int]], now: float) -> None:
        for (total, seq), lim in zip(windows, limits, strict=True):
            c.execute("INSERT INTO hits VALUES (?, ?, ?, ?, ?)",
                      (team, lim.name, now, seq + 1, lim.cost))
            c.execute("INSERT OR REPLACE INTO windows VALUES (?, ?, ?, ?)",
                      (team, lim.name, total + lim.cost, seq + 1))

    def _record(self, c: sqlite3.Connection, team: str, limits: Sequence[Limit],
                now: float) -> None:
        self._take(c, team, limits, [self._window(c, team, lim, now) for lim in limits], now)

    async def hit(self, team: str, limits: Sequence[Limit]) -> float:
        def run(c: sqlite3.Connection) -> float:
            now = self._clock()
            windows, wait = self._wait(c, team, limits, now)
            if wait > 0:
                return wait
            self._take(c, team, limits, windows, now)
            return 0.0

        return await self._tx(run)

    async def add(self, team: str, limits: Sequence[Limit]) -> None:
        await self._tx(lambda c: self._record(c, team, limits, self._clock()))

    # ---- backend health ----------------------------------------------------------------

    async def mark_backend_down(self, backend: str, replica: str, until: float,
                                reason: str) -> None:
        def run(c: sqlite3.Connection) -> None:
            now = self._clock()
            cur = c.execute("SELECT until FROM down WHERE backend = ?", (backend,)).fetchone()
            if until <= now or (cur is not None and cur[0] > now and cur[0] >= until):
                return
            c.execute("INSERT OR REPLACE INTO down VALUES (?, ?, ?, ?)",
                      (backend, until, replica, reason))

        await self._tx(run)

    async def clear_backend_down(self, backend: str) -> None:
        await self._tx(lambda c: c.execute("DELETE FROM down WHERE backend = ?", (backend,)))

    async def backends_down(self, names: Sequence[str]) -> dict[str, tuple[float, str, str]]:
        if not names:
            return {}
        now = self._clock()
        marks = ",".join("?" * len(names))
        rows = await self._tx(lambda c: c.execute(
            f"SELECT backend, until, replica, reason FROM down WHERE backend IN ({marks}) "
            "AND until > ?", (*names, now)).fetchall(), write=False)
        found = {r[0]: (float(r[1]), str(r[2]), str(r[3])) for r in rows}
        return {n: found[n] for n in names if n in found}

    # ---- drained backends --------------------------------------------------------------

    async def set_backend_drained(self, backend: str, drained: bool, by: str,
                                  reason: str) -> None:
        if drained:
            await self._tx(lambda c: c.execute("INSERT OR REPLACE INTO drained VALUES "
                                               "(?, ?, ?, ?)", (backend, by, reason,
                                                                self._clock())))
        else:
            await self._tx(lambda c: c.execute("DELETE FROM drained WHERE backend = ?",
                                               (backend,)))

    async def backends_drained(self, names: Sequence[str]) -> dict[str, tuple[str, str, float]]:
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = await self._tx(lambda c: c.execute(
            f"SELECT backend, by, reason, since FROM drained WHERE backend IN ({marks})",
            tuple(names)).fetchall(), write=False)
        found = {r[0]: (str(r[1]), str(r[2]), float(r[3])) for r in rows}
        return {n: found[n] for n in names if n in found}


def sqlite_store(config: StateConfig) -> SQLiteStore:
    store = SQLiteStore(config.path, timeout_s=config.timeout_s)
    store.open()
    return store


@hookimpl(trylast=True)
def switchyard_register_state_stores(register: RegisterStateStore) -> None:
    register("sqlite", sqlite_store)
