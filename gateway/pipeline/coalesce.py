"""Fewer writes for a stream of chunk dicts that arrives in bursts.

A streaming response sends one ASGI message per item, and each message goes down
Starlette's and uvicorn's send path (a few coroutine frames and a socket write): at a
few hundred events a stream, that path costs more than the relay's own work. ``coalesced``
runs the event iterator in a task of its own and hands the response everything that task
produced since the last send, joined: a burst (a backend that sends its answer faster than
the client reads) goes out in a few writes, and a paced stream still goes out one event at
a time, each as soon as it is made (no timer, no added wait).

The relay uses it for backends that yield one chunk dict at a time; a backend with
``stream_sse`` already hands over blocks of the events that arrived together, and a task
per stream would only add a hop per block (``gateway.pipeline.relay``).

The event iterator keeps its own semantics: it runs to its end (its ``finally`` included:
the relay settles there) before the response ends; a client that goes away cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

MAX_EVENTS = 64  # the most events joined into one write; the iterator waits beyond that


async def coalesced(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``events``, with what is ready at each send joined into one chunk. The first event
    is read by the response itself and goes out alone, at once (time to first token); the
    iterator then runs at most ``MAX_EVENTS`` ahead of the client (a slow reader holds it
    back, as before)."""
    buf: list[bytes] = []
    ready, taken = asyncio.Event(), asyncio.Event()

    async def pump() -> None:
        try:
            async for event in events:
                buf.append(event)
                ready.set()
                if len(buf) >= MAX_EVENTS:
                    taken.clear()
                    await taken.wait()
        finally:
            ready.set()
            # cancelled while waiting here, outside the iterator: close it, so its own
            # cleanup runs (the relay records and settles a client that went away)
            await _close(events)

    task: asyncio.Future[None] | None = None
    try:
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            return
        yield first
        task = asyncio.ensure_future(pump())
        while True:
            if not buf:
                if task.done():
                    break
                await ready.wait()
                ready.clear()
                continue
            out = buf[0] if len(buf) == 1 else b"".join(buf)
            buf.clear()
            taken.set()
            yield out
        task.result()  # the iterator's own error, if it raised one
    finally:
        if task is None:  # gone after the first event, or before it
            await _close(events)
        elif not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _close(events: AsyncIterator[bytes]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
