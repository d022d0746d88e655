"""The streaming delivery: open a backend stream (its first chunk, within the first-token
timeout: a failure until then can still fall back), then relay it to the client as
server-sent events. A failure after the first byte is one final SSE error event; the
attempt is accounted and settled when the stream ends or its client goes away.

A backend with ``stream_sse`` (``openai_compatible``) hands over blocks of canonical
events as they arrived (``gateway.sse``); they go to the client untouched, several events
a write, and only what the record needs is parsed: the first event with choices (the
time to first token), an event that carries usage (the token counts; dropped or cut from
the client's stream when it did not ask for usage), every event when a cache assembles
the answer. A stream whose backend reports no usage is counted from its chunks: the
blocks are kept (up to ``HOLD_BYTES``, then counted and let go) until a usage event makes
the count needless. Any other backend yields chunk dicts, each encoded here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from gateway import sse as wire
from gateway.errors import BackendError, BackendTimeout
from gateway.interfaces import BackendCall, Usage
from gateway.pipeline.attempt import Attempt
from gateway.pipeline.coalesce import coalesced
from gateway.protocol import has_content, usage_chunk

log = logging.getLogger("switchyard.pipeline")

DONE = wire.DONE
HOLD_BYTES = 256 * 1024  # a stream's blocks kept uncounted, at most, while no usage came
_USAGE, _NO_USAGE = b'"usage"', (b'"usage":null', b'"usage": null')


def sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


async def aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a broken stream must not raise
            log.debug("closing backend stream failed", exc_info=True)


def _has_usage(block: bytes) -> bool:
    """Whether an event of ``block`` may carry usage (a ``"usage": null`` does not)."""
    n = block.count(_USAGE)
    return n > 0 and n > block.count(_NO_USAGE[0]) + block.count(_NO_USAGE[1])


class _Malformed(Exception):
    """A block with an event that does not parse; ``before``: the events ahead of it."""

    def __init__(self, before: bytes) -> None:
        self.before = before


class Relay:
    __slots__ = (
        "a",
        "chunks",
        "deadline",
        "first",
        "held",
        "held_bytes",
        "it",
        "last",
        "raw",
        "tail",
        "tap",
        "ttft",
        "usage",
        "want_usage",
    )

    def __init__(self, a: Attempt, it: AsyncIterator[Any], first: Any, deadline: float,
                 raw: bool = False) -> None:
        self.a, self.it, self.first, self.deadline = a, it, first, deadline
        self.raw = raw  # ``it`` yields canonical SSE blocks (bytes), not chunk dicts
        opts = getattr(a.x.req, "stream_options", None)
        self.want_usage = bool(opts is not None and opts.include_usage)
        self.ttft: float | None = None
        self.chunks = 0  # chunks that carried generated text: the count when none is reported
        self.usage: Usage | None = None
        self.last: dict[str, Any] | None = None
        self.tail = b""  # the last block relayed (raw): its last event is the stream's last
        self.held: list[bytes] = []  # blocks not counted yet (raw, while no usage came)
        self.held_bytes = 0
        self.tap: Callable[[dict[str, Any]], None] | None = None  # sees every chunk (a cache)

    @classmethod
    async def open(cls, a: Attempt) -> Relay:
        """The backend's stream, up to its first chunk (always with usage asked for)."""
        b, fwd = a.backend, a.x.forwarded
        body = {**fwd, "model": b.model, "stream": True,
                "stream_options": {**(fwd.get("stream_options") or {}), "include_usage": True}}
        timeouts = b.config.timeouts
        deadline = asyncio.get_running_loop().time() + timeouts.total_s
        call = BackendCall(a.x.endpoint, body, a.x.ctx.request_id, stream=True)
        stream_sse = getattr(b, "stream_sse", None)
        source = b.stream if stream_sse is None else stream_sse
        it = source(call, a.meter).__aiter__()
        try:
            async with asyncio.timeout(min(timeouts.first_token_s, timeouts.total_s)):
                first = await it.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException as e:
            await aclose(it)
            if isinstance(e, TimeoutError):
                raise BackendTimeout(f"Backend '{b.name}' sent no first token in time.") from None
            raise
        return cls(a, it, first, deadline, raw=stream_sse is not None)

    def stream(self) -> AsyncIterator[bytes]:
        """The client's stream: blocks as they came, or chunk dicts encoded and joined
        while the client is writing (``coalesced``)."""
        return self.events() if self.raw else coalesced(self.events())

    async def events(self) -> AsyncIterator[bytes]:
        status, code = 200, None
        it, raw = self.it, self.raw
        try:
            item = self.first
            while item is not None:
                try:
                    out = self._block(item) if raw else self._event(item)
                except _Malformed as m:
                    if m.before:
                        yield m.before
                    raise BackendError(
                        f"Backend '{self.a.backend.name}' sent a malformed event.") from None
                if out:
                    yield out
                try:
                    if raw:  # the backend keeps the deadline (its HTTP client's timeouts)
                        item = await it.__anext__()
                    else:
                        async with asyncio.timeout_at(self.deadline):
                            item = await it.__anext__()
                except StopAsyncIteration:
                    item = None
            if self.want_usage and self.usage is None:
                # the backend reports no usage (llama.cpp's server ignores include_usage):
                # the client still gets the usage chunk it asked for, counted here
                self.usage = self._counted()
                yield sse(usage_chunk(self._last(), self.usage))
            yield DONE
        except (asyncio.CancelledError, GeneratorExit):
            status, code = 499, "client_disconnected"
            raise
        except Exception as e:  # noqa: BLE001 - ends the stream with an error event
            if isinstance(e, TimeoutError):
                e = BackendTimeout(f"Backend '{self.a.backend.name}' did not finish in time.")
            err = self.a.ex.failure(self.a.backend.name, e)
            status, code = err.status, err.code
            yield sse(err.body())
        finally:
            self.a.stop()
            try:  # a client gone: the response's cancel scope may cancel this await too
                await aclose(it)
            finally:
                await self.a.succeeded(self.usage or self._counted(), ttft_s=self.ttft,
                                       status=status, code=code)

    # ---- chunk dicts -------------------------------------------------------------------

    def _event(self, chunk: dict[str, Any]) -> bytes | None:
        """The event for one chunk (None: not for this client)."""
        out = self._note(chunk)
        return None if out is None else sse(out)

    def _note(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Note one chunk's usage, time to first token and text; the chunk for this client
        (``chunk`` itself, or a copy without its usage) or None."""
        self.last = chunk
        if self.tap is not None:
            self.tap(chunk)
        u = chunk.get("usage")
        if u:
            self.usage = self.a.meter.usage = Usage.from_openai(u)
        if chunk.get("choices"):
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.a.t0
            if has_content(chunk):
                self.chunks += 1
            if u and not self.want_usage:
                return {k: v for k, v in chunk.items() if k != "usage"}
            return chunk
        if not u or self.want_usage:
            return chunk
        return None

    # ---- canonical SSE blocks (stream_sse) ---------------------------------------------

    def _block(self, block: bytes) -> bytes:
        """What to write for one block: the block itself unless an event in it carries
        usage the client did not ask for."""
        try:
            return self._inspected(block)
        except orjson.JSONDecodeError:
            good = []  # the events before the bad one still reach the client
            for ev in wire.events(block):
                try:
                    orjson.loads(ev[6:])
                except orjson.JSONDecodeError:
                    break
                good.append(ev + b"\n\n")
            before = b"".join(good)
            if before and self.tap is None and self.usage is None:
                self._count(before)
            raise _Malformed(b"" if _has_usage(before) else before) from None

    def _inspected(self, block: bytes) -> bytes:
        self.tail = block
        if self.tap is not None:  # the cache assembles the answer: every chunk
            return self._parsed(block)
        if self.ttft is None:
            self._first(block)
        if _has_usage(block):
            return self._usage(block)
        if self.usage is None:
            self.held.append(block)
            self.held_bytes += len(block)
            if self.held_bytes > HOLD_BYTES:
                self._count_held()
        return block

    def _first(self, block: bytes) -> None:
        """The time to first token: when the first event with choices came."""
        at = 0
        while at < len(block):
            end = block.index(b"\n", at)
            if orjson.loads(block[at + 6:end]).get("choices"):
                self.ttft = time.perf_counter() - self.a.t0
                return
            at = end + 2

    def _usage(self, block: bytes) -> bytes:
        """A block with usage: its usage events parsed (noted, and changed for a client that
        did not ask for usage), the others left as they are."""
        out: list[bytes] = []
        plain: list[bytes] = []
        changed = False
        for ev in wire.events(block):
            if _USAGE not in ev:
                out.append(ev + b"\n\n")
                plain.append(ev)
                continue
            changed |= self._relayed(ev, orjson.loads(ev[6:]), out)
        if self.usage is not None:  # the count is not needed
            self.held.clear()
            self.held_bytes = 0
        elif plain:  # "usage" keys without counts: the other events are counted
            self._count(b"\n\n".join(plain) + b"\n\n")
        return b"".join(out) if changed else block

    def _parsed(self, block: bytes) -> bytes:
        """Every event of a block parsed and noted (the cache's tap sees each chunk)."""
        out: list[bytes] = []
        changed = False
        for ev, chunk in zip(wire.events(block), wire.chunks(block), strict=True):
            changed |= self._relayed(ev, chunk, out)
        return b"".join(out) if changed else block

    def _relayed(self, ev: bytes, chunk: dict[str, Any], out: list[bytes]) -> bool:
        """Note the event ``ev`` (parsed: ``chunk``) and add what the client gets of it to
        ``out``; whether that differs from ``ev``."""
        got = self._note(chunk)
        if got is chunk:
            out.append(ev + b"\n\n")
            return False
        if got is not None:
            out.append(sse(got))
        return True

    def _count(self, block: bytes) -> None:
        try:
            self.chunks += sum(map(has_content, wire.chunks(block)))
        except orjson.JSONDecodeError:  # relayed as it came; its good events still count
            for ev in wire.events(block):
                try:
                    self.chunks += has_content(orjson.loads(ev[6:]))
                except orjson.JSONDecodeError:
                    pass

    def _count_held(self) -> None:
        for block in self.held:
            self._count(block)
        self.held.clear()
        self.held_bytes = 0

    def _last(self) -> dict[str, Any] | None:
        """The stream's last chunk (its id, model... for the usage chunk made here)."""
        if not self.raw or not self.tail:
            return self.last
        at = self.tail.rfind(b"\n\ndata: ", 0, len(self.tail) - 2)
        try:
            last: dict[str, Any] = orjson.loads(self.tail[at + 8 if at >= 0 else 6:-2])
        except orjson.JSONDecodeError:
            return None
        return last

    def _counted(self) -> Usage:
        if self.held:
            self._count_held()
        return self.a.meter.usage or Usage(self.a.x.features.prompt_tokens, self.chunks)
