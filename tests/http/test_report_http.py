"""The savings report over real traffic: a gateway (uvicorn, the official openai SDK, two
teams with their own keys) in front of the recording upstream, one route with the cache on
and one with it off, both served by the cheap backend against a dear baseline. The report
(``GET /admin/report``, ``switchyard report --json``) must add up to what the clients saw
in the response headers, and its savings to the prices the test works out itself; the
dashboard's login gives a team's key its own team only, and never puts a key in a URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.harness import upstream_server
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, make_settings, serve, wait_until

from gateway.cli import main
from gateway.http.app import create_app

pytestmark = pytest.mark.slow

ADMIN = "admin-secret-for-report-tests"
CHEAP = {"input_per_mtok": 100.0, "output_per_mtok": 200.0}
DEAR = {"input_per_mtok": 1000.0, "output_per_mtok": 3000.0}
GENEROUS = {"connect_s": 5.0, "first_token_s": 60.0, "total_s": 120.0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[LiveServer]:
    with upstream_server(RecordingUpstream(model="upstream-model").app) as srv:
        yield srv


def _backend(name: str, url: str, pricing: dict[str, float]) -> dict[str, Any]:
    return {"name": name, "plugin": "openai_compatible", "base_url": url + "/v1",
            "model": "upstream-model", "timeouts": GENEROUS, "pricing": pricing,
            "energy": {"watts_busy": 100.0}}


@pytest.fixture
def gw(tmp_path: Path, upstream: LiveServer) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path, admin_key=ADMIN, cache={"enabled": True, "semantic": False},
        backends=[_backend("cheap", upstream.url, CHEAP), _backend("dear", upstream.url, DEAR)],
        routes=[{"name": "auto", "backends": ["cheap", "dear"], "baseline": "dear"},
                {"name": "plain", "backends": ["cheap", "dear"], "baseline": "dear",
                 "cache": {"enabled": False}}])
    with serve(create_app(settings)) as srv:
        yield srv


def admin(srv: LiveServer, method: str, path: str, key: str | None = ADMIN,
          **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, srv.url + path, headers=headers, timeout=60, **kw)


def new_team(srv: LiveServer, name: str) -> tuple[str, str]:
    assert admin(srv, "POST", "/admin/teams", json={"name": name}).status_code == 201
    r = admin(srv, "POST", "/admin/keys", json={"team": name, "name": "ci"})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["key_id"]


class Seen:
    """What one team's client saw in the response headers."""

    def __init__(self) -> None:
        self.requests, self.cost, self.hits = 0, 0.0, 0
        self.routing_saved, self.cache_saved = 0.0, 0.0
        self.paid: dict[str, float] = {}  # a prompt's first (paid) cost

    def send(self, c: openai.OpenAI, route: str, text: str) -> None:
        raw = c.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": text}], max_tokens=6,
            temperature=0)
        h = raw.headers
        cost = float(h["x-switchyard-cost-usd"])
        self.requests += 1
        self.cost += cost
        if h.get("x-switchyard-cache", "").startswith("hit"):
            self.hits += 1
            self.cache_saved += self.paid[f"{route}:{text}"]
            return
        assert h["x-switchyard-backend"] == "cheap"
        self.paid.setdefault(f"{route}:{text}", cost)
        p, n = int(h["x-switchyard-prompt-tokens"]), int(h["x-switchyard-completion-tokens"])
        # the baseline's price for the same tokens, less what the cheap backend cost
        self.routing_saved += (p * DEAR["input_per_mtok"] + n * DEAR["output_per_mtok"]) / 1e6
        self.routing_saved -= cost


def traffic(srv: LiveServer, key: str, prompts: list[str]) -> Seen:
    seen = Seen()
    with openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0,
                       timeout=60) as c:
        for text in prompts:
            seen.send(c, "auto", text)
            seen.send(c, "auto", text)  # the repeat: a hit on the cached route
            seen.send(c, "plain", text)
            seen.send(c, "plain", text)  # no cache on this route: paid again
    return seen


def flushed(srv: LiveServer, n: int) -> None:
    ledger = srv.app.state.ledger
    wait_until(lambda: ledger.query("SELECT COUNT(*) AS n FROM requests")[0]["n"] >= n,
               what=f"{n} ledger rows")


def check_totals(report: dict[str, Any], seen: Seen) -> None:
    t = report["totals"]
    assert t["requests"] == seen.requests
    assert t["cache_hits"] == seen.hits
    assert t["cost_usd"] == pytest.approx(seen.cost, abs=1e-8 * seen.requests)
    assert report["saved_usd"]["cache"] == pytest.approx(seen.cache_saved, abs=1e-7)
    assert report["saved_usd"]["routing"] == pytest.approx(seen.routing_saved, abs=1e-7)
    assert report["saved_usd"]["routing"] > 0 and report["saved_usd"]["cache"] > 0
    assert report["saved_usd"]["total"] == pytest.approx(
        seen.cache_saved + seen.routing_saved, abs=1e-7)


