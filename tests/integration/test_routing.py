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
import re
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
from support import LiveServer, free_port, make_settings, serve, wait_until

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
                    self._warm_up()
                    return
            time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start")

    def _warm_up(self) -> None:
        """The first generation of a fresh process can take seconds on a loaded machine (its
        weights paged in): pay for it here, not in a gateway's latency estimates."""
        r = httpx.post(self.url + "/chat/completions", timeout=120, json={
            "model": "smollm2", "max_tokens": 1, "messages": HI})
        assert r.status_code == 200, r.text

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


def ledger_rows(gw: LiveServer, path: Path) -> list[dict[str, Any]]:
    """Every row, read after the gateway stopped: its shutdown closed the ledger, which
    writes what is still queued first, so nothing is missing and nothing needs waiting for."""
    assert not gw.thread.is_alive(), "the gateway has not stopped: rows may still be queued"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY started_at")]


def warm_up(c: openai.OpenAI, model: str) -> None:
    """A model instance's first generation can take seconds on a loaded machine (its
    weights paged in). Pay for it with a prompt of over 256 tokens: the gateway keeps its
    time-to-first-token estimates per prompt length, so the short prompts the test compares
    are estimated from warm runs only."""
    assert ask(c, model, max_tokens=1, messages=[{"role": "user", "content": "hello " * 270}])


def inflight(gw: LiveServer, backend: str) -> int:
    return int(httpx.get(gw.url + "/readyz").json()["backends"][backend]["inflight"])


