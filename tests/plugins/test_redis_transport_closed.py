"""A write on a transport the restarted Redis closed: uvloop raises a plain RuntimeError
("the handler is closed"), which once reached a client as a 503 state_store_error while
Redis restarted under load with failure_mode open (tests/integration/test_budgets_replicas.py).
It is a connection failure: an idempotent call is sent once more on a fresh connection, and
a failure that lasts is the outage error, which failing open handles."""

from __future__ import annotations

import pytest

from gateway import StateUnavailable
from plugins.state_redis import RedisStore

CLOSED = RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False>; "
                      "the handler is closed")


async def test_a_closed_transport_is_retried_once_then_answered() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")  # never connected: the calls below are ours
    tries: list[int] = []

    async def once_closed() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise CLOSED
        return "ok"

    assert await store._do(once_closed) == "ok"
    assert len(tries) == 2


@pytest.mark.parametrize("retry", [True, False])
async def test_a_closed_transport_that_stays_closed_is_an_outage(retry: bool) -> None:
    store = RedisStore("redis://127.0.0.1:1/0")

    async def closed() -> str:
        raise CLOSED

    with pytest.raises(StateUnavailable):
        await store._do(closed, retry=retry)
