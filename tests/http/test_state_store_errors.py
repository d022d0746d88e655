"""An error Redis returns for one request, at admission (the rate-limit script) or at
reservation (the budget script), end to end: the official SDK as the client, a real Redis
(a prefix per test) whose team data is corrupted as a failing disk or a bad hand edit
would, and the ledger.

The client gets a clean 503 ``state_store_error`` with the OpenAI error body and
``Retry-After``, never a 500; the gateway logs Redis' message once (no key) and records the
refusal in the ledger; it is not an outage, so the next request of a healthy team passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, make_settings, serve

from gateway.http.app import create_app

ADMIN = "admin-secret-for-state-errors"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[tuple[LiveServer, Any]]:
    up = RecordingUpstream("m")
    with serve(up.app) as upstream:
        backend = {"name": "up", "plugin": "openai_compatible", "model": "m",
                   "base_url": upstream.url + "/v1",
                   "pricing": {"input_per_mtok": 1, "output_per_mtok": 1}}
        state = {"kind": "redis", "url": redis_url, "prefix": redis_prefix}
        app = create_app(make_settings(tmp_path, state=state, admin_key=ADMIN,
                                       backends=[backend]))
        with serve(app) as srv:
            yield srv, app


def _key(srv: LiveServer, name: str, **team: Any) -> str:
    auth = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(srv.url + "/admin/teams", headers=auth, timeout=30,
                   json={"name": name, "budget_usd": 10.0, "period": "total", **team})
    assert r.status_code == 201, r.text
    r = httpx.post(srv.url + "/admin/keys", headers=auth, json={"team": name, "name": "k"},
                   timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def _refused(srv: LiveServer, key: str) -> openai.APIStatusError:
    with openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0,
                       timeout=30) as c, pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="up", messages=HI, max_tokens=3)
    return e.value


def _answered(srv: LiveServer, key: str) -> None:
    with openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30) as c:
        assert c.chat.completions.create(model="up", messages=HI, max_tokens=3).choices


@pytest.mark.parametrize("where", ["admission", "reservation"])
def test_an_error_redis_returns_is_a_503_state_store_error(
        gateway: tuple[LiveServer, Any], raw: redis.Redis, redis_prefix: str, where: str,
        caplog: pytest.LogCaptureFixture) -> None:
    srv, app = gateway
    key = _key(srv, "acme", rpm=100)
    healthy = _key(srv, "beta", rpm=100)
    if where == "admission":  # the rate-limit window is a sorted set: make it a string
        raw.set(f"{redis_prefix}{{acme}}:rl:team:rpm", "corrupted")
    else:  # the period's spend is an integer: make it text
        raw.hset(f"{redis_prefix}{{acme}}:b:total", "spent", "corrupted")
    with caplog.at_level(logging.ERROR, logger="switchyard.budgets"):
        err = _refused(srv, key)
        _answered(srv, healthy)  # not an outage: other teams are served at once
    assert err.status_code == 503
    assert err.response.headers["retry-after"] == "1"
    body = err.response.json()["error"]
    assert (body["type"], body["code"], body["param"]) == ("api_error", "state_store_error",
                                                           None)
    assert "state store failed on this request" in body["message"]
    assert "corrupted" not in body["message"] and "Traceback" not in body["message"]
    logged = [r.getMessage() for r in caplog.records if "state store failed" in r.getMessage()]
    assert len(logged) == 1, caplog.text
    assert "team acme" in logged[0] and "ResponseError" in logged[0]
    assert key not in caplog.text and key.split("_", 1)[1] not in caplog.text
    rid = err.response.headers["x-switchyard-request-id"]
    srv.stop()  # the ledger is flushed
    rows = app.state.ledger.query("SELECT status, error_code, team FROM requests "
                                  "WHERE request_id = ?", (rid,))
    assert rows == [{"status": 503, "error_code": "state_store_error", "team": "acme"}]


def test_an_error_redis_returns_while_checking_a_key_is_a_503(
        gateway: tuple[LiveServer, Any], raw: redis.Redis, redis_prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    srv, _app = gateway
    key = _key(srv, "acme")
    healthy = _key(srv, "beta")
    key_id = key.removeprefix("sk-sy-").split("_")[0]
    raw.delete(f"{redis_prefix}key:{key_id}")  # the key's record is a string: make it a hash
    raw.hset(f"{redis_prefix}key:{key_id}", "corrupted", "1")
    with caplog.at_level(logging.ERROR, logger="switchyard.auth"):
        err = _refused(srv, key)
        _answered(srv, healthy)
    assert err.status_code == 503 and err.response.headers["retry-after"] == "1"
    body = err.response.json()["error"]
    assert body["code"] == "state_store_error" and "API keys" in body["message"]
    logged = [r.getMessage() for r in caplog.records if "checking an API key" in r.getMessage()]
    assert len(logged) == 1 and "ResponseError" in logged[0], caplog.text
    assert key.split("_", 1)[1] not in caplog.text
