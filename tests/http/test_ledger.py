"""The SQLite ledger, read straight from its file after real requests: one row per request,
with backend, tokens, energy, latency, and the same figures the client saw in the headers."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest
from http_helpers import ledger_row, request_id
from support import wait_until

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hi"}]
WATTS, GRID = 25.0, 400.0  # local-smol's default energy profile: 25 W busy, 400 gCO2/kWh


def assert_free_and_profiled(row: dict[str, Any]) -> None:
    """local-smol is free, and its joules come from its 25 W profile over the busy time
    (which is inside the request's latency)."""
    assert row["cost_usd"] == 0.0
    assert row["energy_source"] == "profile"
    assert 0 < row["energy_j"] <= WATTS * row["latency_ms"] / 1000
    assert row["co2_g"] == pytest.approx(row["energy_j"] / 3.6e6 * GRID, rel=1e-9)


def row_from_file(server: Any, rid: str) -> dict[str, Any]:
    ledger_row(server.app, rid)  # wait for the writer thread
    path = Path(server.app.state.settings.ledger.path).expanduser()
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM requests WHERE request_id = ?", (rid,)).fetchone())
    finally:
        conn.close()


def test_chat_row_matches_the_headers(client, embedded_server):
    rid = request_id()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=HI, max_tokens=4, extra_headers={"x-request-id": rid})
    out = raw.parse()
    row = row_from_file(embedded_server, rid)
    assert row["status"] == 200 and row["error_code"] is None
    assert row["endpoint"] == "chat" and row["requested"] == "auto" and row["route"] == "auto"
    assert row["backend"] == "local-smol" and row["model"] == "smollm2-135m-instruct"
    assert row["prompt_tokens"] == out.usage.prompt_tokens
    assert row["completion_tokens"] == out.usage.completion_tokens
    assert_free_and_profiled(row)
    assert row["latency_ms"] > 0 and row["attempts"] == 1 and row["stream"] == 0
    assert row["reason"] == "first healthy in route order"
    h = raw.headers
    assert h["x-switchyard-request-id"] == rid
    assert int(h["x-switchyard-completion-tokens"]) == row["completion_tokens"]
    assert float(h["x-switchyard-energy-joules"]) == pytest.approx(row["energy_j"], abs=1e-3)
    assert float(h["x-switchyard-cost-usd"]) == 0.0


def test_stream_row_has_ttft_and_usage(client, embedded_server):
    rid = request_id()
    chunks = list(client.chat.completions.create(
        model="auto", messages=HI, max_tokens=4, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-request-id": rid}))
    row = row_from_file(embedded_server, rid)
    assert row["stream"] == 1 and row["status"] == 200
    assert row["completion_tokens"] == chunks[-1].usage.completion_tokens
    assert row["prompt_tokens"] == chunks[-1].usage.prompt_tokens
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert_free_and_profiled(row)


def test_embeddings_and_error_rows(client, embedded_server):
    rid = request_id()
    out = client.embeddings.create(model="minilm", input=["a", "b"], extra_headers={"x-request-id": rid})
    row = row_from_file(embedded_server, rid)
    assert row["endpoint"] == "embeddings" and row["backend"] == "minilm"
    assert row["prompt_tokens"] == out.usage.prompt_tokens and row["completion_tokens"] == 0

    bad = request_id()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x " * 3000}],
                                       max_tokens=2, extra_headers={"x-request-id": bad})
    ctx_row = row_from_file(embedded_server, bad)
    assert ctx_row["status"] == 400 and ctx_row["error_code"] == "context_length_exceeded"
    assert ctx_row["backend"] == "local-smol"


def test_a_reused_client_request_id_keeps_every_row(client, embedded_server):
    """Clients may send the same x-request-id twice: both requests are billed and kept."""
    rid = request_id()
    for _ in range(2):
        client.chat.completions.create(model="auto", messages=HI, max_tokens=2,
                                       extra_headers={"x-request-id": rid})
    ledger = embedded_server.app.state.ledger

    def both_rows() -> list[dict[str, Any]] | None:
        rows = ledger.query("SELECT status FROM requests WHERE request_id = ?", (rid,))
        return rows if len(rows) >= 2 else None

    rows = wait_until(both_rows)
    assert [r["status"] for r in rows] == [200, 200]


def test_refused_requests_leave_a_record(client, embedded_server):
    """An unknown model and a malformed body cost nothing, but each is in the ledger with
    its status and error code, and in the requests counter."""
    bad_model, bad_body = request_id(), request_id()
    import httpx

    before = requests_by_status(embedded_server.url)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI,
                                       extra_headers={"x-request-id": bad_model})
    r = httpx.post(embedded_server.url + "/v1/chat/completions", content=b"{not json",
                   headers={"x-request-id": bad_body, "content-type": "application/json"})
    assert r.status_code == 400
    row = ledger_row(embedded_server.app, bad_model)
    assert (row["status"], row["error_code"], row["requested"]) == (404, "model_not_found",
                                                                   "no-such-model")
    assert row["cost_usd"] == 0 and row["backend"] is None
    row = ledger_row(embedded_server.app, bad_body)
    assert (row["status"], row["error_code"]) == (400, "invalid_request")
    after = requests_by_status(embedded_server.url)
    assert after["404"] - before.get("404", 0) == 1 and after["400"] - before.get("400", 0) == 1


def requests_by_status(url: str) -> dict[str, float]:
    """switchyard_requests_total summed by status, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            if s.name == "switchyard_requests_total":
                out[s.labels["status"]] = out.get(s.labels["status"], 0.0) + s.value
    return out
