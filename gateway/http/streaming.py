"""``EventStream``: the response of a streamed completion, server-sent events relayed as
the pipeline yields them.

It does what Starlette's ``StreamingResponse`` does under uvicorn (which speaks ASGI 2.3,
where a write to a client that went away returns quietly): writes the head, then each block,
and stops the stream when the client disconnects, so that the relay records 499 and lets
the backend go. Starlette runs the stream in a task of its own under an anyio task group
and a cancel scope, and a second coroutine listening for the disconnect: some 170 Python
calls before the first byte, a fifth of the gateway's whole path to its first token
(``bench/streaming.py``). Here the stream runs in the request's own task, and one small
task waits for the disconnect and cancels it; the cancellation it caused ends the response
quietly (``Task.uncancel``), any other (a server shutting down) goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


class EventStream(Response):
    """A 200 ``text/event-stream`` response of the blocks ``content`` yields, with
    ``headers`` (latin-1), as Starlette would write them."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers.items()]
        self.raw_headers.append(_CONTENT_TYPE)
        self._gone = False  # the client disconnected: the cancellation is ours

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(self._watch(receive, task))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            async for block in self.body_iterator:
                await send({"type": "http.response.body", "body": block, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._gone or task.uncancel():
                raise  # not only ours: the server is stopping
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive, task: asyncio.Task[object]) -> None:
        """Cancel ``task`` when the client disconnects (not when the response completes,
        which ends ``receive`` too, and cancels this first)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not task.done():
            self._gone = True
            task.cancel()
