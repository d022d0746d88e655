"""``switchyard serve --workers N``: one real process tree (a parent and N uvicorn workers on
one port) sharing a SQLite state file, with the official openai SDK as the client.

As in test_budgets_replicas.py, the backend is the third-party ``echo`` plugin: it writes
exactly ``max_tokens`` and its prompt tokens are free, so a request costs exactly what it
reserved and a budget of K unit costs admits exactly K requests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from support import free_port, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
ADMIN = "workers-admin-key"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'thirdparty'}:{ROOT}",
       "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
MESSAGES = [{"role": "user", "content": "alpha beta gamma"}]


def config(tmp: Path, **extra: Any) -> Path:
    cfg = {
        "backends": [{"name": "echo", "plugin": "echo",
                      "pricing": {"input_per_mtok": 0, "output_per_mtok": 2000}}],
        "plugins": ["switchyard_echo"],
        "state": {"kind": "sqlite", "path": str(tmp / "state.sqlite3")},
        "ledger": {"path": str(tmp / "ledger.sqlite3"), "flush_interval_s": 0.05},
        "admin_key": ADMIN, "log_level": "warning", **extra,
    }
    path = tmp / "switchyard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def serve(cfg: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**ENV, "PYTHONPATH": f"{cfg.parent}:{ENV['PYTHONPATH']}"}  # and its own plugins
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(cfg),
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cfg.parent)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Workers:
    """``switchyard serve --workers n`` on a free port: the parent and its workers."""

    def __init__(self, tmp: Path, n: int, **extra: Any) -> None:
        self.tmp, self.n, self.port = tmp, n, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        # info: the parent's "n workers ready" line, which up() waits for
        self.proc = serve(config(tmp, log_level="info", **extra), "--port", str(self.port),
                          "--workers", str(n), log=self.log)

        def up() -> bool:
            # every worker told the parent it is ready (one answering /healthz is not all:
            # a test that killed a worker still starting saw the parent stop, as it does for a
            # worker that cannot start)
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            return (len(children(self.proc.pid)) == n and self._healthy()
                    and f"{n} workers ready on" in self.log.read_text())

        wait_until(up, timeout=120, what=f"{n} workers", interval=0.2)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def pids(self) -> list[int]:
        return children(self.proc.pid)

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, self.url + path, timeout=30,
                          headers={"authorization": f"Bearer {ADMIN}"}, **kw)
        assert r.status_code < 300, r.text
        return r.json()

    def key(self, team: str, **limits: Any) -> str:
        self.admin("POST", "/admin/teams", json={"name": team, **limits})
        return str(self.admin("POST", "/admin/keys", json={"team": team, "name": "k"})["key"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def ledger(self, team: str) -> list[tuple[int, float]]:
        with sqlite3.connect(self.tmp / "ledger.sqlite3") as conn:
            return conn.execute("SELECT status, cost_usd FROM requests WHERE team = ?",
                                (team,)).fetchall()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path, 3)
    yield w
    w.stop()


async def _burst(url: str, key: str, n: int,
                 pids: list[int] | None = None) -> list[tuple[int, str, str]]:
    """``n`` chat completions at once through the openai SDK: (status, error code,
    x-should-retry) each. With ``pids``: each of those processes must have done a share of
    the work (at least a third of an even share of the CPU time they used together: an idle
    worker uses a few per cent, a busy one about a third)."""
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                             timeout=60)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                                http_client=http)

    async def one() -> tuple[int, str, str]:
        try:
            await client.chat.completions.create(model="echo-1", messages=MESSAGES,  # type: ignore[arg-type]
                                                 max_tokens=3)
            return 200, "", ""
        except openai.APIStatusError as e:
            return e.status_code, str(e.code), e.response.headers.get("x-should-retry", "")

    try:
        before = {pid: cpu_s(pid) for pid in pids or []}
        results = list(await asyncio.gather(*(one() for _ in range(n))))
        used = {pid: cpu_s(pid) - before[pid] for pid in before}
        assert all(u >= sum(used.values()) / (3 * len(used)) for u in used.values()), used
        return results
    finally:
        await client.close()


def _unit_cost(w: Workers) -> float:
    key = w.key("calib")
    r = httpx.post(w.url + "/v1/chat/completions", timeout=30,
                   headers={"authorization": f"Bearer {key}"},
                   json={"model": "echo-1", "messages": MESSAGES, "max_tokens": 3})
    assert r.status_code == 200, r.text
    return float(r.headers["x-switchyard-cost-usd"])


def test_a_budget_for_30_requests_admits_exactly_30_across_three_workers(
        workers: Workers) -> None:
    cost, k = _unit_cost(workers), 30
    key = workers.key("acme", budget_usd=round(k * cost, 9), period="day")
    # the kernel spreads the connections over the three workers: each served part of the
    # burst against the one shared budget
    results = asyncio.run(_burst(workers.url, key, 10 * k, pids=workers.pids()))
    statuses = Counter((s, c) for s, c, _ in results)
    assert statuses == {(200, ""): k, (429, "team_budget_exceeded"): 9 * k}, statuses
    assert {r for s, _, r in results if s == 429} == {"false"}, "the SDK must not retry"
    spend = workers.admin("GET", "/admin/teams/acme/spend")
    assert spend["spent_usd"] == pytest.approx(k * cost, abs=1e-9)
    assert spend["spent_usd"] <= spend["budget_usd"] and spend["reserved_usd"] == 0
    assert workers.stop() == 0
    rows = workers.ledger("acme")  # one ledger file, written by every worker
    assert Counter(status for status, _ in rows) == {200: k, 429: 9 * k}
    assert sum(c for status, c in rows if status == 200) == pytest.approx(k * cost)


def test_a_rate_limit_holds_across_three_workers(workers: Workers) -> None:
    rpm = 25
    key = workers.key("acme", rpm=rpm)
    results = asyncio.run(_burst(workers.url, key, 3 * rpm))
    statuses = Counter((s, c) for s, c, _ in results)
    assert statuses == {(200, ""): rpm, (429, "rate_limit_exceeded"): 2 * rpm}, statuses


def test_a_worker_that_dies_is_replaced(workers: Workers) -> None:
    key = workers.key("acme")
    victim = workers.pids()[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in workers.pids() and len(workers.pids()) == 3,
               timeout=120, what="a new worker")
    wait_until(workers._healthy, timeout=60, what="the new worker")
    results = asyncio.run(_burst(workers.url, key, 60))
    assert Counter(s for s, _, _ in results) == {200: 60}
    assert workers.stop() == 0


def _run(args: list[str], tmp: Path, env: dict[str, str] = ENV) -> tuple[int, str]:
    """``switchyard ARGS``: its exit status and stderr."""
    out = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=tmp,
                         capture_output=True, text=True, timeout=120, check=False)
    return out.returncode, out.stderr


@pytest.mark.parametrize("how", ["--workers", "server.workers", "SWITCHYARD_SERVER__WORKERS"])
def test_several_workers_with_in_process_state_are_run(how: str, tmp_path: Path) -> None:
    """Each worker would keep budgets of its own: start-up is refused, saying what to set."""
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"server": {"workers": 2}} if how == "server.workers"
                                  else {}))
    args = ["serve", "-c", str(cfg), "--port", str(port)]
    env = dict(ENV)
    if how == "--workers":
        args += ["--workers", "2"]
    elif how.startswith("SWITCHYARD"):
        env[how] = "2"
    code, err = _run(args, tmp_path, env)
    assert code == 2, err
    assert "server.workers: 2 workers with state.kind 'memory' would split budgets" in err
    assert "set state.kind: sqlite" in err and "state.kind: redis" in err
    assert "Traceback" not in err


def test_check_config_reports_it_too(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"server": {"workers": 4}, "state": {"kind": "memory"}}))
    code, err = _run(["check-config", str(cfg)], tmp_path)
    assert code == 2 and "server.workers: 4 workers with state.kind 'memory'" in err
    cfg.write_text(yaml.safe_dump({"server": {"workers": 4}, "state": {"kind": "sqlite"}}))
    code, err = _run(["check-config", str(cfg)], tmp_path)
    assert code == 0, err


def test_a_port_in_use_is_refused_even_by_another_set_of_workers(workers: Workers,
                                                                  tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second gateway share the port and take half the
    connections: it is refused, as a port in use is for one process."""
    other = tmp_path / "other"
    other.mkdir()
    code, err = _run(["serve", "-c", str(config(other)), "--port", str(workers.port),
                      "--workers", "2"], other)
    assert code == 3, err
    assert f"cannot listen on 127.0.0.1:{workers.port}: Address already in use" in err


