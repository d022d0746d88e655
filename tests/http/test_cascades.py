"""Cascades through the HTTP API: real uvicorn, the official openai SDK, SmolLM2-135M in
process (llama.cpp) as the cheap first stage and the recording OpenAI-compatible upstream as
the strong second one, judged by the built-in ``logprob`` judge at temperature 0.

Measured with this model at temperature 0 and 16 tokens (the geometric mean of the token
probabilities): "What is 2 + 2?" scores about 0.51, "Invent a name for a new color..."
about 0.24; the routes' threshold, 0.42, lies between them. Every stage is a real call in
the ledger with its cost; a team whose budget cannot hold the second stage gets the first
answer or a 429, as its route says; streams hold the judged stage and replay it, or stream
the first stage unjudged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fakes.openai_upstream import REPLY, RecordingUpstream
from http_helpers import ledger_row
from support import LiveServer, make_settings, serve, wait_until

from gateway.http.app import create_app

pytestmark = pytest.mark.slow

ADMIN = "admin-secret-for-cascades"
THRESHOLD = 0.42
SURE = "What is 2 + 2?"
UNSURE = "Invent a name for a new color and describe it in one word."
BIG_PER_TOKEN = 0.001  # the upstream's output price: $1,000 per million tokens
MAX_TOKENS = 16


def _cascade(**kw: Any) -> dict[str, Any]:
    return {"stages": ["local-smol", "big"], "judge": "logprob",
            "judge_options": {"threshold": THRESHOLD}, **kw}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    up = RecordingUpstream("big-model")
    with serve(up.app) as srv:
        srv.recording = up  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def gw(upstream: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    backends = [
        {"name": "local-smol", "plugin": "llamacpp", "n_ctx": 1024,
         "pricing": {"input_per_mtok": 0.01, "output_per_mtok": 0.02}},
        {"name": "big", "plugin": "openai_compatible", "base_url": upstream.url + "/v1",
         "model": "big-model", "pricing": {"output_per_mtok": BIG_PER_TOKEN * 1e6}},
    ]
    routes = [{"name": "ask", "cascade": _cascade(learn=True)},
              {"name": "ask-strict", "cascade": _cascade(on_budget="error")},
              {"name": "ask-live", "cascade": _cascade(stream_first_unjudged=True)}]
    settings = make_settings(tmp_path_factory.mktemp("cascades"), backends=backends,
                             routes=routes, admin_key=ADMIN)
    app = create_app(settings)
    with serve(app) as srv:
        srv.recording = upstream.recording  # type: ignore[attr-defined]
        srv.keys = {name: _team(srv, name, budget) for name, budget in  # type: ignore[attr-defined]
                    (("rich", 10.0), ("poor", 0.005))}
        yield srv


def _team(srv: LiveServer, name: str, budget: float) -> str:
    auth = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(srv.url + "/admin/teams", json={"name": name, "budget_usd": budget},
                   headers=auth)
    assert r.status_code == 201, r.text
    r = httpx.post(srv.url + "/admin/keys", json={"team": name, "name": "t"}, headers=auth)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def _client(gw: Any, team: str = "rich") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[team], max_retries=0,
                         timeout=300)


def _ask(gw: Any, prompt: str, team: str = "rich", model: str = "ask", **kw: Any) -> Any:
    return _client(gw, team).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=MAX_TOKENS, **kw)


def _rows(gw: Any, rid: str, n: int) -> list[dict[str, Any]]:
    ledger = gw.app.state.ledger
    ledger_row(gw.app, rid)

    def all_rows() -> list[dict[str, Any]]:
        rows = ledger.query("SELECT * FROM requests WHERE request_id = ? ORDER BY rowid", (rid,))
        return rows if len(rows) >= n else []

    rows = wait_until(all_rows, what=f"{n} ledger rows of {rid}")
    for r in rows:
        r["cascade"] = json.loads(r["decision"])["cascade"]
    return sorted(rows, key=lambda r: int(r["cascade"]["step"]))  # a refusal is written first


def _score(header: str, backend: str = "local-smol") -> float:
    first = header.split(", ")[0].split(";")
    assert first[0] == backend
    return float(first[1].removeprefix("score="))


def test_a_confident_answer_is_served_by_the_first_stage(gw: Any) -> None:
    gw.recording.reset()
    raw = _ask(gw, SURE)
    out, h = raw.parse(), raw.headers
    assert h["x-switchyard-backend"] == "local-smol" and out.choices[0].message.content
    assert h["x-switchyard-cascade"].endswith(";accepted") and "," not in h["x-switchyard-cascade"]
    assert _score(h["x-switchyard-cascade"]) >= THRESHOLD
    assert out.choices[0].logprobs is None, "asked for the judge, not shown to the client"
    assert gw.recording.requests == [], "the strong stage was never called"
    [row] = _rows(gw, h["x-switchyard-request-id"], 1)
    assert row["backend"] == "local-smol" and row["status"] == 200 and row["cost_usd"] > 0
    c = row["cascade"]
    assert c["accepted"] is True and c["judge"] == "logprob" and c["answered"] == 1
    assert c["threshold"] == THRESHOLD and c["prompt"] == SURE and c["route"] == "ask"


def test_an_unconfident_answer_escalates_and_both_calls_are_billed(gw: Any) -> None:
    gw.recording.reset()
    raw = _ask(gw, UNSURE)
    out, h = raw.parse(), raw.headers
    assert out.choices[0].message.content == " ".join(REPLY.split()[:MAX_TOKENS])
    assert h["x-switchyard-backend"] == "big"
    chain = h["x-switchyard-cascade"]
    assert chain.startswith("local-smol;score=") and chain.endswith(";rejected, big;answered")
    assert _score(chain) < THRESHOLD
    [sent] = gw.recording.requests
    assert "logprobs" not in sent.body, "the last stage is not judged"
    first, second = _rows(gw, h["x-switchyard-request-id"], 2)
    assert (first["backend"], second["backend"]) == ("local-smol", "big")
    assert first["cost_usd"] > 0 and first["completion_tokens"] > 0
    assert second["cost_usd"] == pytest.approx(second["completion_tokens"] * BIG_PER_TOKEN)
    assert float(h["x-switchyard-cost-usd"]) == pytest.approx(second["cost_usd"])
    assert first["cascade"]["accepted"] is False and first["cascade"]["answered"] == 2
    tried = second["cascade"]["tried"]
    assert [(t["backend"], t["outcome"]) for t in tried] == [("local-smol", "rejected"),
                                                            ("big", "answered")]
    assert tried[0]["cost_usd"] == pytest.approx(first["cost_usd"])


def test_a_stream_holds_the_judged_stage_then_replays_or_escalates(gw: Any) -> None:
    for prompt, backend in ((SURE, "local-smol"), (UNSURE, "big")):
        raw = _ask(gw, prompt, stream=True, stream_options={"include_usage": True})
        assert raw.headers["x-switchyard-backend"] == backend
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        rows = _rows(gw, raw.headers["x-switchyard-request-id"], 1 if backend != "big" else 2)
        assert rows[-1]["stream"] == 1 and rows[-1]["backend"] == backend
        assert chunks[-1].usage.completion_tokens == rows[-1]["completion_tokens"]
        if backend == "local-smol":  # held, judged, then replayed whole
            assert chunks[0].choices[0].delta.role == "assistant"
            assert text and raw.headers["x-switchyard-cascade"].endswith(";accepted")
            assert rows[0]["cascade"]["accepted"] is True
            assert rows[0]["ttft_ms"] == rows[0]["latency_ms"], "its first token came last"
        else:  # held, rejected; the strong stage streamed live
            assert text == " ".join(REPLY.split()[:MAX_TOKENS])
            assert raw.headers["x-switchyard-cascade"].endswith(";rejected, big;answered")


def test_stream_first_unjudged_streams_the_cheap_stage_live(gw: Any) -> None:
    gw.recording.reset()
    raw = _ask(gw, UNSURE, model="ask-live", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text and raw.headers["x-switchyard-cascade"] == "local-smol;unjudged"
    assert gw.recording.requests == []


def test_a_team_without_budget_for_the_second_stage_gets_the_first_answer(gw: Any) -> None:
    gw.recording.reset()
    raw = _ask(gw, UNSURE, team="poor")
    out, h = raw.parse(), raw.headers
    assert h["x-switchyard-backend"] == "local-smol" and out.choices[0].message.content
    # the second stage's worst case ($0.016) is more than the team's whole budget
    assert h["x-switchyard-cascade"].endswith(";rejected;answered, big;request_exceeds_budget")
    assert gw.recording.requests == []
    first, second = _rows(gw, h["x-switchyard-request-id"], 2)
    assert (first["backend"], first["status"]) == ("local-smol", 200) and first["cost_usd"] > 0
    assert (second["backend"], second["error_code"], second["cost_usd"]) == (
        "big", "request_exceeds_budget", 0.0)
    assert first["cascade"]["answered"] == 1


def test_a_strict_route_answers_429_when_the_second_stage_does_not_fit(gw: Any) -> None:
    gw.recording.reset()
    before = _spend(gw, "poor")
    with pytest.raises(openai.RateLimitError) as e:
        _ask(gw, UNSURE, team="poor", model="ask-strict")
    err = e.value
    assert err.code == "request_exceeds_budget" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert "The cascade of 'ask-strict' needs its stage 'big'" in err.message
    assert "more than team 'poor''s whole month budget" in err.message
    assert gw.recording.requests == []
    first, second = _rows(gw, err.response.headers["x-switchyard-request-id"], 2)
    assert (first["backend"], first["status"]) == ("local-smol", 200)
    assert first["cascade"]["answered"] is None
    assert (second["backend"], second["error_code"]) == ("big", "request_exceeds_budget")
    assert _spend(gw, "poor") == pytest.approx(before + first["cost_usd"]), \
        "the first stage ran and is billed; nothing else is"


def _spend(gw: Any, team: str) -> float:
    r = httpx.get(f"{gw.url}/admin/teams/{team}/spend",
                  headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return float(r.json()["spent_usd"])
