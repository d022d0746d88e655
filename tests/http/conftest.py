"""Fixtures for the end-to-end HTTP tests: SmolLM2's vocabulary and a logit_bias that keeps
the model talking (helpers are in http_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import serve


@pytest.fixture(scope="session")
def vocab() -> Iterator[Any]:
    """SmolLM2's tokenizer (vocabulary only, no weights): token ids for logit_bias."""
    from llama_cpp import Llama

    from plugins.llamacpp import smollm2_path

    llm = Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def no_eos(vocab: Any) -> dict[str, float]:
    """A logit_bias that bans the end tokens: the model writes exactly max_tokens tokens."""
    ids = {vocab.token_eos(), 0}  # <|im_end|> and <|endoftext|>
    return {str(i): -100.0 for i in ids}


@pytest.fixture
def serve_app(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """``serve(app)`` from tests/conftest.py: a context manager running ``app`` on uvicorn."""
    return serve
