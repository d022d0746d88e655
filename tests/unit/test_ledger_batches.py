"""The ledger's writer thread writes a batch per ``flush_interval_s``: records that arrive one
at a time (one connection's traffic) share a transaction instead of taking one each, a
buffer filling up wakes the writer before its interval is out, and ``close`` writes what
is queued at once."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support import wait_until

from gateway.accounting import UsageRecord
from gateway.ledger import Ledger


class CountingLedger(Ledger):
    """The SQLite ledger, noting the size of each batch (one transaction each)."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.batches: list[int] = []  # before ``super().__init__`` starts the thread
        super().__init__(path, **kwargs)

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        super()._insert(rows)
        self.batches.append(len(rows))


def _record(i: int) -> UsageRecord:
    return UsageRecord(request_id=f"r-{i}", endpoint="chat", requested="m", team="red",
                       cost_usd=0.25, started_at=1_700_000_000.0 + i)


def _count(path: Path) -> tuple[int, int]:
    """Rows in ``requests``, and the calls the daily sums count."""
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0],
                conn.execute("SELECT COALESCE(SUM(calls), 0) FROM requests_daily").fetchone()[0])
    finally:
        conn.close()


def test_records_arriving_one_at_a_time_share_a_transaction(tmp_path: Path) -> None:
    ledger = CountingLedger(tmp_path / "ledger.db", flush_interval_s=0.5)
    for i in range(20):  # a request every few milliseconds, as one connection sends them
        ledger.write(_record(i))
        time.sleep(0.003)
    ledger.close()
    assert sum(ledger.batches) == 20
    assert len(ledger.batches) <= 2  # the interval's batch (and close's), not 20 of one row
    assert _count(tmp_path / "ledger.db") == (20, 20)


def test_a_buffer_half_full_is_written_before_the_interval_is_out(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = CountingLedger(path, flush_interval_s=3600, buffer_max=10)
    try:
        for i in range(5):
            ledger.write(_record(i))
        wait_until(lambda: _count(path) == (5, 5), timeout=30, what="the 5 records written")
        assert ledger.dropped == 0 and ledger.buffered == 0
    finally:
        ledger.close()


def test_close_writes_what_is_queued_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = CountingLedger(path, flush_interval_s=3600)
    for i in range(3):
        ledger.write(_record(i))
    ledger.close()  # does not wait out the hour
    assert ledger.batches == [3]
    assert _count(path) == (3, 3)
