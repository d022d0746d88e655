"""A plugin on the request path, end to end: registered through
``switchyard_register_stages`` on a real gateway (uvicorn, the official openai SDK) in front
of a recording OpenAI-compatible upstream. A cache answers a repeated question without any
backend call, recorded once in the ledger, and replays it to a streaming request as SSE; a
compressor's rewritten prompt is what the upstream receives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.harness import sdk, upstream_server
from fakes.openai_upstream import RecordingUpstream
from http_helpers import ledger_row
from support import LiveServer, make_settings, serve

from gateway import Exchange, RegisterStage, hookimpl
from gateway.http.app import create_app

GENEROUS = {"connect_s": 5.0, "first_token_s": 60.0, "total_s": 120.0}
PRICES = {"input_per_mtok": 3.0, "output_per_mtok": 7.0}


class TinyCache:
    """Answers a question it has seen, per team, from the answer a backend gave."""

    def __init__(self) -> None:
        self.answers: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.stored = 0

    def key(self, x: Exchange) -> tuple[Any, ...]:
        return (x.ctx.team, x.endpoint, repr(x.forwarded.get("messages")))

    def lookup(self, x: Exchange) -> None:
        hit = self.answers.get(self.key(x))
        if hit is not None:
            x.answer = hit
            x.record.backend, x.record.model = "tiny-cache", hit.get("model")

    async def store(self, x: Exchange, answer: dict[str, Any]) -> None:
        self.stored += 1
        self.answers[self.key(x)] = answer

    @hookimpl
    def switchyard_register_stages(self, register: RegisterStage) -> None:
        register("cache_lookup", self.lookup)
        register("cache_store", self.store)


class Shorten:
    """Keeps the first three words of every message: a (crude) prompt compressor."""

    def compress(self, x: Exchange) -> None:
        messages = [{**m, "content": " ".join(str(m["content"]).split()[:3])}
                    for m in x.forwarded["messages"]]
        x.forwarded = {**x.forwarded, "messages": messages}

    @hookimpl
    def switchyard_register_stages(self, register: RegisterStage) -> None:
        register("compress", self.compress)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RecordingUpstream, LiveServer]]:
    rec = RecordingUpstream(model="upstream-model")
    with upstream_server(rec.app) as srv:
        yield rec, srv


def _gateway(tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer],
             plugin: object) -> Any:
    upstream[0].reset()
    backend = {"name": "up", "plugin": "openai_compatible", "base_url": upstream[1].url + "/v1",
               "model": "upstream-model", "timeouts": GENEROUS, "pricing": PRICES}
    return serve(create_app(make_settings(tmp_path, backends=[backend]),
                            extra_plugins=[plugin]))


def _ask(client: Any, rid: str, content: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="up", messages=[{"role": "user", "content": content}], max_tokens=8,
        extra_headers={"x-request-id": rid})


def test_a_cache_stage_answers_a_repeat_without_calling_the_backend(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec, cache = upstream[0], TinyCache()
    with _gateway(tmp_path, upstream, cache) as gw:
        client = sdk(gw.url)
        first = _ask(client, "miss-1", "Say hello").parse()
        assert len(rec.requests) == 1 and cache.stored == 1
        raw = _ask(client, "hit-1", "Say hello")
        hit = raw.parse()
        assert len(rec.requests) == 1, "a cache hit must not reach the backend"
        assert hit.choices[0].message.content == first.choices[0].message.content
        assert hit.id == first.id and cache.stored == 1
        assert raw.headers["x-switchyard-request-id"] == "hit-1"
        row = ledger_row(gw.app, "hit-1")
        rows = gw.app.state.ledger.query("SELECT * FROM requests WHERE request_id = ?",
                                         ("hit-1",))
        assert len(rows) == 1
        assert row["status"] == 200 and row["backend"] == "tiny-cache"
        assert row["cost_usd"] == 0.0 and row["attempts"] == 0
        assert ledger_row(gw.app, "miss-1")["cost_usd"] > 0  # the miss was a paid call
        _ask(client, "miss-2", "Say goodbye")  # another question still goes to the backend
        assert len(rec.requests) == 2
        client.close()


def test_a_stream_is_answered_from_the_cache_as_server_sent_events(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec, cache = upstream[0], TinyCache()
    with _gateway(tmp_path, upstream, cache) as gw:
        client = sdk(gw.url)
        first = _ask(client, "miss-1", "Say hello").parse()
        chunks = list(client.chat.completions.create(
            model="up", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8,
            stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(rec.requests) == 1, "the stream was answered from the cache"
        assert text == first.choices[0].message.content and len(chunks) > 2
        assert chunks[-1].choices[0].finish_reason == first.choices[0].finish_reason
        client.close()


def test_a_compress_stage_rewrites_what_the_backend_receives(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream, Shorten()) as gw:
        client = sdk(gw.url)
        long = "Please kindly say hello to everyone in the room right now"
        out = _ask(client, "c-1", long).parse()
        assert rec.last.body["messages"] == [{"role": "user", "content": "Please kindly say"}]
        row = ledger_row(gw.app, "c-1")
        assert row["prompt_tokens"] == out.usage.prompt_tokens
        client.close()


class BrokenStore(TinyCache):
    async def store(self, x: Exchange, answer: dict[str, Any]) -> None:
        raise RuntimeError("the cache's disk is full")


def test_a_failing_cache_store_still_gives_the_client_its_paid_answer(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer],
        caplog: pytest.LogCaptureFixture) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream, BrokenStore()) as gw:
        client = sdk(gw.url)
        out = _ask(client, "s-1", "Say hello").parse()
        assert out.choices[0].message.content and len(rec.requests) == 1
        row = ledger_row(gw.app, "s-1")
        assert row["status"] == 200 and row["cost_usd"] > 0  # billed once, answered
        client.close()
    assert any("cache_store failed for request s-1" in r.getMessage() for r in caplog.records)
