"""Helpers to put a gateway with given backends on real uvicorn, and talk to it with the
official openai SDK."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support import LiveServer, make_settings, serve

KEY = "sk-test-DO-NOT-LEAK-4f1c9e2a"  # a backend's api_key that must never reach a client


def sdk(url: str, **kw: Any) -> Any:
    import openai

    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 60)
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", **kw)


@contextlib.contextmanager
def gateway(tmp_path: Path, *backends: dict[str, Any], **settings: Any) -> Iterator[LiveServer]:
    """A fresh gateway serving ``backends`` (each a backend config section)."""
    from gateway.http.app import create_app

    app = create_app(make_settings(tmp_path, backends=list(backends), **settings))
    with serve(app) as srv:
        yield srv


@contextlib.contextmanager
def upstream_server(app: Any) -> Iterator[LiveServer]:
    with serve(app) as srv:
        yield srv
