"""Budget holds are upper bounds: the prompt bound against a real tokenizer and chat template,
the completion bound, and holds that stay exact numbers for absurd requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.auth import KeyAuthenticator, mint_key
from gateway.backend import BaseBackend
from gateway.budgets import NANO, completion_bound, period_id, worst_case_usd
from gateway.config import BackendConfig, BudgetsConfig, Pricing
from gateway.errors import InvalidRequest
from gateway.interfaces import BackendCall, RequestFeatures
from gateway.pipeline.admission import BudgetAdmission
from gateway.pipeline.context import RequestContext
from gateway.protocol import max_prompt_tokens, validate
from gateway.state import Team
from plugins.state_memory import MemoryStore


@pytest.fixture(scope="module")
def smollm2() -> Iterator[tuple[Any, Any]]:
    """SmolLM2's tokenizer (no weights) and its own chat template, as llama.cpp applies it."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from plugins.llamacpp import smollm2_path

    llm = Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)
    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                              bos_token="<|im_start|>")
    yield llm, fmt
    llm.close()


PROMPTS = [
    [{"role": "user", "content": "hi"}],  # the template adds a system prompt of its own
    [{"role": "user", "content": "東京の天気はどうですか？今日は雨が降りますか。" * 20}],
    [{"role": "user", "content": "🙂🚀🎉 " * 50}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\n" * 300},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "def f(x): return x**2"}],
    [{"role": "user", "content": [{"type": "text", "text": "Ünïcödé ąęłńóśźż " * 30}]}],
]


@pytest.mark.parametrize("messages", PROMPTS)
def test_the_prompt_bound_is_never_below_a_real_tokenizer(smollm2: Any,
                                                          messages: list[Any]) -> None:
    llm, fmt = smollm2
    text = fmt(messages=[{**m, "content": m["content"] if isinstance(m["content"], str)
                          else m["content"][0]["text"]} for m in messages]).prompt
    real = len(llm.tokenize(text.encode(), add_bos=False, special=True))
    body = {"model": "m", "messages": messages}
    validate("chat", body)
    assert max_prompt_tokens("chat", body) >= real


def test_the_old_estimate_was_no_bound(smollm2: Any) -> None:
    """Four characters a token: far below what a tokenizer makes of non-English text (and
    of "hi": 4 estimated, 31 with the template's own system prompt)."""
    llm, fmt = smollm2
    messages = PROMPTS[1]
    real = len(llm.tokenize(fmt(messages=messages).prompt.encode(), add_bos=False, special=True))
    call = BackendCall("chat", {"model": "m", "messages": messages}, "r")
    assert BaseBackend(BackendConfig(name="b", plugin="x")).count_tokens(call) < real / 3


def test_the_bound_counts_what_a_prompt_is_made_of() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    n = max_prompt_tokens("chat", base)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert max_prompt_tokens("chat", {**base, "tools": tools}) > n + 50
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with_image = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, image]}]}
    assert max_prompt_tokens("chat", with_image) >= n + 4096
    assert max_prompt_tokens("completions", {"prompt": [[1, 2, 3], [4, 5]]}) >= 5
    assert max_prompt_tokens("embeddings", {"input": ["abc", "é"]}) >= 3 + 2


def test_the_completion_bound() -> None:
    assert completion_bound(100, None, 4096) == 100
    assert completion_bound(None, None, 4096) == 4096  # nothing better is known
    assert completion_bound(None, 8192, 4096) == 8192  # the window holds prompt and completion
    assert completion_bound(10**6, 8192, 4096) == 8192
    # n completions; an embedding writes none; the prompt at most the window
    assert worst_case_usd(1e-6, 2e-6, 10, 5, 100, choices=3) == pytest.approx(10e-6 + 30e-6)
    assert worst_case_usd(1e-6, 2e-6, 10, None, 100, choices=0) == pytest.approx(10e-6)
    assert worst_case_usd(1e-6, 0, 10**6, 1, 100, context_window=1000) == pytest.approx(1e-3)


async def _admission(team: Team) -> tuple[BudgetAdmission, RequestContext, MemoryStore]:
    store = MemoryStore()
    await store.create_team(team)
    key, rec = mint_key(team.name, "ci")
    await store.put_key(rec)
    ctx = RequestContext(request_id="r", team=team.name)
    ctx.identity = await KeyAuthenticator(store).verify(f"Bearer {key}")
    return BudgetAdmission(store, BudgetsConfig()), ctx, store


async def test_a_request_past_the_whole_budget_names_max_tokens() -> None:
    adm, ctx, store = await _admission(Team(name="acme", budget_usd=1.0, period="day"))
    backend = BaseBackend(BackendConfig(name="b", plugin="x",
                                        pricing=Pricing(output_per_mtok=10)))
    features = RequestFeatures("chat", "b", prompt_tokens=3, max_tokens=10**6, choices=2)
    with pytest.raises(InvalidRequest) as e:
        await adm.reserve(ctx, backend, features)
    assert e.value.param == "max_tokens" and e.value.code == "request_exceeds_budget"
    assert "2 x 1000000 completion tokens (max_tokens=1000000)" in e.value.message
    assert (await store.spend("acme", period_id("day", time.time()))).reserved == 0


async def test_an_absurd_hold_without_a_budget_stays_an_exact_number() -> None:
    adm, ctx, store = await _admission(Team(name="free"))
    backend = BaseBackend(BackendConfig(name="b", plugin="x",
                                        pricing=Pricing(output_per_mtok=1e6)))
    features = RequestFeatures("completions", "b", prompt_tokens=1, max_tokens=2**31 - 1,
                               choices=128 * 20)
    r = await adm.reserve(ctx, backend, features)
    assert r is not None and 0 < r.amount <= 2**50 < 2**53
    await adm.settle(ctx, r, 0.5, 10)
    spend = await store.spend("free", r.period)
    assert spend.reserved == 0 and spend.spent == NANO // 2
