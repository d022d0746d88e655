"""Headless Chromium driven over the Chrome DevTools Protocol (a websocket), for the tests
that open the report and the dashboard in a browser: the system's ``chromium`` (Debian's
package; ``.ci/run`` installs it), no Playwright. A page's console messages, uncaught
exceptions and failed loads are collected as they happen.

    with Browser.start(tmp_path) as b:
        b.goto("file:///.../report.html")
        assert not b.problems()
        b.screenshot(tmp_path / "report.png")
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import httpx
from support import free_port, wait_until
from websockets.sync.client import ClientConnection, connect


def chromium() -> str | None:
    """The browser's path, or None where there is none."""
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                        "google-chrome")) if p), None)


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], ws: ClientConnection) -> None:
        self.proc, self.ws = proc, ws
        self._ids = itertools.count(1)
        self.console: list[dict[str, Any]] = []  # every console message and log entry
        self.exceptions: list[str] = []
        self.failed: list[str] = []  # requests that failed to load

    @classmethod
    def start(cls, tmp: Path, width: int = 1280, height: int = 1600) -> Browser:
        exe = chromium()
        assert exe is not None
        port = free_port()
        proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-extensions", "--disable-background-networking",
             f"--remote-debugging-port={port}", f"--user-data-dir={tmp / 'chromium-profile'}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def page_ws() -> str | None:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return None
            return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"),
                        None)

        url = wait_until(page_ws, timeout=60, what="chromium's DevTools endpoint")
        b = cls(proc, connect(url, max_size=64 * 1024 * 1024, open_timeout=30))
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.call(f"{domain}.enable")
        b.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
               deviceScaleFactor=1, mobile=False)
        return b

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _event(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            self.console.append({"level": p["type"], "text": text})
        elif method == "Log.entryAdded":
            e = p["entry"]
            self.console.append({"level": e["level"],
                                 "text": f"{e.get('text', '')} {e.get('url', '')}".strip()})
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.exceptions.append(d.get("exception", {}).get("description") or d["text"])
        elif method == "Network.loadingFailed":
            self.failed.append(p.get("errorText", ""))

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are collected."""
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            self._event(msg)

    def pump(self, seconds: float) -> None:
        """Collect events for a while (a page's late console messages)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._event(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r} threw: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_loaded(self, timeout: float = 60) -> None:
        wait_until(lambda: self.evaluate("document.readyState") == "complete",
                   timeout=timeout, what="the page to load")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_loaded()

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads, so far."""
        return ([f"console {m['level']}: {m['text']}" for m in self.console
                 if m["level"] in ("error", "assert")]
                + [f"exception: {e}" for e in self.exceptions]
                + [f"failed to load: {f}" for f in self.failed])

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


# what the tests count: every chart, and the data marks drawn in each
CHARTS_JS = """Array.from(document.querySelectorAll('svg[data-chart]')).map(function (s) {
  return {chart: s.getAttribute('data-chart'),
          marks: s.querySelectorAll('polyline[data-series], rect[data-series], circle').length,
          points: Number(s.getAttribute('data-points'))};
})"""
