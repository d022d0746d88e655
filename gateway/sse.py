"""Server-sent events as bytes: what a streaming backend and the relay pass between them
when neither needs the chunks parsed.

An OpenAI-compatible stream is a run of events ``data: {chunk}\\n\\n`` ended by
``data: [DONE]\\n\\n``. ``SSEFrames`` cuts what a backend reads from its upstream at line
ends and checks that each block is *canonical*: whole events, each one line ``data: {...}``
and a blank line, nothing else. A canonical block goes on as it arrived, so the relay
(``gateway.pipeline.relay``) writes it to the client untouched and parses only the events
its record needs (the first, for the time to first token; the usage chunk). Any other
block (``\\r\\n`` line ends, comments, ``event:`` fields, ``data:`` without its space, an
event cut by a read) is rewritten canonical, line by line as the earlier line reader did:
each ``data:`` line one JSON object, checked. ``[DONE]`` ends the stream (``done``); an
error event (``error`` and no ``choices``) stops it (``error``); a line read that is not a
JSON object raises ``ValueError``. A canonical block is not parsed: bad JSON in that shape
goes on as the upstream sent it, as through any proxy.

Checking a block costs a few byte searches in C whatever its size, against a JSON parse
and dump per event (bench/streaming.py).
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
_SEP = b"}\n\ndata: {"


def canonical(block: bytes) -> bool:
    """Whether ``block`` is whole events ``data: {...}\\n\\n`` and nothing else: it starts
    with ``data: {``, ends with ``}\\n\\n``, and its only line ends are the two after each
    event (JSON text holds none: a newline in a string is escaped)."""
    return (block.startswith(b"data: {") and block.endswith(b"}\n\n")
            and block.count(b"\n") == 2 * (block.count(_SEP) + 1))


def chunks(block: bytes) -> list[dict[str, Any]]:
    """The chunks of a canonical block, parsed in one call."""
    out: list[dict[str, Any]] = orjson.loads(b"[" + block[6:-2].replace(b"\n\ndata: ", b",")
                                             + b"]")
    return out


def events(block: bytes) -> list[bytes]:
    """The events of a canonical block, each ``data: {...}`` without its blank line."""
    return block[:-2].split(b"\n\n")


class SSEFrames:
    """Feed it the body of an upstream's stream as read; it returns the canonical blocks
    to relay (``b""`` while an event is incomplete)."""

    __slots__ = ("_buf", "done", "error")

    def __init__(self) -> None:
        self._buf = b""
        self.done = False  # [DONE] came: anything after it is ignored
        self.error: dict[str, Any] | None = None  # the error event that stopped the stream

    def feed(self, data: bytes) -> bytes:
        if self.done or self.error is not None:
            return b""
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return b""
        if end + 1 < len(buf):
            block, self._buf = buf[:end + 1], buf[end + 1:]
        else:
            block, self._buf = buf, b""
        return self._checked(block)

    def close(self) -> bytes:
        """What is left when the body ends: a last line without its line end."""
        block, self._buf = self._buf, b""
        return self._lines(block) if block and not self.done and self.error is None else b""

    def _checked(self, block: bytes) -> bytes:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        if block.endswith(DONE):
            self.done = True
            block = block[:-len(DONE)]
        if canonical(block) and b'"error"' not in block:
            return block
        return self._lines(block) if block else b""

    def _lines(self, block: bytes) -> bytes:
        out = []
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # a blank line, a comment, another field
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                break
            chunk = orjson.loads(payload)
            if not isinstance(chunk, dict):
                raise ValueError("an event that is not a JSON object")  # noqa: TRY004 - as orjson's
            if "error" in chunk and "choices" not in chunk:
                self.error = chunk
                break
            out.append(b"data: " + payload + b"\n\n")
        return b"".join(out)
