"""Two gateway replicas sharing one real Redis: a backend that replica A finds down, replica
B leaves alone without ever calling it, and B sends it traffic again once A's health check
sees it back.

B checks its backends only at start-up (``probe_interval_s`` 60): all it knows about the
dead backend is what A shared. The upstreams are RecordingUpstream (the OpenAI wire
protocol) on real uvicorn; the clients are the official openai SDK.

A's marks outlive a stalled event loop on a loaded machine: its breaker's mark lasts
``OPEN_S``, its failed checks' mark two probe intervals, renewed every interval. Nothing
waits on a clock: each step polls for the state it needs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.harness import sdk
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, make_settings, serve, wait_until

from gateway.http.app import create_app

MSG = [{"role": "user", "content": "Say hello"}]
OPEN_S = 8.0  # A's breaker mark: B's whole avoiding phase fits in it many times over
A_PROBE_S = 1.0  # A's checks: a failed one is marked for 2 s and renewed every second


def backend(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "plugin": "openai_compatible", "base_url": url + "/v1",
            "model": "upstream-model", "api_key": "unused", "timeouts": {"connect_s": 1.0}}


@pytest.fixture
def upstreams() -> Iterator[tuple[RecordingUpstream, LiveServer, RecordingUpstream, str]]:
    primary, backup = RecordingUpstream(), RecordingUpstream()
    first = LiveServer(primary.app).start()
    try:
        with serve(backup.app) as srv:
            yield primary, first, backup, srv.url
    finally:
        first.stop()


def replica(tmp_path: Path, name: str, urls: tuple[str, str], redis_url: str, prefix: str,
            probe_interval_s: float) -> LiveServer:
    (tmp_path / name).mkdir()
    settings = make_settings(
        tmp_path / name,
        backends=[backend("primary", urls[0]), backend("backup", urls[1])],
        routes=[{"name": "pair", "backends": ["primary", "backup"], "policy": "first_healthy"}],
        state={"kind": "redis", "url": redis_url, "prefix": prefix},
        health={"probe_interval_s": probe_interval_s, "share_interval_s": 0.1,
                "breaker": {"failure_threshold": 2, "open_s": OPEN_S}},
    )
    return LiveServer(create_app(settings)).start()


def served_by(client: Any) -> str:
    raw = client.chat.completions.with_raw_response.create(model="pair", messages=MSG,
                                                           max_tokens=3)
    assert raw.parse().choices[0].message.content
    return str(raw.headers["x-switchyard-backend"])


def readyz(srv: LiveServer) -> dict[str, Any]:
    return httpx.get(srv.url + "/readyz").json()  # type: ignore[no-any-return]


def test_a_backend_down_on_one_replica_is_avoided_by_the_other_until_it_is_back(
        tmp_path: Path, redis_url: str, redis_prefix: str,
        upstreams: tuple[RecordingUpstream, LiveServer, RecordingUpstream, str]) -> None:
    primary, primary_srv, backup, backup_url = upstreams
    urls = (primary_srv.url, backup_url)
    a = replica(tmp_path, "a", urls, redis_url, redis_prefix, probe_interval_s=A_PROBE_S)
    b = replica(tmp_path, "b", urls, redis_url, redis_prefix, probe_interval_s=60.0)
    try:
        with sdk(a.url) as ca, sdk(b.url) as cb:
            assert served_by(ca) == served_by(cb) == "primary"

            primary_srv.stop()
            # A's requests fail over to the backup and open A's breaker; A's checks fail
            assert served_by(ca) == "backup"
            wait_until(lambda: readyz(a)["backends"]["primary"]["breaker"] != "closed",
                       what="A's breaker to open")

            def breaker_mark() -> Any:
                # A's failed checks may be marked first; the breaker's mark outlasts them
                mark = readyz(b)["backends"]["primary"]["down_elsewhere"]
                return mark if mark and mark["reason"] == "circuit breaker open" else None

            elsewhere = wait_until(breaker_mark, what="B to see the breaker mark A published")
            assert elsewhere["replica"] == readyz(a)["replica"] != readyz(b)["replica"]
            assert time.time() < elsewhere["until"] <= time.time() + OPEN_S
            calls_before = len(backup.requests)
            assert [served_by(cb) for _ in range(5)] == ["backup"] * 5
            assert len(backup.requests) == calls_before + 5
            mine = readyz(b)["backends"]["primary"]
            # B never called the dead server: any call would have failed and shown here
            assert (mine["breaker"], mine["probe_ok"], mine["last_error"]) == ("closed", True, None)

            served_before = len(primary.requests)
            back = LiveServer(primary.app, port=primary_srv.port).start()
            try:
                # A clears its mark once its breaker is past OPEN_S and a check passes
                wait_until(lambda: readyz(b)["backends"]["primary"]["down_elsewhere"] is None,
                           timeout=OPEN_S + 30, what="A's passing health check to clear the mark")
                wait_until(lambda: served_by(cb) == "primary", what="B to route to primary again")
                assert len(primary.requests) > served_before
                assert readyz(b)["backends"]["primary"]["last_error"] is None
            finally:
                back.stop()
    finally:
        a.stop()
        b.stop()
