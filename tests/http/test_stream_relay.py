"""The streaming relay of an ``openai_compatible`` backend, end to end on real uvicorn: an
upstream that writes scripted bytes, the gateway, and a client reading the raw stream or
the official SDK. Events pass through as the upstream wrote them; the record (usage, time
to first token, bytes) is what the upstream sent; only what the client did not ask for is
changed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from fakes.harness import KEY, gateway, sdk, upstream_server
from http_helpers import ledger_row, request_id
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.pipeline.relay import HOLD_BYTES

GENEROUS = {"connect_s": 5.0, "first_token_s": 60.0, "total_s": 120.0}
MSG = [{"role": "user", "content": "Say hello"}]
HEAD = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "upstream-model", "system_fingerprint": "fp_up", "x_upstream": {"n": [1, 2]}}


def ev(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(text: str, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None,
                                 "finish_reason": None}], **extra}


ROLE = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None}]}
FINISH = {**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
# text a relay must not take for structure
TEXTS = ["Hello", ' "usage": {"prompt_tokens": 9}', " data: [DONE]\n\n", ' {"error": 1}',
         " caf\u00e9 \U0001f600"]


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {**HEAD, "choices": [], "usage": {"prompt_tokens": prompt,
                                             "completion_tokens": completion,
                                             "total_tokens": prompt + completion}}


class Scripted:
    """An OpenAI-compatible upstream that streams ``writes`` (each its own HTTP chunk),
    ``pause_s`` apart, and records the bodies it got."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.pause_s = 0.0
        self.bodies: list[dict[str, Any]] = []
        self.peers: list[int] = []  # each request's client port: which connection it came on
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> StreamingResponse:
        self.bodies.append(orjson.loads(await request.body()))
        self.peers.append(request.client.port if request.client else -1)
        writes, pause = list(self.writes), self.pause_s

        async def body() -> Any:
            for w in writes:
                yield w
                await asyncio.sleep(pause)

        return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Scripted, Any]]:
    s = Scripted()
    with upstream_server(s.app) as srv:
        yield s, srv


@pytest.fixture
def up(upstream: tuple[Scripted, Any]) -> Scripted:
    upstream[0].writes, upstream[0].pause_s = [], 0.0
    return upstream[0]


@pytest.fixture
def gw(tmp_path: Path, upstream: tuple[Scripted, Any]) -> Iterator[Any]:
    backend = {"name": "up", "plugin": "openai_compatible", "model": "upstream-model",
               "base_url": upstream[1].url + "/v1", "api_key": KEY, "timeouts": GENEROUS}
    with gateway(tmp_path, backend) as srv:
        yield srv


def stream_raw(gw: Any, rid: str, **body: Any) -> bytes:
    """The gateway's response body, as bytes."""
    req = {"model": "up", "messages": MSG, "stream": True, **body}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=req, timeout=60,
                      headers={"x-request-id": rid}) as r:
        assert r.status_code == 200, r.read()
        return r.read()


def test_events_reach_the_client_as_the_upstream_wrote_them(gw: Any, up: Scripted) -> None:
    events = [ev(ROLE), *(ev(delta(t)) for t in TEXTS), ev(FINISH), ev(usage(11, 5))]
    up.writes = [*events, b"data: [DONE]\n\n"]
    rid = request_id()
    got = stream_raw(gw, rid, stream_options={"include_usage": True})
    assert got == b"".join(events) + b"data: [DONE]\n\n"  # byte for byte: fields, text
    assert up.bodies[-1]["stream_options"] == {"include_usage": True}
    row = ledger_row(gw.app, rid)
    assert row["status"] == 200 and row["stream"] == 1
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 5)
    assert row["bytes_received"] == sum(map(len, up.writes))
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


def test_a_finished_stream_leaves_its_upstream_connection_open(gw: Any, up: Scripted) -> None:
    """A server ends its chunked body after ``[DONE]`` in a write of its own (uvicorn, as
    here, and llama.cpp's and vLLM's servers): the gateway reads that end, so the next request
    reuses the connection instead of paying for a new connect. Before, each stream's
    connection was closed."""
    up.writes = [ev(ROLE), ev(delta("Hi")), ev(FINISH), b"data: [DONE]\n\n"]
    up.pause_s = 0.002  # each write its own TCP segment
    start = len(up.peers)
    for _ in range(5):
        assert stream_raw(gw, request_id()).endswith(b"data: [DONE]\n\n")
    ports = up.peers[start:]
    assert len(ports) == 5
    assert len(set(ports)) == 1, ports


def test_usage_the_client_did_not_ask_for_is_left_out(gw: Any, up: Scripted) -> None:
    """Asked for upstream (the record needs it), usage reaches only a client that asked;
    some servers put it on the last chunk with choices, which loses just that field."""
    last = {**FINISH, "usage": usage(7, 2)["usage"]}
    up.writes = [ev(ROLE), ev(delta("Hi")), ev(delta(" there")), ev(last), ev(usage(7, 2)),
                 b"data: [DONE]\n\n"]
    rid = request_id()
    got = stream_raw(gw, rid)
    assert b'"usage"' not in got
    assert got == (ev(ROLE) + ev(delta("Hi")) + ev(delta(" there")) + ev(FINISH)
                   + b"data: [DONE]\n\n")
    assert up.bodies[-1]["stream_options"] == {"include_usage": True}
    row = ledger_row(gw.app, rid)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 2)
    with sdk(gw.url) as c:  # and the SDK reads it as OpenAI's own
        chunks = list(c.chat.completions.create(model="up", messages=MSG, stream=True))
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == "Hi there"
    assert all(x.usage is None for x in chunks)


