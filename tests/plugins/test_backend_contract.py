"""One contract, every backend kind that runs here: call() returns an OpenAI body and usage,
stream() yields chunks and sets meter.usage, count_tokens() > 0, and cost_usd() is exactly
the reported usage at the configured (or litellm's) prices: 0.0 where the backend is free.

llamacpp runs SmolLM2 in process; openai_compatible talks to the recording upstream, vllm to
the fake vLLM server, litellm to the recording upstream on loopback (all on real uvicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fakes.fake_vllm import FakeVLLM
from fakes.harness import KEY, upstream_server
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer

from gateway import Backend, BackendCall, BackendContext, Meter

KINDS = ["llamacpp", "openai_compatible", "openai_compatible_aiohttp", "vllm", "litellm"]
# openai_compatible talks to an http:// server through plugins/http11.py; this kind makes the
# same backend use its https:// client (aiohttp) instead, so both clients meet the contract
AIOHTTP = "openai_compatible_aiohttp"
VLLM_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, LiveServer]]:
    rec, fake = RecordingUpstream(model="gpt-4o-mini"), FakeVLLM(VLLM_MODEL)
    with upstream_server(rec.app) as a, upstream_server(fake.app) as b:
        yield {"upstream": a, "vllm": b}


def config(kind: str, servers: dict[str, LiveServer]) -> dict[str, Any]:
    up, vllm = servers["upstream"].url + "/v1", servers["vllm"].url + "/v1"
    compatible = {"base_url": up, "model": "gpt-4o-mini", "api_key": KEY,
                  "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    return {
        "llamacpp": {"n_ctx": 512},
        "openai_compatible": compatible,
        AIOHTTP: compatible,
        "vllm": {"base_url": vllm, "model": VLLM_MODEL, "pricing": {"per_hour": 2.5}},
        "litellm": {"model": "openai/gpt-4o-mini", "api_base": up, "api_key": KEY},
    }[kind]


def prices(kind: str) -> tuple[float, float, float]:
    """(input, output) dollars per token and dollars per hour busy, as configured above
    (litellm: its bundled cost map)."""
    if kind == "litellm":
        import litellm

        info = litellm.model_cost["gpt-4o-mini"]
        return float(info["input_cost_per_token"]), float(info["output_cost_per_token"]), 0.0
    return {"llamacpp": (0.0, 0.0, 0.0), "openai_compatible": (1e-6, 2e-6, 0.0),
            AIOHTTP: (1e-6, 2e-6, 0.0), "vllm": (0.0, 0.0, 2.5)}[kind]


def expected_cost(backend: Backend, usage: Any, busy_s: float) -> float:
    pin, pout, per_hour = prices(backend.name.removeprefix("contract-"))
    return usage.prompt_tokens * pin + usage.completion_tokens * pout + per_hour * busy_s / 3600


@pytest.fixture(params=KINDS)
async def backend(request: pytest.FixtureRequest,
                  servers: dict[str, LiveServer]) -> AsyncIterator[Backend]:
    from gateway.assembly import build_registry_for
    from gateway.config import load_settings

    kind = request.param
    plugin = "openai_compatible" if kind == AIOHTTP else kind
    registry = build_registry_for(load_settings(None, embedded_default=False))
    factory, model = registry.backends[plugin].value
    cfg = model.model_validate({"name": f"contract-{kind}", "plugin": plugin,
                                **config(kind, servers)})
    b: Backend = factory(cfg, BackendContext())
    if kind == AIOHTTP:
        assert b._pool is not None  # type: ignore[attr-defined]
        b._pool = None  # type: ignore[attr-defined]
    await b.start()
    try:
        yield b
    finally:
        await b.close()
        await b.context.close()  # type: ignore[attr-defined]


def chat(backend: Backend, stream: bool = False) -> BackendCall:
    """A call as the gateway makes it: ``model`` set to the backend's own."""
    body: dict[str, Any] = {"model": backend.model, "max_tokens": 4,
                            "messages": [{"role": "user", "content": "Name a colour."}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return BackendCall("chat", body, "req-contract", stream=stream)


async def test_call_returns_an_openai_body_and_usage(backend: Backend) -> None:
    meter = Meter()
    result = await backend.call(chat(backend), meter)
    choice = result.body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert result.body["object"] == "chat.completion"
    assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 4
    assert backend.cost_usd(result.usage, busy_s=0.5) == pytest.approx(
        expected_cost(backend, result.usage, 0.5), rel=1e-9, abs=0)


async def test_stream_yields_chunks_and_sets_usage(backend: Backend) -> None:
    meter = Meter()
    chunks = [c async for c in backend.stream(chat(backend, stream=True), meter)]
    text = "".join((c["choices"][0].get("delta") or {}).get("content") or ""
                   for c in chunks if c.get("choices"))
    assert text
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert meter.usage is not None and 0 < meter.usage.completion_tokens <= 4
    assert meter.usage.prompt_tokens > 0


async def test_count_tokens_and_cost(backend: Backend) -> None:
    assert backend.count_tokens(chat(backend)) > 0
    meter = Meter()
    result = await backend.call(chat(backend), meter)
    cost = backend.cost_usd(result.usage, busy_s=1.0)
    assert cost == pytest.approx(expected_cost(backend, result.usage, 1.0), rel=1e-9, abs=0)
    if backend.name == "contract-llamacpp":
        assert cost == 0.0  # a free backend
    else:
        assert cost > 0  # a priced one: every priced kind bills this call
    pin, pout, _ = prices(backend.name.removeprefix("contract-"))
    assert backend.price_per_token() == pytest.approx((pin, pout), rel=1e-9, abs=0)
