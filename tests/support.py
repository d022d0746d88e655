"""Helpers shared by the tests (importable as ``support``: pytest puts tests/ on sys.path).

A real uvicorn serving an app on a loopback port; settings for a test's own temp dir;
``wait_until`` to poll for a state instead of sleeping."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gateway.config import Settings, load_settings

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "",
               interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that. ``timeout`` is
    a safety net on a loaded machine, never a timing assertion: make it generous."""
    deadline = time.monotonic() + timeout
    while not (out := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(interval)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn serving an app on a loopback port, in a background thread: the server
    ``switchyard serve`` runs (``gateway.http.server``), with the app's ``server`` limits
    (a gateway app's settings, else the defaults)."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        from gateway.config import ServerConfig
        from gateway.http.server import build_server

        self.port = port or free_port()
        self.app = app
        settings = getattr(getattr(app, "state", None), "settings", None)
        limits = settings.server if isinstance(settings, Settings) else ServerConfig()
        self.server = build_server(app, limits, host="127.0.0.1", port=self.port,
                                   log_level="warning", loop="asyncio", lifespan="on",
                                   timeout_graceful_shutdown=5, **options)
        self.scheme = "https" if options.get("ssl_certfile") else "http"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[LiveServer]:
    srv = LiveServer(app).start()
    try:
        yield srv
    finally:
        srv.stop()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    overrides.setdefault("ledger", {"path": str(tmp_path / "ledger.sqlite3"), "flush_interval_s": 0.05})
    return load_settings(None, **overrides)