def test_other_framings_reach_the_client_as_canonical_events(gw: Any, up: Scripted) -> None:
    """CRLF line ends, comments, event fields, no space after ``data:``, ``"usage": null``
    on every chunk (as OpenAI sends it), events cut anywhere between writes: the client
    gets each event's JSON as sent, framed ``data: {...}`` and a blank line."""
    chunks = [ROLE, *(delta(t, usage=None) for t in TEXTS), FINISH, usage(3, 5)]
    payloads = [orjson.dumps(c).replace(b'"usage":null', b'"usage": null') for c in chunks]
    body = b": ping\r\n\r\n" + b"".join(
        b"event: message\r\ndata:" + p + b"\r\n\r\n" for p in payloads) + b"data: [DONE]\r\n\r\n"
    up.writes = [body[i:i + 37] for i in range(0, len(body), 37)]
    rid = request_id()
    got = stream_raw(gw, rid, stream_options={"include_usage": True})
    assert got == b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"
    row = ledger_row(gw.app, rid)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 5)
    assert row["bytes_received"] == len(body)


@pytest.mark.parametrize("n", [6, HOLD_BYTES // 150])
def test_an_upstream_without_usage_is_counted_chunk_by_chunk(gw: Any, up: Scripted,
                                                             n: int) -> None:
    """No usage from the upstream (llama.cpp's server ignores include_usage): the tokens
    are the chunks that carried text, the client that asked still gets a usage chunk. A
    long stream is counted as it goes, a short one at its end."""
    texts = [f" w{i}" for i in range(n)]
    up.writes = [ev(ROLE), *(ev(delta(t)) for t in texts), ev(FINISH), b"data: [DONE]\n\n"]
    assert (sum(map(len, up.writes)) > HOLD_BYTES) == (n > 100)
    rid = request_id()
    with sdk(gw.url) as c:
        chunks = list(c.chat.completions.create(
            model="up", messages=MSG, stream=True, stream_options={"include_usage": True},
            extra_headers={"x-request-id": rid}))
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == "".join(texts)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == n
    assert chunks[-1].id == "chatcmpl-up" and chunks[-1].model == "upstream-model"
    row = ledger_row(gw.app, rid)
    assert row["completion_tokens"] == n and row["prompt_tokens"] > 0


def test_time_to_first_token_is_the_first_chunk_with_choices(gw: Any, up: Scripted) -> None:
    """A chunk without choices and a comment come at once, the first choices 0.4 s later."""
    up.writes = [ev({**HEAD, "choices": []}), b": thinking\n\n", ev(ROLE), ev(delta("Hi")),
                 ev(FINISH), ev(usage(4, 1)), b"data: [DONE]\n\n"]
    up.pause_s = 0.2
    rid = request_id()
    stream_raw(gw, rid, stream_options={"include_usage": True})
    row = ledger_row(gw.app, rid)
    assert 400 <= row["ttft_ms"] <= row["latency_ms"] - 400  # 4 writes came after it


def test_an_error_event_ends_the_stream_with_an_error_the_sdk_raises(gw: Any,
                                                                     up: Scripted) -> None:
    up.writes = [ev(ROLE), ev(delta("Hel")), ev(delta("lo")),
                 ev({"error": {"message": f"overloaded, key {KEY}", "type": "server_error"}}),
                 ev(delta("never")), b"data: [DONE]\n\n"]
    rid = request_id()
    got: list[str] = []
    with sdk(gw.url) as c, pytest.raises(openai.APIError) as info:
        for x in c.chat.completions.create(model="up", messages=MSG, stream=True,
                                           extra_headers={"x-request-id": rid}):
            got.append(x.choices[0].delta.content or "")
    assert "".join(got) == "Hello"
    assert "overloaded" in info.value.message and KEY not in info.value.message
    row = ledger_row(gw.app, rid)
    assert row["status"] == 502 and row["error_code"] == "backend_error"


def test_a_malformed_usage_event_is_an_error_event(gw: Any, up: Scripted) -> None:
    up.writes = [ev(ROLE), ev(delta("Hi")), b'data: {"choices": [], "usage": {oops}\n\n',
                 b"data: [DONE]\n\n"]
    got = stream_raw(gw, request_id(), stream_options={"include_usage": True})
    assert got.startswith(ev(ROLE) + ev(delta("Hi")))
    assert b"malformed event" in got and got.count(b"data: ") == 3


def test_a_client_that_goes_away_is_recorded_and_the_upstream_let_go(gw: Any,
                                                                     up: Scripted) -> None:
    up.writes = [ev(ROLE), *(ev(delta(f" w{i}")) for i in range(200)), ev(FINISH),
                 b"data: [DONE]\n\n"]
    up.pause_s = 0.02
    rid = request_id()
    req = {"model": "up", "messages": MSG, "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=req, timeout=60,
                      headers={"x-request-id": rid}) as r:
        seen = b""
        for data in r.iter_bytes():
            seen += data
            if seen.count(b"data: ") >= 3:
                break  # and the connection closes, 4 s before the upstream would end
    row = ledger_row(gw.app, rid)
    assert row["status"] == 499 and row["error_code"] == "client_disconnected"
    assert 0 < row["latency_ms"] < 3000
