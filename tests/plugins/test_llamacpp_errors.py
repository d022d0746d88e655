"""The llama.cpp backend's error classes come from the exception's type, with the real tiny
model: a prompt that does not fit the context is ``context_length_exceeded`` however the
library words it, another refusal a plain 400, anything else a 502."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway import BackendCall, BackendContext, BackendError, InvalidRequest, Meter
from plugins.llamacpp import LlamaCppBackend, LlamaCppConfig

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def tiny() -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend(LlamaCppConfig(name="tiny", plugin="llamacpp", n_ctx=256),
                        BackendContext())
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def test_a_prompt_over_the_context_is_context_length_exceeded(tiny: LlamaCppBackend) -> None:
    long = BackendCall("chat", {"messages": [{"role": "user", "content": "hello " * 400}],
                                "max_tokens": 2}, "req-long")
    for serve in (tiny.call, lambda c, m: anext(tiny.stream(c, m))):
        with pytest.raises(InvalidRequest) as e:
            await serve(long, Meter())
        assert e.value.code == "context_length_exceeded" and e.value.status == 400
        assert "256" in e.value.message


async def test_the_class_follows_the_type_not_the_wording(tiny: LlamaCppBackend) -> None:
    long = BackendCall("chat", {"messages": [{"role": "user", "content": "hello " * 400}]}, "a")
    short = BackendCall("chat", {"messages": HI}, "b")
    err = tiny._error(long, ValueError("worded some other way"))
    assert isinstance(err, InvalidRequest) and err.code == "context_length_exceeded"
    err = tiny._error(short, ValueError("Requested tokens (9) exceed context window of 256"))
    assert isinstance(err, InvalidRequest) and err.code == "invalid_request"
    err = tiny._error(short, RuntimeError("tokens exceed the context window"))
    assert isinstance(err, BackendError) and err.status == 502
