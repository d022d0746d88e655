"""The SQLite state store across processes (what ``serve --workers N`` relies on): several
real processes on one file hold a budget, a rate limit and settlements exactly; a lock that
another process holds is waited for without stopping the event loop, and one held too long
is an outage. The single-process contract is tests/plugins/test_state_contract.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.state import Limit, StateUnavailable, Team
from plugins.state_sqlite import SQLiteStore

ROOT = Path(__file__).parents[2]
KEEP = 3600

# One process: ``n`` calls at once on its own store, after a go file appears (so that every
# process starts together); prints what it got, as JSON. ``reserve`` settles what it held
# (at 70, twice each) once a second go file appears, after every process has reserved.
CHILD = """
import asyncio, json, os, sys, time
from gateway.state import Limit
from plugins.state_sqlite import SQLiteStore
path, go, op, who, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

def wait(f):
    while not os.path.exists(f):
        time.sleep(0.005)

async def main():
    store = SQLiteStore(path)
    await store.start()
    wait(go)
    if op == "reserve":
        got = await asyncio.gather(*(store.reserve("acme", "p", f"{who}-{i}", 100, 60, 3600)
                                     for i in range(n)))
        held = [f"{who}-{i}" for i, r in enumerate(got) if r.ok]
        print(json.dumps(held), flush=True)
        wait(go + "2")
        await asyncio.gather(*(store.settle("acme", "p", rid, 70) for rid in held + held))
        out = held
    else:
        lim = [Limit("team:rpm", 50, 1, 60)]
        out = [w == 0 for w in await asyncio.gather(*(store.hit("acme", lim) for _ in range(n)))]
    await store.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _start(path: Path, op: str, procs: int, n: int) -> list[subprocess.Popen[str]]:
    go = Path(f"{path}.go")
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(go), op, f"w{i}",
                                  str(n)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                for i in range(procs)]
    time.sleep(0.5)  # each opens the file meanwhile
    go.touch()
    return children


def _outputs(children: list[subprocess.Popen[str]]) -> list[list[object]]:
    outs = []
    for c in children:
        stdout, _ = c.communicate(timeout=120)
        assert c.returncode == 0
        outs.append(json.loads(stdout.splitlines()[-1]))
    return outs


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "state.sqlite3")
    await s.start()
    await s.create_team(Team(name="acme", budget_usd=60 * 100 / 1e9, created_at=time.time()))
    return s


async def test_four_processes_hold_a_budget_and_settle_exactly(store: SQLiteStore,
                                                               tmp_path: Path) -> None:
    """A budget for 60 holds of 100 nano-dollars, 4 processes asking 50 each at once:
    exactly 60 held in all; then each process settles its holds at 70, twice at once: each
    is billed once."""
    children = _start(store.path, "reserve", 4, 50)

    def reserved() -> list[list[str]]:
        assert all(c.stdout is not None for c in children)
        return [json.loads(c.stdout.readline()) for c in children]  # type: ignore[union-attr]

    held = [rid for out in await asyncio.to_thread(reserved) for rid in out]
    assert len(held) == 60 and len(set(held)) == 60
    s = await store.spend("acme", "p")
    assert (s.spent, s.reserved) == (0, 6000)
    Path(f"{store.path}.go2").touch()
    await asyncio.to_thread(_outputs, children)
    s = await store.spend("acme", "p")
    assert (s.spent, s.reserved) == (60 * 70, 0)
    await store.close()


async def test_four_processes_share_one_rate_limit_exactly(store: SQLiteStore) -> None:
    outs = await asyncio.to_thread(_outputs, _start(store.path, "hit", 4, 30))
    assert sum(sum(map(bool, out)) for out in outs) == 50
    assert await store.hit("acme", [Limit("team:rpm", 50, 1, 60)]) > 0
    await store.close()


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that takes the file's write lock and keeps it ``seconds``."""
    code = (f"import sqlite3, sys, time\nc = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\n"
            f"time.sleep({seconds})\nc.execute('COMMIT')\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


async def test_a_lock_another_worker_holds_is_awaited_and_the_loop_keeps_serving(
        store: SQLiteStore) -> None:
    holder = _hold_lock(store.path, 0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    t0 = time.monotonic()
    held = await asyncio.gather(*(store.reserve("acme", "p", f"r{i}", 100, 60, KEEP)
                                  for i in range(10)))
    waited = time.monotonic() - t0
    t.cancel()
    holder.wait(10)
    assert all(r.ok for r in held)
    assert waited >= 0.3, "the reservations waited for the other process' lock"
    assert ticks >= 10, f"the event loop ran meanwhile ({ticks} ticks in {waited:.2f} s)"
    assert (await store.spend("acme", "p")).reserved == 1000
    # reads never wait for a writer
    holder = _hold_lock(store.path, 0.5)
    t0 = time.monotonic()
    assert (await store.get_team("acme")) is not None
    assert time.monotonic() - t0 < 0.3
    holder.wait(10)
    await store.close()


async def test_a_lock_held_past_the_timeout_is_an_outage_for_every_waiting_call(
        tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "state.sqlite3", timeout_s=0.2)
    await s.start()
    await s.create_team(Team(name="acme", budget_usd=1.0))
    holder = _hold_lock(s.path, 1.5)
    results = await asyncio.gather(*(s.reserve("acme", "p", f"r{i}", 1, 60, KEEP)
                                     for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, StateUnavailable) for r in results), results
    assert "stayed locked for 0.2 s" in str(results[0])
    holder.wait(10)
    assert (await s.reserve("acme", "p", "after", 1, 60, KEEP)).ok, "back once the lock is free"
    await s.close()


async def test_one_call_that_fails_in_a_group_commit_leaves_the_others(
        store: SQLiteStore) -> None:
    """An amount SQLite cannot store (past 2**63 - 1) fails that reservation alone."""
    r = await asyncio.gather(store.reserve("acme", "p", "a", 100, 60, KEEP),
                             store.reserve("nobudget", "p", "x", 1, 60, KEEP),
                             store.charge("acme", "p", "c", 2**64, KEEP),
                             store.reserve("acme", "p", "b", 100, 60, KEEP),
                             return_exceptions=True)
    assert r[0].ok and not r[1].exists and isinstance(r[2], OverflowError) and r[3].ok  # type: ignore[union-attr]
    s = await store.spend("acme", "p")
    assert (s.spent, s.reserved) == (0, 200)
    await store.close()


async def test_state_survives_a_restart(store: SQLiteStore, tmp_path: Path) -> None:
    assert (await store.reserve("acme", "p", "r1", 100, 60, KEEP)).ok
    await store.settle("acme", "p", "r1", 80)
    await store.close()
    again = SQLiteStore(tmp_path / "state.sqlite3")
    await again.start()
    assert (await again.get_team("acme")) is not None
    assert (await again.spend("acme", "p")).spent == 80
    await again.close()
    with sqlite3.connect(tmp_path / "state.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
