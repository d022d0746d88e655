"""How the in-process llama.cpp backend serves under load, seen from the client: generation
never blocks the event loop, the queue is bounded (503 + Retry-After past it), and a client
that goes away stops its generation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from http_helpers import ledger_row, request_id, sdk

pytestmark = pytest.mark.slow

TALK = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def wait_until(cond: Callable[[], bool], alive: Callable[[], bool], what: str,
               timeout: float = 120.0) -> None:
    """Poll ``cond`` while ``alive()``; fail (not a timing assertion: a safety net) if the
    thing being watched ended first."""
    deadline = time.monotonic() + timeout
    while not cond():
        if not alive() or time.monotonic() > deadline:
            raise AssertionError(f"never saw: {what}")
        time.sleep(0.01)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def metric(url: str, name: str, backend: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            if s.name == name and s.labels.get("backend") == backend and all(
                    s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_generation_does_not_block_the_event_loop(client, embedded_server, no_eos):
    url = embedded_server.url
    t, out = in_thread(lambda: client.chat.completions.create(
        model="auto", messages=TALK, max_tokens=300, logit_bias=no_eos))

    def generating() -> bool:
        return httpx.get(url + "/readyz").json()["backends"]["local-smol"]["inflight"] >= 1

    # /readyz can only report the generation in flight if the loop runs while it does
    wait_until(generating, t.is_alive, "/readyz answering while the generation runs")
    assert httpx.get(url + "/healthz").status_code == 200
    assert t.is_alive(), "the generation ended before /healthz answered"
    t.join()
    assert "error" not in out
    assert out["value"].usage.completion_tokens == 300


def test_disconnect_mid_stream_stops_generation(client, embedded_server, no_eos):
    rid = request_id()
    gone_before = metric(embedded_server.url, "switchyard_requests_total", "local-smol",
                         status="499")
    stream = client.chat.completions.create(
        model="auto", messages=TALK, max_tokens=400, logit_bias=no_eos, stream=True,
        extra_headers={"x-request-id": rid})
    got = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk)
        if len(got) == 2:
            break
    stream.close()

    row = ledger_row(embedded_server.app, rid)
    assert row["status"] == 499
    assert row["error_code"] == "client_disconnected"
    assert 2 <= row["completion_tokens"] < 200  # not the 400 it would have written
    assert row["backend"] == "local-smol"
    assert metric(embedded_server.url, "switchyard_requests_total", "local-smol",
                  status="499") == gone_before + 1
    # the backend is free again: the next request is served
    nxt = client.chat.completions.create(model="auto", messages=TALK, max_tokens=3)
    assert nxt.usage.completion_tokens >= 1


def test_bounded_queue_answers_503_with_retry_after(settings_factory, serve_app, no_eos):
    from gateway.http.app import create_app

    settings = settings_factory(backends=[{"name": "local-smol", "plugin": "llamacpp",
                                           "max_queue": 1}])
    with serve_app(create_app(settings)) as srv, sdk(srv.url) as c:
        # A holds the model: a long stream, read one chunk to know it is generating
        running = c.chat.completions.create(model="local-smol", messages=TALK, max_tokens=1500,
                                            logit_bias=no_eos, stream=True)
        try:
            next(iter(running))
            # B waits in the queue (its one place)
            t, waited = in_thread(lambda: c.chat.completions.create(
                model="local-smol", messages=TALK, max_tokens=3))
            wait_until(lambda: metric(srv.url, "switchyard_backend_queue_depth", "local-smol") == 1,
                       t.is_alive, "B in the queue")
            # the rest are turned away at once, streaming or not
            for stream in (False, False, True, False):
                with pytest.raises(openai.InternalServerError) as e:
                    c.chat.completions.create(model="local-smol", messages=TALK, max_tokens=3,
                                              stream=stream)
                assert e.value.status_code == 503
                assert e.value.code == "backend_overloaded"
                assert int(e.value.response.headers["retry-after"]) >= 1
        finally:
            running.close()  # A's client leaves: its generation stops and B runs
        t.join(timeout=120)
        assert "error" not in waited, waited.get("error")
        assert waited["value"].usage.completion_tokens >= 1
        # a full queue is not a sick backend: the next request is served at once
        after = c.chat.completions.create(model="local-smol", messages=TALK, max_tokens=3)
        assert after.choices[0].message.content is not None
        assert httpx.get(srv.url + "/readyz").json()["backends"]["local-smol"]["breaker"] == "closed"
