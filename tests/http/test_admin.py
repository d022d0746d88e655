"""Teams, keys and budgets through the HTTP API with real keys, and the official openai SDK
as the client. The backend is the recording OpenAI-compatible upstream with fixed prices:
5 completion tokens at $0.001 each, so every request costs exactly $0.005."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.openai_upstream import RecordingUpstream
from support import wait_until

from gateway import hookimpl
from gateway.http.app import create_app

LiveServer = Any
ADMIN = "admin-secret-for-tests"
PER_REQUEST = 0.005


@pytest.fixture(scope="module")
def root(request: pytest.FixtureRequest) -> Any:
    """tests/conftest.py (this directory has a conftest of its own)."""
    return request.config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))


@pytest.fixture(scope="module")
def upstream(root: Any) -> Iterator[LiveServer]:
    with root.serve(RecordingUpstream("up-model").app) as srv:
        yield srv


class Alerts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, float, float]] = []

    @hookimpl
    def switchyard_budget_alert(self, team: str, spent_usd: float, budget_usd: float,
                                pct: float) -> None:
        self.seen.append((team, spent_usd, budget_usd, pct))


def settings(root: Any, tmp_path: Path, upstream: LiveServer, **kw: Any) -> Any:
    backend = {"name": "up", "plugin": "openai_compatible", "base_url": upstream.url + "/v1",
               "model": "up-model", "pricing": {"input_per_mtok": 0, "output_per_mtok": 1000}}
    other = {**backend, "name": "up2", "model": "other-model"}
    kw.setdefault("admin_key", ADMIN)
    return root.make_settings(tmp_path, backends=[backend, other], **kw)


@pytest.fixture(params=["memory", "redis"])
def gw(request: pytest.FixtureRequest, root: Any, tmp_path: Path,
       upstream: LiveServer) -> Iterator[Any]:
    state: dict[str, Any] = {"kind": request.param}
    if request.param == "redis":
        state.update(url=request.getfixturevalue("redis_url"),
                     prefix=request.getfixturevalue("redis_prefix"))
    alerts = Alerts()
    app = create_app(settings(root, tmp_path, upstream, state=state), extra_plugins=[alerts])
    with root.serve(app) as srv:
        srv.alerts = alerts  # type: ignore[attr-defined]
        yield srv


def admin(srv: LiveServer, method: str, path: str, key: str | None = ADMIN,
          **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, srv.url + path, headers=headers, timeout=30, **kw)


def sdk(srv: LiveServer, key: str = "no-key", retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=retries, timeout=30)


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(
        model="up-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5, **kw)


def new_team(srv: LiveServer, name: str = "acme", **kw: Any) -> str:
    r = admin(srv, "POST", "/admin/teams", json={"name": name, **kw})
    assert r.status_code == 201, r.text
    r = admin(srv, "POST", "/admin/keys", json={"team": name, "name": "ci"})
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def test_open_until_a_team_exists_then_keys_are_required(gw: LiveServer) -> None:
    assert ask(sdk(gw)).choices[0].message.content == "Hello from the recording upstream"
    key = new_team(gw)
    assert key.startswith("sk-sy-")
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(gw))
    with pytest.raises(openai.AuthenticationError) as e:
        ask(sdk(gw, key[:-2] + "xx"))
    assert key not in str(e.value.body) and key[:-2] not in str(e.value.body)
    assert ask(sdk(gw, key)).usage.completion_tokens == 5


def test_admin_key_is_required(gw: LiveServer, root: Any, tmp_path: Path,
                               upstream: LiveServer) -> None:
    assert admin(gw, "GET", "/admin/teams", key=None).status_code == 401
    assert admin(gw, "GET", "/admin/teams", key="wrong").status_code == 401
    assert admin(gw, "GET", "/admin/teams").json() == {"object": "list", "data": []}
    app = create_app(settings(root, tmp_path / "off", upstream, admin_key=None))
    with root.serve(app) as off:
        r = admin(off, "GET", "/admin/teams")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_team_crud_and_bad_input(gw: LiveServer) -> None:
    body = {"name": "acme", "budget_usd": 2.5, "period": "day", "rpm": 100,
            "models": ["up-model"], "backends": ["up"]}
    r = admin(gw, "POST", "/admin/teams", json=body)
    assert r.status_code == 201 and r.json()["budget_usd"] == 2.5
    dup = admin(gw, "POST", "/admin/teams", json=body)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "team_exists"
    for bad in ({"name": "neg", "budget_usd": -1}, {"name": "p", "period": "year"},
                {"name": "bad name!"}, {"name": "x", "colour": "red"},
                {"name": "b", "backends": ["nope"]}, {"name": "m", "models": ["gpt-9"]}):
        r = admin(gw, "POST", "/admin/teams", json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert admin(gw, "POST", "/admin/teams", content=b"{not json").status_code == 400
    huge = admin(gw, "POST", "/admin/teams", json={"name": "big", "models": ["m" * 100_000]})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    assert admin(gw, "GET", "/admin/teams/big").status_code == 404
    assert admin(gw, "GET", "/admin/teams/ghost").status_code == 404
    assert admin(gw, "PATCH", "/admin/teams/ghost", json={"rpm": 1}).status_code == 404
    assert admin(gw, "DELETE", "/admin/teams/ghost").status_code == 404
    assert admin(gw, "GET", "/admin/teams/ghost/spend").status_code == 404
    r = admin(gw, "PATCH", "/admin/teams/acme", json={"budget_usd": 9, "rpm": None})
    assert r.status_code == 200 and r.json()["budget_usd"] == 9 and r.json()["rpm"] is None
    assert r.json()["period"] == "day", "fields not sent stay as they were"
    assert admin(gw, "PATCH", "/admin/teams/acme", json={"budget_usd": -3}).status_code == 400
    assert [t["name"] for t in admin(gw, "GET", "/admin/teams").json()["data"]] == ["acme"]
    assert admin(gw, "GET", "/admin/teams/acme").json()["budget_usd"] == 9
    r = admin(gw, "DELETE", "/admin/teams/acme")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert admin(gw, "GET", "/admin/teams/acme").status_code == 404


def test_keys_list_revoke_rotate(gw: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = new_team(gw)
    assert admin(gw, "POST", "/admin/keys", json={"team": "ghost", "name": "x"}).status_code == 404
    r = admin(gw, "POST", "/admin/keys", json={"team": "acme", "name": "ci"})
    assert r.status_code == 409
    r = admin(gw, "POST", "/admin/keys", json={"team": "acme", "name": "old",
                                               "expires_at": "2001-01-01T00:00:00Z"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires_at"
    listed = admin(gw, "GET", "/admin/keys", params={"team": "acme"})
    assert listed.status_code == 200
    (entry,) = listed.json()["data"]
    assert entry["name"] == "ci" and entry["revoked"] is False
    assert not {"key", "salt", "digest"} & set(entry)
    key_id = entry["key_id"]
    assert key_id in key and key.split("_", 1)[1] not in listed.text
    assert admin(gw, "GET", "/admin/keys", params={"team": "ghost"}).status_code == 404
    assert admin(gw, "GET", f"/admin/keys/{key_id}").json()["team"] == "acme"
    assert admin(gw, "GET", "/admin/keys/0000000000000000").status_code == 404

    rot = admin(gw, "POST", f"/admin/keys/{key_id}/rotate")
    assert rot.status_code == 201
    new = rot.json()["key"]
    assert new != key and rot.json()["name"] == "ci"
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(gw, key))
    assert ask(sdk(gw, new)).choices
    assert admin(gw, "POST", f"/admin/keys/{key_id}/rotate").status_code == 400

    new_id = rot.json()["key_id"]
    assert admin(gw, "DELETE", f"/admin/keys/{new_id}").json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError) as e:
        ask(sdk(gw, new))
    assert "revoked" in e.value.message
    metrics = httpx.get(gw.url + "/metrics").text
    for secret in (key, new):
        assert secret not in metrics
        assert all(secret not in rec.getMessage() for rec in caplog.records)


def test_budget_holds_and_the_sdk_does_not_retry(gw: LiveServer) -> None:
    key = new_team(gw, budget_usd=4 * PER_REQUEST, soft_limit_pct=50)
    client = sdk(gw, key, retries=3)
    for _ in range(3):
        ask(client)
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    with pytest.raises(openai.RateLimitError) as e:
        ask(client)
    err = e.value
    assert err.code == "team_budget_exceeded" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    spend = admin(gw, "GET", "/admin/teams/acme/spend").json()
    assert spend["spent_usd"] == pytest.approx(4 * PER_REQUEST)
    assert spend["reserved_usd"] == 0 and spend["remaining_usd"] == pytest.approx(0)
    assert spend["period"] == "month" and spend["period_start"].endswith("+00:00")
    assert gw.alerts.seen == [("acme", pytest.approx(2 * PER_REQUEST),  # type: ignore[attr-defined]
                               pytest.approx(4 * PER_REQUEST), pytest.approx(50.0))]
    assert 'switchyard_budget_alerts_total{team="acme"} 1.0' in httpx.get(gw.url + "/metrics").text
    # raising the budget takes effect at once
    admin(gw, "PATCH", "/admin/teams/acme", json={"budget_usd": 5 * PER_REQUEST})
    assert ask(client).choices


def test_rate_limit_and_model_restriction(gw: LiveServer) -> None:
    key = new_team(gw, rpm=2)
    client = sdk(gw, key)
    ask(client)
    ask(client)
    with pytest.raises(openai.RateLimitError) as e:
        ask(client)
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    narrow = sdk(gw, new_team(gw, "narrow", models=["other-model"]))
    with pytest.raises(openai.PermissionDeniedError):
        ask(narrow)
    assert narrow.chat.completions.create(
        model="other-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_spend_report_from_the_ledger(gw: LiveServer) -> None:
    key = new_team(gw)
    ask(sdk(gw, key))
    ask(sdk(gw, key))

    def both_requests() -> list[dict[str, Any]] | None:
        r = admin(gw, "GET", "/admin/spend", params={"group_by": "team,model,backend,day"})
        assert r.status_code == 200
        rows = [x for x in r.json()["data"] if x["team"] == "acme"]
        return rows if rows and rows[0]["requests"] == 2 else None

    (row,) = wait_until(both_requests, what="the ledger to report both requests")
    assert row["backend"] == "up" and row["model"] == "up-model" and len(row["day"]) == 10
    assert row["cost_usd"] == pytest.approx(2 * PER_REQUEST) and row["completion_tokens"] == 10
    bad = admin(gw, "GET", "/admin/spend", params={"group_by": "team,colour"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_cli_drives_the_admin_api(gw: LiveServer, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from gateway.cli import main

    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", ADMIN)
    url = ["--url", gw.url]
    assert main(["teams", "create", "cli-team", "--budget", "1.5", "--period", "week",
                 "--models", "up-model", *url]) == 0
    assert json.loads(capsys.readouterr().out)["period"] == "week"
    assert main(["teams", "create", "cli-team", *url]) == 1
    assert "409" in capsys.readouterr().err
    assert main(["keys", "create", "--team", "cli-team", "--name", "ci", *url]) == 0
    key = json.loads(capsys.readouterr().out)["key"]
    ask(sdk(gw, key))
    assert main(["teams", "spend", "cli-team", *url]) == 0
    assert json.loads(capsys.readouterr().out)["spent_usd"] == pytest.approx(PER_REQUEST)
    assert main(["keys", "list", "--team", "cli-team", *url]) == 0
    listed = capsys.readouterr().out
    assert key.split("_", 1)[1] not in listed and '"revoked": false' in listed
    assert main(["teams", "update", "cli-team", "--no-budget", *url]) == 0
    assert json.loads(capsys.readouterr().out)["budget_usd"] is None
    assert main(["teams", "delete", "cli-team", "--admin-key", "wrong", *url]) == 1
    assert main(["spend", "--group-by", "team,backend", *url]) == 0
