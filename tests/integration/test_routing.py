"""Routing on live telemetry, end to end: two real backends behind one route (the
in-process llama.cpp model and a real ``python -m llama_cpp.server`` process), the gateway
on real uvicorn, the official openai SDK as the client (no client-side retries).

- the energy policy picks the frugal backend; requests switch policy within what the
  route allows; the example plugin sends code to the GPU-named backend;
- the latency policy moves traffic away from a backend slowed by a delaying TCP proxy,
  and onto it again when the other one is busy;
- killing the server under load costs no request; after a restart, traffic returns
  once the breaker's half-open probe succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx
import openai
import pytest
from support import free_port, make_settings, serve

from gateway.http.app import create_app
from plugins.llamacpp import smollm2_path

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hi."}]


class LlamaServer:
    """A real llama.cpp server process, on a fixed port so it can be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", "512", "--n_threads", "1", "--verbose", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "llama_cpp.server exited during start-up"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    srv = LlamaServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


class DelayProxy:
    """A TCP proxy that holds every chunk from the client for ``delay`` seconds: each
    request (keep-alive or not) reaches the server that much later."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, delayed: bool) -> None:
        try:
            while data := await r.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(cr, uw, True), self._pipe(ur, cw, False))

    def __enter__(self) -> Self:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop)
        self.server = fut.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def local_backend(**kw: Any) -> dict[str, Any]:
    return {"name": "local", "plugin": "llamacpp", "n_ctx": 512, "context_window": 512,
            "n_threads": 1, **kw}


def server_backend(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "plugin": "openai_compatible", "base_url": url, "model": "smollm2",
            "context_window": 512, "timeouts": {"connect_s": 2, "first_token_s": 30, "total_s": 60},
            **kw}


def sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(c: openai.OpenAI, model: str = "auto", **kw: Any) -> Any:
    kw.setdefault("messages", HI)
    kw.setdefault("max_tokens", 4)
    return c.chat.completions.with_raw_response.create(model=model, **kw)


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    time.sleep(0.3)  # the writer thread flushes every 50 ms
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY started_at")]


# ---- energy, overrides, the example plugin -------------------------------------------------


def test_energy_policy_picks_the_frugal_backend_and_requests_switch_within_the_route(
    tmp_path: Path, llama_server: LlamaServer
) -> None:
    settings = make_settings(
        tmp_path,
        backends=[
            local_backend(energy={"watts_busy": 25.0}),  # free, but a 25 W CPU
            server_backend("gpu-srv", llama_server.url, energy={"joules_per_token": 0.001},
                           pricing={"input_per_mtok": 5.0, "output_per_mtok": 15.0}),
        ],
        routes=[{"name": "auto", "backends": ["local", "gpu-srv"], "policy": "energy",
                 "allowed_policies": ["energy", "cost"]},
                {"name": "code", "backends": ["local", "gpu-srv"], "policy": "cost"}],
    )
    with serve(create_app(settings)) as srv, sdk(srv.url) as c:
        for _ in range(2):
            r = ask(c)
            assert r.headers["x-switchyard-backend"] == "gpu-srv"
            assert r.headers["x-switchyard-route"].startswith("gpu-srv; energy: fewest joules")
        # per request: the header, or extra_body, switches to cost (local is free)
        r = ask(c, extra_headers={"x-switchyard-policy": "cost"})
        assert r.headers["x-switchyard-backend"] == "local"
        assert r.headers["x-switchyard-route"].startswith("local; cost: cheapest $0.000000")
        r = ask(c, extra_body={"switchyard": {"policy": "cost"}})
        assert r.headers["x-switchyard-backend"] == "local"
        # ... but only to a policy the route allows
        with pytest.raises(openai.PermissionDeniedError, match="not allowed for the route 'auto'"):
            ask(c, extra_body={"switchyard": {"policy": "latency"}})
        # a cost cap leaves the dear backend out; a request nothing can fit is a 400
        r = ask(c, extra_body={"switchyard": {"max_cost_usd": 0.000001}})
        assert r.headers["x-switchyard-route"].startswith("local; energy: fewest joules")
        assert r.headers["x-switchyard-route"].endswith("(only fit)")
        with pytest.raises(openai.BadRequestError, match="local: context window 512 tokens") as e:
            ask(c, max_tokens=600)
        assert e.value.code == "context_length_exceeded"
        # the example plugin (an installed package): code goes to the GPU backend
        plain = ask(c, "code", messages=[{"role": "user", "content": "Name a colour."}])
        assert plain.headers["x-switchyard-backend"] == "local"
        code = ask(c, "code", messages=[{"role": "user", "content": "Fix:\n```py\nprint(1/0)\n```"}])
        assert code.headers["x-switchyard-backend"] == "gpu-srv"
        assert "code in prompt: GPU backend first" in code.headers["x-switchyard-route"]
    rows = [r for r in ledger_rows(tmp_path / "ledger.sqlite3") if r["status"] == 200]
    assert len(rows) == 7
    decision = json.loads(rows[0]["decision"])
    assert decision["policy"] == "energy" and decision["order"] == ["gpu-srv", "local"]
    preds = decision["predictions"]
    assert set(preds) == {"local", "gpu-srv"}
    assert preds["gpu-srv"]["energy_j"] < preds["local"]["energy_j"]
    assert preds["gpu-srv"]["cost_usd"] > preds["local"]["cost_usd"] == 0
    assert all(preds[b]["ttft_s"] > 0 for b in preds)


# ---- latency: a slowed backend loses traffic; a busy one too ---------------------------------


def test_latency_policy_moves_traffic_away_from_a_slow_backend(
    tmp_path: Path, llama_server: LlamaServer
) -> None:
    with DelayProxy(llama_server.port) as proxy:
        settings = make_settings(
            tmp_path,
            backends=[local_backend(),
                      server_backend("srv", f"http://127.0.0.1:{proxy.port}/v1")],
            routes=[{"name": "auto", "backends": ["local", "srv"], "policy": "latency",
                     "policy_options": {"fresh_s": 1.0, "half_life_s": 1.0}}],
        )
        with serve(create_app(settings)) as gw, sdk(gw.url) as c:
            ask(c, "local")
            ask(c, "srv")  # both have estimates now
            proxy.delay = 1.0  # the server slows down
            ask(c, "srv")  # ... as some client sees
            served = [ask(c).headers["x-switchyard-backend"] for _ in range(5)]
            assert served.count("local") >= 4, served

            # the server is fast again; the local model gets busy with a long generation
            proxy.delay = 0.0
            long = threading.Thread(target=ask, args=(c, "local"), kwargs={
                "max_tokens": 400, "logit_bias": {"0": -100, "2": -100},  # no end of text
                "messages": [{"role": "user", "content": "Tell a very long story."}]})
            long.start()
            time.sleep(1.0)
            busy_served = []
            while long.is_alive() and len(busy_served) < 4:
                busy_served.append(ask(c).headers["x-switchyard-backend"])
            long.join()
            assert busy_served.count("srv") >= 2, busy_served


# ---- failure: kill the server under load, restart it -----------------------------------------


def test_killing_a_backend_under_load_costs_no_request_and_traffic_returns(
    tmp_path: Path, llama_server: LlamaServer
) -> None:
    settings = make_settings(
        tmp_path,
        backends=[local_backend(pricing={"input_per_mtok": 1.0, "output_per_mtok": 1.0}),
                  server_backend("srv", llama_server.url)],  # free: the cost policy's choice
        routes=[{"name": "auto", "backends": ["local", "srv"], "policy": "cost"}],
        health={"probe_interval_s": 2.0, "breaker": {"failure_threshold": 2, "open_s": 3.0}},
    )
    with serve(create_app(settings)) as gw, sdk(gw.url) as c:
        assert ask(c).headers["x-switchyard-backend"] == "srv"
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(ask, c) for _ in range(12)]
            while sum(f.done() for f in futures) < 2:
                time.sleep(0.02)
            llama_server.kill()  # with three requests in flight on it
            results = [f.result() for f in futures]  # raises if any request failed
        served = [r.headers["x-switchyard-backend"] for r in results]
        assert all(r.parse().choices[0].message.content is not None for r in results)
        assert served[-1] == "local" and "srv" in served
        # the failures opened its circuit (the health checks may not have run yet)
        ready = httpx.get(gw.url + "/readyz").json()["backends"]["srv"]
        assert ready["breaker"] in ("open", "half_open")

        llama_server.start()
        deadline = time.monotonic() + 60
        while ask(c).headers["x-switchyard-backend"] != "srv":
            assert time.monotonic() < deadline, "traffic never returned to the restarted server"
            time.sleep(0.2)
        assert httpx.get(gw.url + "/readyz").json()["backends"]["srv"]["breaker"] == "closed"
        assert ask(c).headers["x-switchyard-backend"] == "srv"
    rows = ledger_rows(tmp_path / "ledger.sqlite3")
    assert all(r["status"] == 200 for r in rows)
    # the requests in flight when the server died fell back, invisibly to their clients
    assert any(r["attempts"] > 1 and r["backend"] == "local"
               and r["reason"].startswith("fallback after") for r in rows)
