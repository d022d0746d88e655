"""Prompt compression end to end: a real gateway (uvicorn, the official openai SDK) with
``compress: {enabled: true}`` and the built-in compressor (``question_aware``, MiniLM in
process) in front of a recording OpenAI-compatible upstream, so every test sees exactly what
the backend received. A long retrieval prompt goes out compressed with its answer and its
question, and is answered; short, code-only and tool-call prompts go out as they came; a
request's ``token_budget`` and ``off`` work; the ledger keeps the tokens before and after,
the bytes saved and the compressor's time; a free backend skips compression where it does
not pay (docs/compression.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from compress_data import ANSWER, ANSWER_SENTENCE, PASSAGES, QUESTION, context
from fakes.harness import upstream_server
from fakes.openai_upstream import RecordingUpstream
from http_helpers import ledger_row
from support import LiveServer, make_settings, serve

from gateway.http.app import create_app
from plugins.compress.engine import eval_messages

GENEROUS = {"connect_s": 5.0, "first_token_s": 60.0, "total_s": 120.0}
PRICES = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
RAG = eval_messages(QUESTION, context())


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RecordingUpstream, LiveServer]]:
    rec = RecordingUpstream(model="upstream-model")
    with upstream_server(rec.app) as srv:
        yield rec, srv


def _backend(name: str, url: str, pricing: dict[str, float] | None) -> dict[str, Any]:
    return {"name": name, "plugin": "openai_compatible", "base_url": url + "/v1",
            "model": "upstream-model", "timeouts": GENEROUS, "pricing": pricing}


def _gateway(tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer],
             **settings: Any) -> Any:
    upstream[0].reset()
    url = upstream[1].url
    settings.setdefault("backends", [_backend("paid", url, PRICES),
                                     _backend("local", url, None)])
    settings.setdefault("routes", [
        {"name": "rag", "backends": ["paid"]},
        {"name": "local", "backends": ["local"]},
        # the same free backend, known to prefill slowly (a CPU): there it pays
        {"name": "local-cpu", "backends": ["local"], "compress": {"prefill_tokens_per_s": 50}},
    ])
    settings.setdefault("compress", {"enabled": True})
    return serve(create_app(make_settings(tmp_path, **settings)))


def _client(srv: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(c: openai.OpenAI, messages: list[dict[str, Any]], model: str = "rag",
         **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                       max_tokens=8, **kw)


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def test_a_long_retrieval_prompt_is_sent_compressed_and_answered(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        r = _ask(c, RAG)
        assert r.parse().choices[0].message.content, "answered"
        sent = rec.last.body["messages"]
        assert [m["role"] for m in sent] == ["system", "user"]
        assert sent[1] == RAG[1], "the question goes out verbatim"
        assert sent[0]["content"].startswith("Answer the question using the documents below.")
        assert ANSWER_SENTENCE in sent[0]["content"], "the passage that answers is kept"
        assert _words(sent) * 10 <= _words(RAG)
        assert r.headers["x-switchyard-compress"] == "compressed"
        tokens, original = (int(r.headers["x-switchyard-prompt-tokens"]),
                            int(r.headers["x-switchyard-prompt-tokens-original"]))
        assert original > 5 * tokens
        row = ledger_row(gw.app, r.headers["x-switchyard-request-id"])
        assert row["compress"] == "compressed"
        assert (row["prompt_tokens"], row["prompt_tokens_original"]) == (tokens, original)
        assert row["compress_saved_tokens"] == original - tokens
        saved = len(RAG[0]["content"].encode()) - len(sent[0]["content"].encode())
        assert row["compress_saved_bytes"] == saved > 0
        assert row["compress_ms"] > 0
        decision = json.loads(row["decision"])["compress"]
        assert decision["outcome"] == "compressed" and decision["predicted"]["pays"]
        assert decision["backend"] == "paid" and decision["changed"] == ["messages[0].content"]
        assert decision["predicted"]["saved_usd"] > decision["predicted"]["cost_usd"]


def test_a_streamed_request_is_compressed_the_same_way(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        with c.chat.completions.with_streaming_response.create(
                model="rag", messages=RAG, max_tokens=8, stream=True) as r:
            text = "".join(ch.choices[0].delta.content or "" for ch in r.parse() if ch.choices)
            assert r.headers["x-switchyard-compress"] == "compressed"
            assert int(r.headers["x-switchyard-prompt-tokens-original"]) > 0
        assert text
        sent = rec.last.body["messages"]
        assert ANSWER_SENTENCE in sent[0]["content"] and _words(sent) * 10 <= _words(RAG)


CODE = "Why does this function return None for an empty list?\n\n```python\n" + "\n".join(
    f"def step_{i}(items, acc=None):\n    acc = acc or []\n    for item in items:\n"
    f"        acc.append(item * {i} + len(items))\n    return acc if items else None\n"
    for i in range(40)) + "```"

TOOLS = [{"type": "function", "function": {
    "name": "search_docs", "description": "Search the engineering handbook",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}]
TOOL_CALL = [
    {"role": "user", "content": "What does the handbook say about bridge inspections?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "search_docs", "arguments": '{"query": "bridge inspections"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": context()},
]


def test_short_code_only_and_tool_call_prompts_pass_unchanged(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    short = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Name three bridges."}]
    code = [{"role": "user", "content": CODE}]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        r = _ask(c, short)
        assert rec.last.body["messages"] == short
        assert r.headers["x-switchyard-compress"] == "skipped; short"
        assert r.headers["x-switchyard-prompt-tokens-original"] == \
            r.headers["x-switchyard-prompt-tokens"]

        r = _ask(c, code)
        assert rec.last.body["messages"] == code, "code goes out as it came"
        assert r.headers["x-switchyard-compress"] == "unchanged; nothing_to_change"
        row = ledger_row(gw.app, r.headers["x-switchyard-request-id"])
        assert row["compress_saved_tokens"] == 0 and row["compress_saved_bytes"] == 0
        assert json.loads(row["decision"])["compress"]["tokens_before"] >= 500

        r = _ask(c, TOOL_CALL, tools=TOOLS)
        assert r.parse().choices[0].message.content
        assert rec.last.body["messages"] == TOOL_CALL, "a tool call and its result go out whole"
        assert rec.last.body["tools"] == TOOLS
        assert r.headers["x-switchyard-compress"] == "unchanged; nothing_to_change"


def test_a_requests_token_budget_and_off(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        by_ratio = _ask(c, RAG, extra_body={"switchyard": {"compress": {"ratio": 2.0}}})
        half = _words(rec.last.body["messages"])
        assert by_ratio.headers["x-switchyard-compress"] == "compressed"
        assert _words(RAG) / 3 < half <= _words(RAG) / 2 + 10

        budget = _ask(c, RAG, extra_body={"switchyard": {"compress": {"token_budget": 150}}})
        sent = rec.last.body["messages"]
        assert budget.headers["x-switchyard-compress"] == "compressed"
        assert _words(sent) <= 150, "150 tokens hold about 112 words"
        assert ANSWER in sent[0]["content"] and sent[1] == RAG[1]
        row = ledger_row(gw.app, budget.headers["x-switchyard-request-id"])
        assert json.loads(row["decision"])["compress"]["token_budget"] == 150

        off = _ask(c, RAG, extra_body={"switchyard": {"compress": {"off": True}}})
        assert rec.last.body["messages"] == RAG
        assert "switchyard" not in rec.last.body
        assert off.headers["x-switchyard-compress"] == "skipped; off"

        low = _ask(c, [{"role": "user", "content": "Name three bridges, with the year each "
                        "was opened, and say which of them is the oldest one."}],
                   extra_body={"switchyard": {"compress": {"min_tokens": 100_000}}})
        assert low.headers["x-switchyard-compress"] == "skipped; short"

        with pytest.raises(openai.BadRequestError) as e:
            _ask(c, RAG, extra_body={"switchyard": {"compress": {"ratio": 0.5}}})
        assert e.value.body["param"] == "switchyard.compress.ratio"  # type: ignore[index]


def test_a_free_backend_skips_compression_where_it_does_not_pay(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        r = _ask(c, RAG, model="local")
        assert rec.last.body["messages"] == RAG, "a free backend's prompt goes out whole"
        assert r.headers["x-switchyard-compress"] == "skipped; does_not_pay"
        row = ledger_row(gw.app, r.headers["x-switchyard-request-id"])
        assert row["cost_usd"] == 0 and row["prompt_tokens_original"] == row["prompt_tokens"]
        predicted = json.loads(row["decision"])["compress"]["predicted"]
        assert not predicted["pays"] and predicted["saved_s"] <= predicted["cost_s"]
        assert "saved_usd" not in predicted, "a free backend compares times, not dollars"

        slow = _ask(c, RAG, model="local-cpu")  # 50 tokens/s: the prefill saved is worth it
        assert slow.headers["x-switchyard-compress"] == "compressed"
        assert ANSWER_SENTENCE in rec.last.body["messages"][0]["content"]


def test_a_route_can_turn_compression_off_and_other_endpoints_are_left_alone(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    url = upstream[1].url
    routes = [{"name": "rag", "backends": ["paid"]},
              {"name": "raw", "backends": ["paid"], "compress": {"enabled": False}}]
    with _gateway(tmp_path, upstream, backends=[_backend("paid", url, PRICES)],
                  routes=routes) as gw, _client(gw) as c:
        r = _ask(c, RAG, model="raw")
        assert rec.last.body["messages"] == RAG
        assert "x-switchyard-compress" not in r.headers
        assert "x-switchyard-prompt-tokens-original" not in r.headers
        assert ledger_row(gw.app, r.headers["x-switchyard-request-id"])["compress"] is None
        done = c.completions.with_raw_response.create(model="rag", prompt=context(),
                                                      max_tokens=4)
        assert rec.last.body["prompt"] == context()
        assert "x-switchyard-compress" not in done.headers


ADMIN = "admin-secret-for-compress-tests"
# the team's whole budget: the original prompt's hold at the backend's price is over it
# (about $0.0045), the compressed one's under it (admission holds one token per byte of the
# prompt as sent: the kept passage and the question come to about $0.0022)
BUDGET = 0.003


def test_the_budget_holds_the_compressed_prompt_not_the_original(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    """A team whose whole budget cannot hold the original prompt at the backend's price is
    served: admission reserves what is sent, the compressed prompt."""
    import httpx

    rec = upstream[0]
    with _gateway(tmp_path, upstream, admin_key=ADMIN) as gw:
        auth = {"authorization": f"Bearer {ADMIN}"}
        r = httpx.post(gw.url + "/admin/teams", json={"name": "rag-team", "budget_usd": BUDGET},
                       headers=auth, timeout=30)
        assert r.status_code == 201, r.text
        r = httpx.post(gw.url + "/admin/keys", json={"team": "rag-team", "name": "ci"},
                       headers=auth, timeout=30)
        key = str(r.json()["key"])
        with openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                           timeout=60) as c:
            with pytest.raises(openai.BadRequestError) as e:
                _ask(c, RAG, extra_body={"switchyard": {"compress": {"off": True}}})
            assert e.value.code == "request_exceeds_budget"
            assert len(rec.requests) == 0
            ok = _ask(c, RAG)
            assert ok.headers["x-switchyard-compress"] == "compressed"
            assert int(ok.headers["x-switchyard-prompt-tokens-original"]) * 3e-6 > BUDGET
            assert float(ok.headers["x-switchyard-cost-usd"]) < BUDGET
            assert ANSWER_SENTENCE in rec.last.body["messages"][0]["content"]


@pytest.mark.slow
def test_on_the_local_smollm2_compression_waits_for_a_measured_prefill_then_pays(
        tmp_path: Path) -> None:
    """The embedded model (SmolLM2 through llama.cpp on the CPU) is free: compression pays
    only in time. Before its prefill is measured there is nothing known to save, so the first
    long prompt goes whole; the CPU's measured time to first token makes the next one pay."""
    smol = {"name": "local-smol", "plugin": "llamacpp", "n_ctx": 1024}
    settings = make_settings(tmp_path, backends=[smol],
                             routes=[{"name": "smol", "backends": ["local-smol"]}],
                             compress={"enabled": True, "min_tokens": 200})
    rag = eval_messages(QUESTION, context(PASSAGES[4:9]))  # 5 passages: a CPU's worth
    with serve(create_app(settings)) as gw, openai.OpenAI(
            base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=300) as c:
        first = _ask(c, rag, model="smol")
        assert first.headers["x-switchyard-compress"] == "skipped; does_not_pay"
        whole = int(first.headers["x-switchyard-prompt-tokens"])
        assert whole > 500, "SmolLM2's tokenizer counted the whole prompt"
        second = _ask(c, rag, model="smol")
        assert second.headers["x-switchyard-compress"] == "compressed"
        assert second.parse().choices[0].message.content is not None
        assert int(second.headers["x-switchyard-prompt-tokens"]) * 5 < whole
        row = ledger_row(gw.app, second.headers["x-switchyard-request-id"])
        predicted = json.loads(row["decision"])["compress"]["predicted"]
        assert predicted["saved_s"] > 10 * predicted["cost_s"] and row["cost_usd"] == 0
