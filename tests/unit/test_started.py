"""``Started``: a coroutine run at once up to its first wait (the settlement is written to
the state store before the accounting that follows it), finished where it is awaited or
as a task, with the coroutine's own result, exception and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline.admission import Started


async def test_runs_up_to_its_first_wait_at_once_and_the_rest_when_awaited() -> None:
    steps: list[str] = []
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> int:
        steps.append("sent")
        n = await gate
        steps.append("replied")
        return n + 1

    started = Started(work())
    assert steps == ["sent"]  # before anything else runs
    steps.append("accounted")
    gate.set_result(41)
    assert await started == 42
    assert steps == ["sent", "accounted", "replied"]


async def test_a_coroutine_that_never_waits_is_done_at_once() -> None:
    async def now() -> str:
        return "done"

    assert await Started(now()) == "done"


async def test_an_error_before_the_first_wait_is_raised_where_it_is_awaited() -> None:
    async def broken() -> None:
        raise ValueError("no store")

    started = Started(broken())  # does not raise here
    with pytest.raises(ValueError, match="no store"):
        await started


async def test_as_a_task_it_finishes_and_can_be_cancelled() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    seen: list[str] = []

    async def work() -> int:
        return await gate

    task = asyncio.ensure_future(Started(work()))
    gate.set_result(7)
    assert await task == 7

    blocked = asyncio.ensure_future(Started(_waits(loop, seen)))
    await asyncio.sleep(0)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert seen == ["cancelled"]


async def _waits(loop: asyncio.AbstractEventLoop, seen: list[str]) -> None:
    try:
        await loop.create_future()
    except asyncio.CancelledError:
        seen.append("cancelled")
        raise


async def test_a_shielded_settlement_outlives_its_cancelled_caller() -> None:
    """What ``BudgetAdmission.settle`` relies on: the caller that awaits it is cancelled (a
    client went away), the settlement task goes on to the end."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    done: list[str] = []

    async def settlement() -> None:
        await gate
        done.append("settled")

    async def caller() -> None:
        await asyncio.shield(asyncio.ensure_future(Started(settlement())))

    outer = asyncio.ensure_future(Started(caller()))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    gate.set_result(None)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert done == ["settled"]
