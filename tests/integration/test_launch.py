"""Servers the gateway launches itself (``launch:``), with a real ``python -m llama_cpp.server``
(SmolLM2-135M, in the project's environment, so it loads in seconds): out of routing until
it answers, progress in the log while it loads, restarted after it dies, stopped with the
gateway; the embedded model serves meanwhile. tests/integration/test_vllm_real.py does the
same with vLLM's CPU build."""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.harness import gateway, sdk
from support import free_port, wait_until

pytestmark = pytest.mark.slow
MSG = [{"role": "user", "content": "Say hi."}]


def slow_python(tmp_path: Path, delay_s: float) -> str:
    """An interpreter that waits ``delay_s`` before it starts: a server that takes a known
    time to load, so the test sees it loading (SmolLM2 alone loads in about a second)."""
    path = tmp_path / "slow-python"
    path.write_text(f"#!/bin/sh\nsleep {delay_s}\nexec {sys.executable} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def health(url: str, name: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/readyz").json()["backends"][name])


def test_a_launched_llama_cpp_server_is_supervised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="switchyard.launch")
    port = free_port()
    launched = {"name": "launched", "plugin": "llamacpp_server",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "launch": {"python": slow_python(tmp_path, 8), "progress_s": 1,
                           "args": ["--n_ctx", "512", "--n_threads", "1"],
                           "restart_backoff_s": 0.5, "stop_timeout_s": 10,
                           "log_file": str(tmp_path / "server.log")}}
    embedded = {"name": "embedded", "plugin": "llamacpp", "n_ctx": 512}
    # health checks every 2 s, each allowed 2 s (llama_cpp.server answers /v1/models only
    # between generations)
    with gateway(tmp_path, launched, embedded, health={"probe_interval_s": 2}) as gw, \
            sdk(gw.url, timeout=120) as c:
        launcher = gw.app.state.gateway.backends["launched"].launcher
        # loading: out of routing at once, while the embedded model serves
        wait_until(lambda: health(gw.url, "launched")["probe_ok"] is not None, timeout=5,
                   what="the first health check")
        loading = health(gw.url, "launched")
        assert loading["probe_ok"] is False and "loading its server" in loading["last_error"]
        with pytest.raises(Exception) as e:
            c.chat.completions.create(model="launched", messages=MSG, max_tokens=4)
        assert getattr(e.value, "status_code", None) == 503
        assert "backend_starting" in str(e.value) and "loading its server" in str(e.value)
        r = c.chat.completions.with_raw_response.create(model="embedded", messages=MSG,
                                                        max_tokens=4)
        assert r.headers["x-switchyard-backend"] == "embedded"
        wait_until(lambda: "waiting for" in caplog.text, timeout=30, what="a progress line")

        # ready: serves, through the gateway, under its own name
        wait_until(lambda: health(gw.url, "launched")["probe_ok"], timeout=120,
                   what="the launched server to pass its health check", interval=0.2)
        out = c.chat.completions.create(model="launched", messages=MSG, max_tokens=4)
        assert out.choices[0].message.content
        assert "server ready in" in caplog.text
        # two streams at once: the second waits for the first (llama_cpp.server's default,
        # interrupt_requests, would end the first at once with no finish_reason)
        first_stream = c.chat.completions.create(
            model="launched", messages=MSG, max_tokens=24, temperature=0, stream=True)
        head = next(iter(first_stream))
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(lambda: list(c.chat.completions.create(
                model="launched", messages=MSG, max_tokens=8, temperature=0, stream=True)))
            time.sleep(0.5)  # the second request is at the server, waiting for the first
            rest = [head, *first_stream]
            for chunks in (rest, second.result(timeout=120)):
                assert any(ch.choices and ch.choices[0].finish_reason for ch in chunks)
        first = launcher.pid
        assert first is not None and alive(first)

        # it dies: unhealthy, then started again (a new process) and serving
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: health(gw.url, "launched")["probe_ok"] is False, timeout=30,
                   what="the dead server to be marked unhealthy", interval=0.1)
        wait_until(lambda: launcher.pid != first and health(gw.url, "launched")["probe_ok"],
                   timeout=120, what="the server to be restarted", interval=0.2)
        assert "exited with -9" in caplog.text and "restarting its server" in caplog.text
        out = c.chat.completions.create(model="launched", messages=MSG, max_tokens=4)
        assert out.choices[0].message.content
        second = launcher.pid
    # the gateway stopped: so did its server
    assert second is not None and not alive(second)
    assert "Uvicorn running" in (tmp_path / "server.log").read_text()


