"""Helpers for the end-to-end HTTP tests: request ids, ledger rows, a raw SSE reader."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import orjson


def request_id() -> str:
    return "req-test-" + uuid.uuid4().hex[:12]


def ledger_row(app: Any, rid: str, timeout: float = 30.0) -> dict[str, Any]:
    """The ledger row of request ``rid``, once the writer thread has flushed it."""
    deadline = time.monotonic() + timeout
    while True:
        rows = app.state.ledger.query("SELECT * FROM requests WHERE request_id = ?", (rid,))
        if rows:
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no ledger row for {rid}")
        time.sleep(0.05)


def sse_events(base_url: str, path: str, body: dict[str, Any]) -> list[str]:
    """POST a streaming request and return every ``data:`` payload, raw, in order."""
    out = []
    with httpx.stream("POST", base_url + path, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line[len("data: "):])
            else:
                assert line == "", line
    return out


def json_events(events: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(e) for e in events if e != "[DONE]"]


def sdk(base_url: str) -> openai.OpenAI:
    """The official client against ``base_url``, without retries (a 503 must show); use it
    in a ``with`` block."""
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
