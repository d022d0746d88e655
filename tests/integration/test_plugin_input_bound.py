"""A huge prompt cannot freeze the gateway through per-request plugin code.

Policies and plan editors run on the event loop for every request. A plugin that is slow on
long input (the example plugin's regex once was quadratic: a 60 KB prompt made ``/healthz``
take 41 s) must not stall every other client, so the prompt's text they see is bounded by
``plugin_text_chars``. Served by real uvicorn, with the example package installed from its
entry point, as ``make test`` installs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from support import make_settings, serve

from gateway import Candidate, Plan, RequestFeatures, hookimpl
from gateway.http.app import create_app


class _SeenText:
    """A plan editor that records how much of the prompt it was given."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def __call__(self, request: RequestFeatures, candidates: Sequence[Candidate],
                 plan: Plan) -> Plan | None:
        self.lengths.append(len(request.text))
        return None

    @hookimpl
    def switchyard_register_plan_editors(self, register: Any) -> None:
        register("seen_text", self)


def _settings(tmp_path: Path, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        backends=[{"name": "cpu-echo", "plugin": "echo"}, {"name": "gpu-echo", "plugin": "echo"}],
        routes=[{"name": "auto", "backends": ["cpu-echo", "gpu-echo"]}],
        **extra,
    )


def test_a_megabyte_prompt_leaves_healthz_answering_within_a_second(tmp_path: Path) -> None:
    seen = _SeenText()
    app = create_app(_settings(tmp_path), extra_plugins=[seen])
    assert "code_to_gpu" in [e.__name__ for e in app.state.gateway.router.editors
                             if hasattr(e, "__name__")], "the example plugin must be active"
    # the example's old pattern backtracked quadratically on exactly this
    prompt = "a" * (1024 * 1024)
    slowest = 0.0
    with serve(app) as srv:
        done = threading.Event()
        answer: dict[str, Any] = {}

        def big() -> None:
            with httpx.Client(timeout=120) as c:
                r = c.post(f"{srv.url}/v1/chat/completions", json={
                    "model": "auto", "max_tokens": 4,
                    "messages": [{"role": "user", "content": prompt}]})
                answer["status"] = r.status_code
                answer["route"] = r.headers.get("x-switchyard-route", "")
            done.set()

        t = threading.Thread(target=big)
        t.start()
        with httpx.Client(timeout=10) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                assert c.get(f"{srv.url}/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - t0)
                time.sleep(0.02)
        t.join()
    assert answer["status"] == 200, answer
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s while the big prompt was routed"
    assert seen.lengths == [8192]  # the editor saw a bounded prefix, not the megabyte


def test_plugin_text_chars_sets_how_much_of_the_prompt_plugins_see(tmp_path: Path) -> None:
    seen = _SeenText()
    app = create_app(_settings(tmp_path, plugin_text_chars=10), extra_plugins=[seen])
    with serve(app) as srv, httpx.Client(timeout=30) as c:
        for content in ("short", "def f(x):\n    return x\n" * 10,
                        [{"type": "text", "text": "part one "}, {"type": "text", "text": "two"}]):
            r = c.post(f"{srv.url}/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": content}]})
            assert r.status_code == 200, r.text
    assert seen.lengths == [5, 10, 10]
