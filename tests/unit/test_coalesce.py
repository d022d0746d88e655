"""``coalesced``: a stream's events reach the client whole, in order, in fewer writes when
they come in a burst, the first at once; its source is closed (its cleanup runs) when the
client goes away, and its error reaches the response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.pipeline.coalesce import MAX_EVENTS, coalesced


def _events(n: int) -> list[bytes]:
    return [b"data: {\"i\": %d}\n\n" % i for i in range(n)]


class Source:
    """An event source that records whether its cleanup ran (the relay settles there)."""

    def __init__(self, events: list[bytes], pause_s: float = 0.0) -> None:
        self.events, self.pause_s = events, pause_s
        self.closed = False
        self.sent = 0

    async def run(self) -> AsyncIterator[bytes]:
        try:
            for e in self.events:
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)
                self.sent += 1
                yield e
        finally:
            self.closed = True


async def test_a_burst_arrives_whole_in_order_in_few_writes() -> None:
    events = _events(300)
    writes = [w async for w in coalesced(Source(events).run())]
    assert b"".join(writes) == b"".join(events)
    assert writes[0] == events[0], "the first event goes out alone, at once"
    assert len(writes) <= 2 + 300 // MAX_EVENTS + 1, len(writes)
    assert all(w.count(b"data: ") <= MAX_EVENTS for w in writes)


async def test_a_paced_stream_goes_out_event_by_event() -> None:
    events = _events(5)
    writes = [w async for w in coalesced(Source(events, pause_s=0.01).run())]
    assert writes == events


async def test_the_source_runs_at_most_a_batch_ahead_of_a_slow_client() -> None:
    src = Source(_events(1000))
    it = coalesced(src.run())
    await it.__anext__()  # the first event
    await it.__anext__()  # what followed it
    await asyncio.sleep(0.05)  # the client reads nothing for a while
    assert src.sent <= 2 + 2 * MAX_EVENTS
    await it.aclose()  # it goes away while the source waits for it
    assert src.closed


async def test_a_client_that_goes_away_closes_the_source() -> None:
    src = Source(_events(1000), pause_s=0.001)
    it = coalesced(src.run())
    await it.__anext__()
    await it.aclose()
    assert src.closed and src.sent < 1000


async def test_a_cancelled_response_closes_the_source() -> None:
    src = Source(_events(1000), pause_s=0.001)

    async def consume() -> None:
        async for _ in coalesced(src.run()):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert src.closed and src.sent < 1000


async def test_the_sources_error_reaches_the_response() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise RuntimeError("backend gone")

    it = coalesced(broken())
    assert await it.__anext__() == b"data: 1\n\n"
    with pytest.raises(RuntimeError, match="backend gone"):
        await it.__anext__()
