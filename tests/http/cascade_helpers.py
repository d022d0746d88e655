"""A gateway with a cascade route in front of the recording upstream (the strong stage), on
real uvicorn; requests through the official openai SDK."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fakes.harness import sdk
from fakes.openai_upstream import RecordingUpstream
from support import make_settings, serve

from gateway.http.app import create_app


@contextlib.contextmanager
def cascade_gateway(tmp: Path, first: dict[str, Any], route: dict[str, Any], *,
                    strong: str = "strong", extra_plugins: Iterable[object] = ()) -> Iterator[Any]:
    """The gateway (``.recording``: the upstream's recordings) serving ``first`` and the
    upstream as ``strong`` (model ``big-model``, $1,000 per million output tokens)."""
    up = RecordingUpstream("big-model")
    with serve(up.app) as upstream:
        backends = [first, {"name": strong, "plugin": "openai_compatible", "model": "big-model",
                            "base_url": upstream.url + "/v1",
                            "pricing": {"output_per_mtok": 1000}}]
        app = create_app(make_settings(tmp, backends=backends, routes=[route]),
                         extra_plugins=list(extra_plugins))
        with serve(app) as srv:
            srv.recording = up  # type: ignore[attr-defined]
            yield srv


def ask(gw: Any, text: str, model: str = "ask") -> Any:
    """The raw response (headers, ``parse()``) of one chat request, 8 tokens at most."""
    with sdk(gw.url) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=8)
