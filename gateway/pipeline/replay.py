"""A stream and a whole answer, each made from the other: ``Assembler`` collects a streamed
chat or text completion into the body a non-streaming request gets (what a cache stores);
``replay`` sends a stored body to a streaming client as the SSE chunks a backend sends
(what a cache hit on a stream gets).

``pieces`` are the lengths of the text the stream's chunks carried, in order: a stream
stored with them replays in the same chunks; a body stored from a non-streaming answer
replays one word a chunk. Only answers with one choice, no tool calls and no logprobs are
assembled (what a cache stores); ``Assembler.body`` is None for any other.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from gateway.interfaces import Endpoint, Usage
from gateway.pipeline.relay import DONE, sse
from gateway.protocol import usage_chunk

_WORD = re.compile(r"\S+\s*|\s+")


class Assembler:
    """``add`` every chunk of a stream (``Relay.tap``), then ``body(usage)``."""

    __slots__ = ("created", "finish", "id", "model", "object", "parts", "pieces", "reusable")

    def __init__(self) -> None:
        self.id: Any = None
        self.object: str | None = None
        self.created: Any = None
        self.model: Any = None
        self.parts: list[str] = []
        self.pieces: list[int] = []
        self.finish: str | None = None
        self.reusable = True

    def add(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        if not choices:
            return
        if self.id is None:
            self.id, self.object = chunk.get("id"), chunk.get("object")
            self.created, self.model = chunk.get("created"), chunk.get("model")
        if len(choices) != 1 or choices[0].get("index", 0) != 0:
            self.reusable = False  # n > 1
            return
        ch = choices[0]
        delta = ch.get("delta")
        if ch.get("logprobs") or (delta is not None and (
                delta.get("tool_calls") or delta.get("function_call"))):
            self.reusable = False
        text = delta.get("content") if delta is not None else ch.get("text")
        if ch.get("finish_reason"):
            self.finish = ch["finish_reason"]
        if text is None or (not text and self.finish):
            return  # a chunk without text (llama.cpp's role-only first one, the last one)
        self.parts.append(text)
        self.pieces.append(len(text))

    def body(self, endpoint: Endpoint, usage: Usage) -> dict[str, Any] | None:
        """The non-streaming body of the stream (None: it did not end normally, or it is
        not one plain answer)."""
        if not self.reusable or self.finish is None or self.finish in ("tool_calls",
                                                                         "function_call"):
            return None
        text = "".join(self.parts)
        if endpoint == "chat":
            choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish, "logprobs": None,
                                      "message": {"role": "assistant", "content": text}}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "finish_reason": self.finish, "logprobs": None, "text": text}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage.to_openai()}


def _split(text: str, pieces: list[int] | None) -> list[str]:
    if pieces and sum(pieces) == len(text):
        out, at = [], 0
        for n in pieces:
            out.append(text[at:at + n])
            at += n
        return out
    return _WORD.findall(text) or [""]


def chunks(answer: dict[str, Any], endpoint: Endpoint,
           pieces: list[int] | None = None) -> list[dict[str, Any]]:
    """The stream's chunks for ``answer`` (a chat or text completion body), usage left out:
    per choice, its text (in ``pieces`` for a one-choice answer), its tool calls, then its
    finish reason (a cascade's held answer may have several choices, tools or logprobs)."""
    choices = answer.get("choices") or [{}]
    chat = endpoint == "chat"
    head = {"id": answer.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": answer.get("created"), "model": answer.get("model")}
    one = pieces if len(choices) == 1 else None
    return [{**head, "choices": [c]} for choice in choices for c in _choice(choice, chat, one)]


def _choice(choice: dict[str, Any], chat: bool, pieces: list[int] | None) -> list[dict[str, Any]]:
    i = choice.get("index", 0)
    msg = choice.get("message") or {}
    text = (msg.get("content") if chat else choice.get("text")) or ""
    out: list[dict[str, Any]] = []
    for n, part in enumerate(_split(text, pieces)):
        lp = choice.get("logprobs") if n == 0 else None  # all of them, with the first piece
        if chat:
            delta = {"role": "assistant", "content": part} if n == 0 else {"content": part}
            out.append({"index": i, "delta": delta, "logprobs": lp, "finish_reason": None})
        else:
            out.append({"index": i, "text": part, "logprobs": lp, "finish_reason": None})
    if chat and msg.get("tool_calls"):
        calls = [{"index": k, **call} for k, call in enumerate(msg["tool_calls"])]
        out.append({"index": i, "delta": {"tool_calls": calls}, "logprobs": None,
                    "finish_reason": None})
    end = {"index": i, "delta": {}, "logprobs": None} if chat else {"index": i, "text": "",
                                                                     "logprobs": None}
    out.append({**end, "finish_reason": choice.get("finish_reason") or "stop"})
    return out


async def replay(answer: dict[str, Any], endpoint: Endpoint, pieces: list[int] | None,
                 want_usage: bool) -> AsyncIterator[bytes]:
    """``answer`` as server-sent events, ending like a backend's stream; the usage chunk
    when the client asked for it (``stream_options.include_usage``). All of it is at hand:
    it goes out in one write."""
    out = chunks(answer, endpoint, pieces)
    events = [sse(c) for c in out]
    if want_usage:
        usage = Usage.from_openai(answer.get("usage")) or Usage()
        events.append(sse(usage_chunk(out[-1], usage)))
    events.append(DONE)
    yield b"".join(events)