def predicted_ttft_s(answer: Any) -> dict[str, float]:
    """Both backends' predicted TTFT in seconds, as the route header of a latency-routed
    answer shows them: "local; latency: lowest ttft 120 ms (next srv 812 ms)"."""
    route = answer.headers["x-switchyard-route"]
    m = re.fullmatch(r"(\S+); latency: lowest ttft (\d+) ms \(next (\S+) (\d+) ms\)", route)
    assert m, route
    return {m[1]: int(m[2]) / 1000, m[3]: int(m[4]) / 1000}


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
        with pytest.raises(openai.BadRequestError,
                           match="largest context window of its backends is 512 tokens") as e:
            ask(c, max_tokens=600)
        assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
        # the example plugin (an installed package): code goes to the GPU backend
        plain = ask(c, "code", messages=[{"role": "user", "content": "Name a colour."}])
        assert plain.headers["x-switchyard-backend"] == "local"
        code = ask(c, "code", messages=[{"role": "user", "content": "Fix:\n```py\nprint(1/0)\n```"}])
        assert code.headers["x-switchyard-backend"] == "gpu-srv"
        assert "code in prompt: GPU backend first" in code.headers["x-switchyard-route"]
    rows = [r for r in ledger_rows(srv, tmp_path / "ledger.sqlite3") if r["status"] == 200]
    assert len(rows) == 7
    # each billed from its reported usage: the server at its prices and 1 mJ a token, the
    # local model free, its joules from its 25 W profile
    for row in rows:
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        assert row["energy_source"] == "profile"
        if row["backend"] == "gpu-srv":
            assert row["cost_usd"] == pytest.approx(
                (row["prompt_tokens"] * 5.0 + row["completion_tokens"] * 15.0) / 1e6, rel=1e-9)
            assert row["cost_usd"] > 0
            assert row["energy_j"] == pytest.approx(0.001 * tokens, rel=1e-9)
        else:
            assert row["cost_usd"] == 0.0
            assert 0 < row["energy_j"] <= 25.0 * row["latency_ms"] / 1000
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
            # no estimate goes stale during the test (a loaded machine must not turn the
            # slow server's estimate fast again by the clock alone)
            routes=[{"name": "auto", "backends": ["local", "srv"], "policy": "latency",
                     "policy_options": {"fresh_s": 600.0, "half_life_s": 600.0}}],
        )
        with serve(create_app(settings)) as gw, sdk(gw.url) as c:
            warm_up(c, "local")  # the server was warmed up when it started
            for name in ("local", "srv"):
                ask(c, name)  # both have estimates now, of warm runs
            # The server slows down by several times what the local model takes here and
            # now (seconds on a loaded machine, a tenth of one on an idle one) ...
            local_s = predicted_ttft_s(ask(c))["local"]
            # ... but well inside what the long generation below takes (450 tokens, about
            # seven times 64), which must outlast the server's estimate: when the machine's
            # load fell after local_s was taken, a delay of 4 x local_s outlasted it and the
            # generation ended before the router had a reason to move (seen twice)
            t0 = time.monotonic()
            for _ in c.chat.completions.create(  # streamed: its TTFT is not its whole time
                    model="local", messages=HI, max_tokens=64, stream=True,
                    logit_bias={"0": -100, "2": -100}):
                pass
            gen64_s = time.monotonic() - t0
            proxy.delay = min(10.0, max(1.0, 4 * local_s), 2 * gen64_s)
            for _ in range(8):  # ... as some of its clients see: the router learns it
                ask(c, "srv")
                est = predicted_ttft_s(ask(c))
                if est["srv"] > 2 * est["local"]:
                    break
            else:
                raise AssertionError(f"the router never saw the server slow down: {est}")
            answers = [ask(c) for _ in range(5)]
            assert [r.headers["x-switchyard-backend"] for r in answers] == ["local"] * 5, [
                r.headers["x-switchyard-route"] for r in answers]
            srv_ttft_s = predicted_ttft_s(answers[-1])["srv"]  # what the router expects of it

            # the server is fast again; the local model gets busy with a long generation
            proxy.delay = 0.0
            long = threading.Thread(target=ask, args=(c, "local"), kwargs={
                "max_tokens": 450, "logit_bias": {"0": -100, "2": -100},  # no end of text
                "messages": [{"role": "user", "content": "Tell a very long story."}]})
            long.start()
            wait_until(lambda: inflight(gw, "local") or not long.is_alive(), timeout=60,
                       what="the long generation in flight")
            # The router adds to local's predicted TTFT how long its request in flight has run
            # past its expected time: once that is past the server's estimate, the server wins
            busy_since = time.monotonic()
            wait_until(lambda: time.monotonic() - busy_since > srv_ttft_s + 0.5
                       or not long.is_alive(), timeout=60, interval=0.02,
                       what="local's wait to pass the server's estimate")
            busy_served = []
            while long.is_alive() and len(busy_served) < 4:
                busy_served.append(ask(c).headers["x-switchyard-backend"])
            long.join()
            assert len(busy_served) >= 2 and set(busy_served) == {"srv"}, busy_served


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
            wait_until(lambda: sum(f.done() for f in futures) >= 2, timeout=60, interval=0.01,
                       what="two requests served")
            llama_server.kill()  # with three requests in flight on it
            results = [f.result() for f in futures]  # raises if any request failed
        served = [r.headers["x-switchyard-backend"] for r in results]
        assert all(r.parse().choices[0].message.content is not None for r in results)
        assert served[-1] == "local" and "srv" in served
        # the failures opened its circuit (the health checks may not have run yet)
        ready = httpx.get(gw.url + "/readyz").json()["backends"]["srv"]
        assert ready["breaker"] in ("open", "half_open")

        llama_server.start()
        wait_until(lambda: ask(c).headers["x-switchyard-backend"] == "srv", timeout=60,
                   interval=0.2, what="traffic to return to the restarted server")
        assert httpx.get(gw.url + "/readyz").json()["backends"]["srv"]["breaker"] == "closed"
        assert ask(c).headers["x-switchyard-backend"] == "srv"
    rows = ledger_rows(gw, tmp_path / "ledger.sqlite3")
    assert all(r["status"] == 200 for r in rows)
    # the requests in flight when the server died fell back, invisibly to their clients
    assert any(r["attempts"] > 1 and r["backend"] == "local"
               and r["reason"].startswith("fallback after") for r in rows)