@pytest.mark.parametrize(("section", "said"), [
    ({"backends": [{"name": "x", "plugin": "no-such-plugin"}]}, "no-such-plugin"),
    ({"state": {"kind": "sqlite", "path": "/proc/no-such-dir/state.sqlite3"}},
     "state.path /proc/no-such-dir/state.sqlite3 cannot be opened"),
], ids=["plugin", "state-path"])
def test_a_configuration_that_cannot_start_is_reported_once(
        section: dict[str, Any], said: str, tmp_path: Path) -> None:
    code, err = _run(["serve", "-c", str(config(tmp_path, **section)), "--port",
                      str(free_port()), "--workers", "3"], tmp_path)
    assert code == 2, err
    assert err.count(said) == 1, err
    assert "Traceback" not in err


# ``echo`` whose start dies the way the kernel's OOM killer ends a worker loading a model
# (SIGKILL), on the starts (counted across the workers in one file) listed in ``die``
DYING_START = """
import fcntl, os, signal
from switchyard_echo import EchoBackend, EchoConfig
from gateway import RegisterBackend, hookimpl

class DyingConfig(EchoConfig):
    starts: str
    die: list[int]

class DyingBackend(EchoBackend):
    config: DyingConfig

    async def start(self) -> None:
        with open(self.config.starts, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write("x")
            f.flush()
            n = os.path.getsize(self.config.starts)
        if n in self.config.die:
            os.kill(os.getpid(), signal.SIGKILL)

@hookimpl
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("dying_echo", DyingBackend, DyingConfig)
"""


