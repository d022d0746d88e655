"""The savings report and the live dashboard opened in headless Chromium (the system's
``chromium``, driven over the DevTools protocol: tests/browser_cdp.py) after real traffic:
no console error, every chart drawn with data, the headline numbers as text, and a
screenshot of each kept in the test's temporary directory (``report.png`` and
``dashboard.png`` under /tmp/pytest-of-$USER/pytest-N/test_.../)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from browser_cdp import CHARTS_JS, Browser, chromium
from support import LiveServer, wait_until
from test_report_http import ADMIN, flushed, gw, new_team, traffic, upstream

from gateway.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    chromium() is None, reason="no chromium here (Debian: apt-get install -y chromium; "
    ".ci/run installs it)")]
__all__ = ["gw", "upstream"]  # the fixtures, from test_report_http

CHARTS = {"cost", "savings", "energy", "co2", "latency", "ttft", "cache"}


def _traffic(srv: LiveServer) -> int:
    red, _ = new_team(srv, "red")
    blue, _ = new_team(srv, "blue")
    n = traffic(srv, red, ["What is a switchyard?", "Name a colour"]).requests
    n += traffic(srv, blue, ["Tell me a joke"]).requests
    with openai.OpenAI(base_url=srv.url + "/v1", api_key=red, max_retries=0) as c:
        for text in ("Stream a greeting", "Stream a farewell"):  # streams have a TTFT
            chunks = list(c.chat.completions.create(
                model="plain", messages=[{"role": "user", "content": text}], max_tokens=6,
                stream=True))
            assert chunks
            n += 1
    flushed(srv, n)
    return n


def _check_charts(b: Browser) -> None:
    charts = b.evaluate(CHARTS_JS)
    assert {c["chart"] for c in charts} >= CHARTS, charts
    assert all(c["marks"] > 0 and c["points"] > 0 for c in charts), charts


def test_the_html_report_draws_its_charts_offline(gw: LiveServer, tmp_path: Path) -> None:
    n = _traffic(gw)
    out = tmp_path / "report.html"
    assert main(["report", "--ledger", gw.app.state.settings.ledger.path, "--group-by", "team",
                 "--html", str(out)]) == 0
    text = out.read_text()
    assert "<script" not in text and "https://" not in text  # nothing fetched from anywhere
    with Browser.start(tmp_path) as b:
        b.goto(out.as_uri())
        b.pump(0.5)
        _check_charts(b)
        headline = b.evaluate("document.getElementById('headline').innerText")
        assert f"{n:,}" in headline and "requests" in headline and "saved" in headline
        assert b.evaluate("document.querySelectorAll('#groups td').length") > 0
        assert not b.problems(), b.problems()
        assert b.screenshot(tmp_path / "report.png").stat().st_size > 10_000


def test_the_dashboard_signs_in_and_refreshes_in_chromium(gw: LiveServer, tmp_path: Path) -> None:
    _traffic(gw)
    with Browser.start(tmp_path) as b:
        b.goto(gw.url + "/dashboard")
        assert b.evaluate("document.querySelectorAll('svg').length") == 0
        b.evaluate(f"document.getElementById('key').value = {json.dumps(ADMIN)};"
                   "document.querySelector('form').submit()")
        wait_until(lambda: b.evaluate("document.querySelectorAll('svg[data-chart]').length")
                   >= len(CHARTS), what="the dashboard's charts")
        b.wait_loaded()
        assert b.evaluate("location.href") == gw.url + "/dashboard"  # no key in the URL
        assert b.evaluate("document.cookie") == ""  # the session cookie is HttpOnly
        _check_charts(b)
        # the refresh: the page fetches its body again (with the cookie) and swaps it in
        b.evaluate("document.getElementById('report').innerHTML = ''")
        wait_until(lambda: b.evaluate("document.querySelectorAll('svg[data-chart]').length")
                   >= len(CHARTS), timeout=60, what="the dashboard's refresh (every 15 s)")
        _check_charts(b)
        b.pump(0.5)
        assert not b.problems(), b.problems()
        assert b.screenshot(tmp_path / "dashboard.png").stat().st_size > 10_000
