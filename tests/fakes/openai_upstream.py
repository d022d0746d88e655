"""A small OpenAI-compatible upstream that records what it receives.

It is a test double for "any OpenAI-compatible server": it speaks the OpenAI wire protocol
(``/v1/models``, ``/v1/chat/completions`` with and without SSE streaming, ``/v1/completions``)
and keeps every request it got (path, headers, JSON body), so a test can see exactly what the
gateway forwarded. A test scripts its behaviour: answer normally, answer with an error
status, answer too slowly, or break a stream after a few chunks.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

REPLY = "Hello from the recording upstream , one two three four five six seven eight"


@dataclass
class Behaviour:
    """What the upstream does with the next requests.

    kind: ``ok`` | ``status`` (answer ``status`` with ``error_body``) | ``slow`` (wait
    ``delay_s`` before any byte) | ``break_stream`` (send ``chunks`` chunks, then drop the
    connection) | ``stall_stream`` (send ``chunks`` chunks, then wait ``delay_s``)."""

    kind: str = "ok"
    status: int = 200
    error_body: dict[str, Any] | None = None
    delay_s: float = 0.0
    chunks: int = 2
    usage: tuple[int, int] | None = None  # (prompt, completion) to report instead of counting
    logprob: float = -0.1  # every token's log-probability, in an answer that asks for them
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class RecordingUpstream:
    """The ASGI app (``.app``) plus its recordings and script. Thread-safe enough for a
    server thread that appends and a test thread that reads."""

    def __init__(self, model: str = "upstream-model") -> None:
        self.model = model
        self.requests: list[Recorded] = []
        self.behaviour = Behaviour()
        self._lock = threading.Lock()
        self.app = Starlette(routes=[
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
        ])

    def behave(self, kind: str = "ok", **kw: Any) -> None:
        self.behaviour = Behaviour(kind=kind, **kw)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.behaviour = Behaviour()

    @property
    def last(self) -> Recorded:
        with self._lock:
            return self.requests[-1]

    # ---- handlers ----------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "test"}]
        return _json({"object": "list", "data": data})

    async def _record(self, request: Request) -> dict[str, Any]:
        body = orjson.loads(await request.body())
        with self._lock:
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        return body  # type: ignore[no-any-return]

    async def _chat(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    async def _completions(self, request: Request) -> Response:
        return await self._serve(request, "completions")

    async def _serve(self, request: Request, endpoint: str) -> Response:
        body = await self._record(request)
        b = self.behaviour
        if b.kind == "status":
            err = b.error_body or {"error": {"message": "upstream failed", "type": "server_error"}}
            return _json(err, b.status, b.headers)
        if b.kind == "slow":
            await asyncio.sleep(b.delay_s)
        words = _words(body)
        usage = _usage(body, endpoint, len(words), b.usage)
        if body.get("stream"):
            return StreamingResponse(self._events(body, endpoint, words, usage),
                                     media_type="text/event-stream")
        out = _complete_body(body, endpoint, words, usage)
        if body.get("logprobs") or (endpoint == "completions" and body.get("logprobs") == 0):
            out["choices"][0]["logprobs"] = _logprobs(endpoint, words, b.logprob)
        return _json(out)

    async def _events(self, body: dict[str, Any], endpoint: str, words: list[str],
                      usage: dict[str, int]) -> AsyncIterator[bytes]:
        b = self.behaviour
        rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        for i, w in enumerate(words):
            if b.kind in ("break_stream", "stall_stream") and i == b.chunks:
                if b.kind == "stall_stream":
                    await asyncio.sleep(b.delay_s)
                raise ConnectionAbortedError("the upstream drops the stream on purpose")
            text = w if i == 0 else " " + w
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": text}, "finish_reason": None}
                if endpoint == "chat" else {"index": 0, "text": text, "finish_reason": None}
            )
            yield _sse({"id": rid, "object": obj, "created": created, "model": body["model"],
                        "choices": [choice]})
            await asyncio.sleep(0.005)
        finish = _finish(words)
        last: dict[str, Any] = ({"index": 0, "delta": {}, "finish_reason": finish}
                                if endpoint == "chat" else {"index": 0, "text": "", "finish_reason": finish})
        yield _sse({"id": rid, "object": obj, "created": created, "model": body["model"],
                    "choices": [last]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({"id": rid, "object": obj, "created": created, "model": body["model"],
                        "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status, headers, media_type="application/json")


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _words(body: dict[str, Any]) -> list[str]:
    n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    return REPLY.split()[: max(1, n)]


def _finish(words: list[str]) -> str:
    """As a real server says it: ``length`` when max_tokens cut the reply short."""
    return "length" if len(words) < len(REPLY.split()) else "stop"


def _usage(body: dict[str, Any], endpoint: str, completion: int,
           fixed: tuple[int, int] | None) -> dict[str, int]:
    if fixed is not None:
        prompt, completion = fixed
    elif endpoint == "chat":
        prompt = sum(len(str(m.get("content") or "").split()) + 4 for m in body["messages"])
    else:
        prompt = len(str(body.get("prompt") or "").split())
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _logprobs(endpoint: str, words: list[str], logprob: float) -> dict[str, Any]:
    """One token a word, each ``logprob`` (chat's shape, or legacy completions')."""
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if endpoint == "chat":
        return {"content": [{"token": t, "logprob": logprob, "bytes": list(t.encode()),
                             "top_logprobs": []} for t in tokens]}
    return {"tokens": tokens, "token_logprobs": [logprob] * len(tokens), "top_logprobs": None,
            "text_offset": [sum(map(len, tokens[:i])) for i in range(len(tokens))]}


def _complete_body(body: dict[str, Any], endpoint: str, words: list[str],
                   usage: dict[str, int]) -> dict[str, Any]:
    text = " ".join(words)
    if endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(words), "logprobs": None,
                                  "message": {"role": "assistant", "content": text}}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "finish_reason": _finish(words), "logprobs": None, "text": text}
        obj, prefix = "text_completion", "cmpl-"
    return {"id": prefix + uuid.uuid4().hex, "object": obj, "created": int(time.time()),
            "model": body["model"], "choices": [choice], "usage": usage}