def test_the_report_adds_up_to_what_the_clients_saw(gw: LiveServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    red_key, _ = new_team(gw, "red")
    blue_key, _ = new_team(gw, "blue")
    red = traffic(gw, red_key, ["What is a switchyard?", "Name a colour", "Count to three"])
    blue = traffic(gw, blue_key, ["Tell me a joke", "Name a colour"])
    everyone = Seen()
    for s in (red, blue):
        everyone.requests += s.requests
        everyone.cost += s.cost
        everyone.hits += s.hits
        everyone.cache_saved += s.cache_saved
        everyone.routing_saved += s.routing_saved
    assert red.hits == 3 and blue.hits == 2  # one hit per prompt on the cached route only
    flushed(gw, everyone.requests)

    r = admin(gw, "GET", "/admin/report")
    assert r.status_code == 200, r.text
    check_totals(r.json(), everyone)
    by_team = admin(gw, "GET", "/admin/report", params={"group_by": "team"}).json()
    groups = {g["team"]: g for g in by_team["groups"]}
    assert set(groups) == {"red", "blue"}
    for name, s in (("red", red), ("blue", blue)):
        assert groups[name]["requests"] == s.requests
        assert groups[name]["cost_usd"] == pytest.approx(s.cost, abs=1e-7)
        only = admin(gw, "GET", "/admin/report", params={"team": name}).json()
        check_totals(only, s)
    routes = {g["route"]: g for g in admin(gw, "GET", "/admin/report",
                                           params={"group_by": "route"}).json()["groups"]}
    assert routes["plain"]["cache_hits"] == 0 and routes["auto"]["cache_hit_rate"] == 0.5

    # the command line reads the same ledger file and says the same
    path = gw.app.state.settings.ledger.path
    assert main(["report", "--ledger", path, "--json", "--team", "red"]) == 0
    check_totals(json.loads(capsys.readouterr().out), red)
    assert main(["report", "--ledger", path, "--group-by", "team"]) == 0
    text = capsys.readouterr().out
    assert "red" in text and "blue" in text and "saved by" in text


def test_report_refuses_bad_input(gw: LiveServer) -> None:
    assert admin(gw, "GET", "/admin/report", key=None).status_code == 401
    assert admin(gw, "GET", "/admin/report", key="wrong").status_code == 401
    for params, param in (({"group_by": "model"}, "group_by"), ({"since": "yesterday"}, "since")):
        r = admin(gw, "GET", "/admin/report", params=params)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


def _login(srv: LiveServer, key: str) -> httpx.Response:
    return httpx.post(srv.url + "/dashboard/login", data={"key": key}, timeout=60,
                      follow_redirects=False)


def test_dashboard_login_scopes_a_team_key_to_its_team(gw: LiveServer) -> None:
    red_key, red_id = new_team(gw, "red")
    blue_key, _ = new_team(gw, "blue")
    n = traffic(gw, red_key, ["Red question"]).requests
    n += traffic(gw, blue_key, ["Blue question"]).requests
    flushed(gw, n)

    page = httpx.get(gw.url + "/dashboard", timeout=60)
    assert page.status_code == 200 and 'action="/dashboard/login"' in page.text
    assert "<svg" not in page.text  # nothing shown before signing in
    assert httpx.get(gw.url + "/dashboard/body", timeout=60).status_code == 401
    assert _login(gw, "not-a-key").status_code == 401

    r = _login(gw, red_key)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert red_key not in cookie and red_key.split("_", 1)[1] not in cookie
    jar = {"switchyard_dashboard": r.cookies["switchyard_dashboard"]}
    mine = httpx.get(gw.url + "/dashboard", params={"group_by": "team", "team": "blue"},
                     cookies=jar, timeout=60)
    assert mine.status_code == 200 and "team red" in mine.text
    assert "<td>red</td>" in mine.text and "<td>blue</td>" not in mine.text

    admin_jar = {"switchyard_dashboard": _login(gw, ADMIN).cookies["switchyard_dashboard"]}
    every = httpx.get(gw.url + "/dashboard/body", params={"group_by": "team"},
                      cookies=admin_jar, timeout=60)
    assert "<td>red</td>" in every.text and "<td>blue</td>" in every.text

    assert admin(gw, "DELETE", f"/admin/keys/{red_id}").status_code in (200, 204)
    gone = httpx.get(gw.url + "/dashboard", cookies=jar, timeout=60)
    assert 'action="/dashboard/login"' in gone.text and "<svg" not in gone.text
    forged = {"switchyard_dashboard": jar["switchyard_dashboard"][:-2] + "xx"}
    assert httpx.get(gw.url + "/dashboard/body", cookies=forged, timeout=60).status_code == 401
