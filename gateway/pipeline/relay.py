"""The streaming delivery: open a backend stream (its first chunk, within the first-token
timeout: a failure until then can still fall back), then relay it to the client as
server-sent events. A failure after the first byte is one final SSE error event; the
attempt is accounted and settled when the stream ends or its client goes away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from gateway.errors import BackendTimeout
from gateway.interfaces import BackendCall, Usage
from gateway.pipeline.attempt import Attempt
from gateway.protocol import has_content, usage_chunk

log = logging.getLogger("switchyard.pipeline")

DONE = b"data: [DONE]\n\n"


def sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


async def aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a broken stream must not raise
            log.debug("closing backend stream failed", exc_info=True)


class Relay:
    __slots__ = (
        "a",
        "chunks",
        "deadline",
        "first",
        "it",
        "last",
        "tap",
        "ttft",
        "usage",
        "want_usage",
    )

    def __init__(self, a: Attempt, it: AsyncIterator[dict[str, Any]],
                 first: dict[str, Any] | None, deadline: float) -> None:
        self.a, self.it, self.first, self.deadline = a, it, first, deadline
        opts = getattr(a.x.req, "stream_options", None)
        self.want_usage = bool(opts is not None and opts.include_usage)
        self.ttft: float | None = None
        self.chunks = 0  # chunks that carried generated text: the count when none is reported
        self.usage: Usage | None = None
        self.last: dict[str, Any] | None = None
        self.tap: Callable[[dict[str, Any]], None] | None = None  # sees every chunk (a cache)

    @classmethod
    async def open(cls, a: Attempt) -> Relay:
        """The backend's stream, up to its first chunk (always with usage asked for)."""
        b, fwd = a.backend, a.x.forwarded
        body = {**fwd, "model": b.model, "stream": True,
                "stream_options": {**(fwd.get("stream_options") or {}), "include_usage": True}}
        timeouts = b.config.timeouts
        deadline = asyncio.get_running_loop().time() + timeouts.total_s
        it = b.stream(BackendCall(a.x.endpoint, body, a.x.ctx.request_id, stream=True),
                      a.meter).__aiter__()
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
        return cls(a, it, first, deadline)

    async def events(self) -> AsyncIterator[bytes]:
        status, code = 200, None
        try:
            chunk = self.first
            while chunk is not None:
                out = self._event(chunk)
                if out is not None:
                    yield out
                try:
                    async with asyncio.timeout_at(self.deadline):
                        chunk = await self.it.__anext__()
                except StopAsyncIteration:
                    chunk = None
            if self.want_usage and self.usage is None:
                # the backend reports no usage (llama.cpp's server ignores include_usage):
                # the client still gets the usage chunk it asked for, counted here
                self.usage = self._counted()
                yield sse(usage_chunk(self.last, self.usage))
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
            await aclose(self.it)
            await self.a.succeeded(self.usage or self._counted(), ttft_s=self.ttft,
                                   status=status, code=code)

    def _event(self, chunk: dict[str, Any]) -> bytes | None:
        """The event for one chunk (None: not for this client); notes usage and TTFT."""
        self.last = chunk
        if self.tap is not None:
            self.tap(chunk)
        u = chunk.get("usage")
        if u:
            self.usage = Usage.from_openai(u)
        if chunk.get("choices"):
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.a.t0
            if has_content(chunk):
                self.chunks += 1
            if u and not self.want_usage:
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
            return sse(chunk)
        if not u or self.want_usage:
            return sse(chunk)
        return None

    def _counted(self) -> Usage:
        return self.a.meter.usage or Usage(self.a.x.features.prompt_tokens, self.chunks)