def dying_config(tmp: Path, die: list[int]) -> dict[str, Any]:
    """The config sections for an ``echo`` backend whose starts numbered ``die`` die."""
    (tmp / "dying_start.py").write_text(DYING_START)
    return {"plugins": ["switchyard_echo", "dying_start"],
            "backends": [{"name": "echo", "plugin": "dying_echo", "starts": str(tmp / "starts"), "die": die,
                          "pricing": {"input_per_mtok": 0, "output_per_mtok": 2000}}]}


def test_a_later_worker_that_dies_starting_is_started_again(tmp_path: Path) -> None:
    """The first worker proved the configuration; the second and third die while starting
    (starts 2 and 3), and the first retry of one of them too (start 4): each is started
    again after a back-off, the server never stops, and all three end up serving."""
    w = Workers(tmp_path, 3, **dying_config(tmp_path, die=[2, 3, 4]))
    try:
        log = w.log.read_text()
        deaths = [line for line in log.splitlines() if "was killed by SIGKILL before it "
                  "was ready" in line]
        assert len(deaths) == 3, log
        assert all("; starting another in " in line for line in deaths), log
        assert any("(failed start 2 of at most 5 in a row); starting another in 1.0 s" in line
                   for line in deaths), log
        assert "stopping" not in log, log
        assert (tmp_path / "starts").read_text() == "x" * 6  # 1 + 3 deaths + 2 that started
        key = w.key("acme")
        results = asyncio.run(_burst(w.url, key, 60))
        assert Counter(s for s, _, _ in results) == {200: 60}
    finally:
        assert w.stop() == 0


@pytest.mark.parametrize(("workers", "die", "said", "starts"), [
    # every start after the first dies: the crash loop ends rather than going on for ever
    # behind a server that seems up; the back-off doubled (0.5, 1, 2, 4 s)
    (2, list(range(2, 100)), ["worker 1 (pid", "starting another in 4.0 s", (
        "was killed by SIGKILL before it was ready, 5 starts in a row; stopping")], 6),
    # the first dies: nothing has shown that the configuration can start, so no retry
    (3, [1], ["worker 0 (pid", "was killed by SIGKILL before it was ready; stopping"], 1),
], ids=["later-worker-five-times", "first-worker"])
def test_a_worker_that_cannot_start_stops_the_server(workers: int, die: list[int],
                                                     said: list[str], starts: int,
                                                     tmp_path: Path) -> None:
    cfg = config(tmp_path, log_level="info", **dying_config(tmp_path, die=die))
    proc = serve(cfg, "--port", str(free_port()), "--workers", str(workers),
                 log=tmp_path / "serve.log")
    try:
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "serve.log").read_text()
    assert code == 3, log
    assert all(line in log for line in said), log
    assert (tmp_path / "starts").read_text() == "x" * starts
    assert "Traceback" not in log, log


def test_a_stop_while_a_worker_waits_to_start_again_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM during the back-off: no worker is started again, the parent exits 0."""
    cfg = config(tmp_path, log_level="info", **dying_config(tmp_path, die=list(range(2, 100))))
    log = tmp_path / "serve.log"
    proc = serve(cfg, "--port", str(free_port()), "--workers", "2", log=log)
    try:
        wait_until(lambda: "starting another in 1.0 s" in log.read_text(), timeout=120,
                   what="a second failed start")
        starts = (tmp_path / "starts").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "starts").read_text() == starts  # none started after the signal
    assert "Traceback" not in log.read_text()
