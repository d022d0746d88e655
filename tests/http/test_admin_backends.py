"""Backend health and drains through the admin API: two ``echo`` backends (the third-party
plugin, tests/thirdparty) behind one ``first_healthy`` route, told apart by their prefix;
the official openai SDK as the client. Drains taken on one replica reach another through a
real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from support import LiveServer, free_port, make_settings, serve, wait_until

from gateway.cli import main
from gateway.http.app import create_app

ADMIN = "admin-secret-for-backend-tests"
ROUTE = "pair"


def settings(tmp_path: Path, **kw: Any) -> Any:
    backends = [{"name": name, "plugin": "echo", "prefix": f"{name}: "} for name in ("one", "two")]
    kw.setdefault("admin_key", ADMIN)
    return make_settings(tmp_path, backends=backends,
                         routes=[{"name": ROUTE, "backends": ["one", "two"],
                                  "policy": "first_healthy"}], **kw)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[LiveServer]:
    with serve(create_app(settings(tmp_path))) as srv:
        yield srv


def admin(srv: LiveServer, method: str, path: str, key: str | None = ADMIN,
          **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, srv.url + path, headers=headers, timeout=30, **kw)


def answered_by(srv: LiveServer) -> str:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
    out = client.chat.completions.create(
        model=ROUTE, messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    text = out.choices[0].message.content or ""
    assert text.endswith("hello"), text
    return text.split(":", 1)[0]


def listed(srv: LiveServer) -> dict[str, Any]:
    r = admin(srv, "GET", "/admin/backends")
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["data"]}


def test_drain_moves_traffic_and_undrain_brings_it_back(gw: LiveServer) -> None:
    assert answered_by(gw) == "one"
    before = listed(gw)
    assert list(before) == ["one", "two"]
    assert before["one"]["plugin"] == "echo" and before["one"]["model"] == "echo-1"
    assert before["one"]["breaker"] == "closed" and before["one"]["drained"] is None
    assert before["one"]["down_elsewhere"] is None and before["one"]["inflight"] == 0

    r = admin(gw, "POST", "/admin/backends/one/drain", json={"reason": "disk swap"})
    assert r.status_code == 200, r.text
    assert r.json()["drained"]["reason"] == "disk swap"
    assert answered_by(gw) == "two", "a drain applies on the replica that took it at once"
    drained = listed(gw)["one"]["drained"]
    assert drained["reason"] == "disk swap" and drained["by"].startswith("admin via ")
    assert abs(drained["since"] - time.time()) < 60

    assert admin(gw, "POST", "/admin/backends/two/drain").status_code == 200  # no body
    with pytest.raises(openai.InternalServerError) as e:
        answered_by(gw)
    assert e.value.status_code == 503
    msg = e.value.body["message"]  # type: ignore[index]
    assert "one: out of service (drained: disk swap)" in msg
    assert "two: out of service (drained: no reason given)" in msg
    ready = httpx.get(gw.url + "/readyz")  # nothing can take traffic: out of the balancer
    assert ready.status_code == 503 and ready.json()["backends"]["one"]["drained"]

    for name in ("two", "one"):
        r = admin(gw, "POST", f"/admin/backends/{name}/undrain")
        assert r.status_code == 200 and r.json()["drained"] is None, r.text
    assert answered_by(gw) == "one"
    assert all(b["drained"] is None for b in listed(gw).values())
    assert httpx.get(gw.url + "/readyz").status_code == 200


def test_unknown_backends_bad_bodies_and_the_admin_key(gw: LiveServer) -> None:
    for action in ("drain", "undrain"):
        r = admin(gw, "POST", f"/admin/backends/three/{action}")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "backend_not_found"
        assert "three" in r.json()["error"]["message"]
    r = admin(gw, "POST", "/admin/backends/one/drain", json={"reason": 5})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = admin(gw, "POST", "/admin/backends/one/drain", content=b"not json")
    assert r.status_code == 400
    for key in (None, "wrong"):
        assert admin(gw, "GET", "/admin/backends", key=key).status_code == 401
        assert admin(gw, "POST", "/admin/backends/one/drain", key=key).status_code == 401
        assert admin(gw, "POST", "/admin/backends/one/undrain", key=key).status_code == 401
    assert listed(gw)["one"]["drained"] is None, "a refused drain changed nothing"
    assert answered_by(gw) == "one"


def test_the_admin_api_off_refuses_backend_calls(tmp_path: Path) -> None:
    with serve(create_app(settings(tmp_path, admin_key=None))) as off:
        r = admin(off, "POST", "/admin/backends/one/drain")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert answered_by(off) == "one"


def test_an_unreachable_store_refuses_the_drain(tmp_path: Path) -> None:
    dead = {"kind": "redis", "url": f"redis://127.0.0.1:{free_port()}/0",
            "prefix": "switchyard-test-dead:"}
    with serve(create_app(settings(tmp_path, state=dead))) as srv:
        r = admin(srv, "POST", "/admin/backends/one/drain", json={"reason": "x"})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "state_store_unavailable"
        assert "unreachable" in err["message"] and "was not drained" in err["message"]
        assert listed(srv)["one"]["drained"] is None, "not applied here only"


def test_the_cli_lists_drains_and_undrains(gw: LiveServer, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", ADMIN)
    url = ["--url", gw.url]
    assert main(["backends", "drain", "one", "--reason", "from the shell", "--by", "alice",
                 *url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["drained"]["by"] == "alice" and out["drained"]["reason"] == "from the shell"
    assert answered_by(gw) == "two"
    assert main(["backends", "list", *url]) == 0
    rows = {b["name"]: b for b in json.loads(capsys.readouterr().out)["data"]}
    assert rows["one"]["drained"]["reason"] == "from the shell" and rows["two"]["drained"] is None
    assert main(["backends", "drain", "nope", *url]) == 1
    assert "404" in capsys.readouterr().err
    assert main(["backends", "undrain", "one", *url]) == 0
    assert json.loads(capsys.readouterr().out)["drained"] is None
    assert answered_by(gw) == "one"


def test_a_drain_through_one_replica_reaches_the_other(tmp_path: Path, redis_url: str,
                                                       redis_prefix: str) -> None:
    shared = {"state": {"kind": "redis", "url": redis_url, "prefix": redis_prefix},
              "health": {"share_interval_s": 0.2}}
    a_app = create_app(settings(tmp_path / "a", **shared))
    b_app = create_app(settings(tmp_path / "b", **shared))
    with serve(a_app) as a, serve(b_app) as b:
        assert answered_by(a) == "one" and answered_by(b) == "one"
        r = admin(a, "POST", "/admin/backends/one/drain", json={"reason": "rolling upgrade"})
        assert r.status_code == 200, r.text
        assert answered_by(a) == "two"
        wait_until(lambda: answered_by(b) == "two", what="replica B to see the drain")
        assert listed(b)["one"]["drained"]["reason"] == "rolling upgrade"
        assert admin(b, "POST", "/admin/backends/one/undrain").status_code == 200
        wait_until(lambda: answered_by(a) == "one", what="replica A to see the undrain")
