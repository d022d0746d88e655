"""Settlement under Redis state, end to end: a team with a virtual key, the official SDK as
the client, a real Redis (a prefix per test) and the ledger.

A zero-priced backend (the embedded llama.cpp model, or any backend without pricing) holds
and settles zero nano-dollars. Redis once refused the settlement ("-0 is not an integer"),
and the request the backend had answered became a 500 with two ledger rows; a backend
timeout became a 500 instead of a 504 the same way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, make_settings, serve

from gateway.http.app import create_app

ADMIN = "admin-secret-for-settlement-tests"


def _key(srv: LiveServer) -> str:
    """A team (no budget set: zero-priced requests are all it spends) and one key of it."""
    auth = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(srv.url + "/admin/teams", json={"name": "acme"}, headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    r = httpx.post(srv.url + "/admin/keys", json={"team": "acme", "name": "ci"}, headers=auth,
                   timeout=30)
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def _client(srv: LiveServer, key: str, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def _rows(ledger: Any, rid: str) -> list[dict[str, Any]]:
    return ledger.query("SELECT status, error_code, team, cost_usd FROM requests "
                        "WHERE request_id = ?", (rid,))


def _settled(srv: LiveServer, timeout: float = 30) -> tuple[float, float]:
    """(spent, reserved) of team acme once nothing is held (a stream settles just after its
    last byte)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(srv.url + "/admin/teams/acme/spend", timeout=30,
                      headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        if not r.json()["reserved_usd"] or time.monotonic() > deadline:
            return r.json()["spent_usd"], r.json()["reserved_usd"]
        time.sleep(0.05)


@pytest.fixture
def redis_state(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"kind": "redis", "url": redis_url, "prefix": redis_prefix}


@pytest.mark.slow
def test_the_zero_priced_local_model_answers_with_one_ledger_row(
        tmp_path: Path, redis_state: dict[str, Any]) -> None:
    settings = make_settings(tmp_path, state=redis_state, admin_key=ADMIN,
                             backends=[{"name": "local-smol", "plugin": "llamacpp"}],
                             routes=[{"name": "auto", "backends": ["local-smol"]}])
    app = create_app(settings)
    rids = []
    with serve(app) as srv, _client(srv, _key(srv)) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
        assert raw.http_response.status_code == 200
        assert raw.parse().choices[0].message.content is not None
        rids.append(raw.headers["x-switchyard-request-id"])
        stream = c.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4,
            stream=True)
        rids.append(stream.response.headers["x-switchyard-request-id"])
        assert list(stream), "the stream ends with no error event (the SDK raises on one)"
        assert _settled(srv) == (0.0, 0.0), "both holds were settled, at no cost"
    ledger = app.state.ledger  # closed with the server: every record is on disk
    for rid in rids:
        assert _rows(ledger, rid) == [
            {"status": 200, "error_code": None, "team": "acme", "cost_usd": 0.0}]


def test_a_backend_timeout_under_redis_state_is_a_504(
        tmp_path: Path, redis_state: dict[str, Any]) -> None:
    up = RecordingUpstream("m")
    up.behave("slow", delay_s=5.0)
    with serve(up.app) as upstream:
        backend = {"name": "slow", "plugin": "openai_compatible", "model": "m",
                   "base_url": upstream.url + "/v1", "timeouts": {"total_s": 0.3}}
        app = create_app(make_settings(tmp_path, state=redis_state, admin_key=ADMIN,
                                       backends=[backend]))
        with serve(app) as srv, _client(srv, _key(srv), timeout=30) as c:
            with pytest.raises(openai.APIStatusError) as e:
                c.chat.completions.create(
                    model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert e.value.status_code == 504
            assert e.value.code == "backend_timeout"
            rid = e.value.response.headers["x-switchyard-request-id"]
    assert _rows(app.state.ledger, rid) == [
        {"status": 504, "error_code": "backend_timeout", "team": "acme", "cost_usd": 0.0}]
