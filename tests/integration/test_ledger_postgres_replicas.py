"""Two real ``switchyard serve`` processes (uvicorn) writing one PostgreSQL ledger: they
start together and migrate it once, and one report over the ledger sees every request of
both, with the cost the clients were told in the headers.

The backend is the third-party ``echo`` plugin (tests/thirdparty), loaded by module name;
the ledger's URL comes from the environment (``${LEDGER_URL}``), as a secret should."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import yaml
from support import free_port

from gateway import LEDGER_MIGRATIONS
from gateway.ledger_queries import Window, grouped, totals
from plugins.ledger_postgres import PostgresLedger

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
ADMIN = "ledger-replicas-admin-key"


@pytest.fixture
def two_replicas(tmp_path: Path, pg_url: str) -> Iterator[list[str]]:
    cfg = {
        "backends": [{"name": "echo", "plugin": "echo",
                      "pricing": {"input_per_mtok": 100, "output_per_mtok": 2000}}],
        "plugins": ["switchyard_echo"],
        "ledger": {"kind": "postgres", "url": "${LEDGER_URL}", "flush_interval_s": 0.05},
        "log_level": "warning", "admin_key": ADMIN,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'thirdparty'}:{ROOT}",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LEDGER_URL": pg_url}
    procs, urls = [], []
    for i in range(2):  # started together: both migrate the empty database at once
        port = free_port()
        log = open(tmp_path / f"replica{i}.log", "wb")  # noqa: SIM115 - kept open for the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(path), "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp_path / f"replica{i}.log").read_text()[-3000:]
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"replica {i} did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for p in procs:  # SIGINT: uvicorn's graceful shutdown drains the ledger
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            if p.poll() is None:
                p.kill()


def _send(url: str, n: int, team_word: str) -> list[tuple[str, float]]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    seen = []
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model="echo-1", max_tokens=2 + i % 3,
            messages=[{"role": "user", "content": f"{team_word} request {i} alpha beta gamma"}])
        raw.parse()
        seen.append((raw.headers["x-switchyard-request-id"],
                     float(raw.headers["x-switchyard-cost-usd"])))
    client.close()
    return seen


def test_one_report_over_two_replicas_sees_every_request(
        two_replicas: list[str], pg_url: str, tmp_path: Path) -> None:
    t0 = time.time()
    a = _send(two_replicas[0], 12, "left")
    b = _send(two_replicas[1], 9, "right")
    for p in two_replicas:
        assert httpx.get(p + "/healthz", timeout=5).status_code == 200
    reader = PostgresLedger(pg_url)
    deadline = time.monotonic() + 30
    while totals(reader)["requests"] < len(a) + len(b) and time.monotonic() < deadline:
        time.sleep(0.1)  # the writer threads flush every 50 ms

    total = totals(reader, Window(since=t0 - 1))
    assert total["requests"] == len(a) + len(b)
    assert total["succeeded"] == len(a) + len(b)
    assert total["cost_usd"] == pytest.approx(sum(c for _, c in a + b), rel=1e-6)
    ids = {r["request_id"] for r in reader.query("SELECT request_id FROM requests")}
    assert ids == {rid for rid, _ in a + b}
    by_backend = grouped(reader, ["backend"])
    assert [(g["backend"], g["requests"]) for g in by_backend] == [("echo", len(a) + len(b))]
    # either replica's admin API sums the whole deployment
    r = httpx.get(two_replicas[1] + "/admin/spend", params={"group_by": "backend,day"},
                  headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    (row,) = r.json()["data"]
    assert row["requests"] == len(a) + len(b)
    assert row["cost_usd"] == pytest.approx(sum(c for _, c in a + b), rel=1e-6)
    with psycopg.connect(pg_url) as conn:  # migrated once, to this code's version
        assert conn.execute("SELECT version FROM switchyard_ledger_schema").fetchall() == [
            (len(LEDGER_MIGRATIONS),)]