def test_a_port_held_by_another_process_is_reported(tmp_path: Path) -> None:
    """A server there that does not serve our model (or anything else on the port) would
    pass the health check in place of ours: the launcher starts nothing, says why, and keeps
    the backend out of routing."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = {"name": "launched", "plugin": "llamacpp_server",
               "base_url": f"http://127.0.0.1:{port}/v1", "launch": {}}
        with gateway(tmp_path, cfg, health={"probe_interval_s": 0.3}) as gw:
            launcher = gw.app.state.gateway.backends["launched"].launcher
            wait_until(lambda: "another process holds" in launcher.state, timeout=30,
                       what="the launcher to see the port taken")
            assert launcher.pid is None
            assert health(gw.url, "launched")["probe_ok"] is False


def test_two_gateways_share_one_launched_server(tmp_path: Path) -> None:
    """Several gateway processes (server.workers) with the same launched backend: the first
    launches, the next uses that server; when it goes away, the next launches its own."""
    port = free_port()
    cfg = {"name": "launched", "plugin": "llamacpp_server",
           "base_url": f"http://127.0.0.1:{port}/v1",
           "launch": {"args": ["--n_ctx", "512", "--n_threads", "1"], "health_interval_s": 0.5,
                      "restart_backoff_s": 0.5}}
    fast = {"probe_interval_s": 2}

    def ready(url: str) -> bool:
        return bool(health(url, "launched")["probe_ok"])

    a_running = gateway(tmp_path / "a", cfg, health=fast)
    a = a_running.__enter__()
    try:
        first = a.app.state.gateway.backends["launched"].launcher
        wait_until(lambda: ready(a.url), timeout=120, interval=0.2, what="a's server")
        with gateway(tmp_path / "b", cfg, health=fast) as b, sdk(b.url, timeout=120) as c:
            second = b.app.state.gateway.backends["launched"].launcher
            wait_until(lambda: ready(b.url), timeout=60, interval=0.2, what="b to use it")
            assert first.pid is not None and second.pid is None  # one server: a's
            assert "another process runs" in second.state
            out = c.chat.completions.create(model="launched", messages=MSG, max_tokens=2)
            assert out.choices[0].message.content
            a_running.__exit__(None, None, None)  # a stops, and so does its server
            a_running = None
            wait_until(lambda: second.pid is not None and second.ready, timeout=120,
                       interval=0.2, what="b to launch its own server")
            out = c.chat.completions.create(model="launched", messages=MSG, max_tokens=2)
            assert out.choices[0].message.content
    finally:
        if a_running is not None:
            a_running.__exit__(None, None, None)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_server_ends_with_the_gateway_process(tmp_path: Path, how: int) -> None:
    """`switchyard serve` stopped (SIGTERM: the shutdown stops its server) or killed
    (SIGKILL: nothing runs; the kernel ends the server, asked to when it started)."""
    import subprocess

    import yaml

    port, gw_port = free_port(), free_port()
    cfg = tmp_path / "switchyard.yaml"
    cfg.write_text(yaml.safe_dump({
        "backends": [{"name": "launched", "plugin": "llamacpp_server",
                      "base_url": f"http://127.0.0.1:{port}/v1",
                      "launch": {"args": ["--n_ctx", "512", "--n_threads", "1"]}}],
        "health": {"probe_interval_s": 1}, "log_level": "warning",
        "ledger": {"path": str(tmp_path / "ledger.sqlite3")}}))
    url = f"http://127.0.0.1:{gw_port}"
    with (tmp_path / "serve.log").open("wb") as out:
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(cfg),
                               "--port", str(gw_port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            try:
                return bool(health(url, "launched")["probe_ok"])
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=120, interval=0.3, what="the launched server")
        server = [int(p) for p in Path(f"/proc/{gw.pid}/task/{gw.pid}/children").read_text()
                  .split() if "llama_cpp.server" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(server) == 1 and alive(server[0])
        gw.send_signal(how)
        gw.wait(30)
        wait_until(lambda: not alive(server[0]), timeout=30, what="the server to end")
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
