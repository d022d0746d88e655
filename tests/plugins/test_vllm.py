"""The vllm backend against the fake vLLM server (tests/fakes/fake_vllm.py) on real uvicorn:
chat through the gateway, and the engine's load read from its /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.fake_vllm import FakeVLLM, assert_context_length_exceeded
from fakes.harness import gateway, sdk, upstream_server
from support import LiveServer, wait_until

from gateway import BackendContext, BackendLoad
from plugins.vllm import VLLMBackend, VLLMConfig

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
INTERVAL = 0.1


@pytest.fixture
def fake() -> Iterator[tuple[FakeVLLM, LiveServer]]:
    f = FakeVLLM(MODEL)
    with upstream_server(f.app) as srv:
        yield f, srv


async def wait_for(backend: VLLMBackend, ok: Callable[[BackendLoad], bool],
                   timeout: float = 30.0) -> BackendLoad:
    """The load once ``ok`` holds (polled every scrape interval; ``timeout`` is only a
    safety net for a loaded machine)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not ok(load := backend.load()):
        assert time.monotonic() < deadline, f"the scraped load never got there: {load}"
        await asyncio.sleep(INTERVAL)
    return load


def make_backend(url: str) -> VLLMBackend:
    cfg = VLLMConfig(name="gpu", plugin="vllm", base_url=url + "/v1", model=MODEL,
                     scrape_interval_s=INTERVAL)
    return VLLMBackend(cfg, BackendContext())


async def test_load_is_scraped_and_follows_the_engine(fake: tuple[FakeVLLM, LiveServer]) -> None:
    f, srv = fake
    f.set_load(waiting=4, running=9, kv_cache=0.37)
    f.observe_ttft(0.2, 0.4)
    b = make_backend(srv.url)
    await b.start()
    try:
        load = await wait_for(b, lambda ld: ld.scraped_at is not None)
        assert (load.queue_depth, load.running, load.kv_cache_usage) == (4, 9, 0.37)
        assert load.ttft_s == pytest.approx(0.3)
        f.set_load(waiting=12, running=16, kv_cache=0.91)
        load = await wait_for(b, lambda ld: ld.queue_depth == 12)
        assert (load.queue_depth, load.running, load.kv_cache_usage) == (12, 16, 0.91)
    finally:
        await b.close()
        await b.context.close()


async def test_ttft_is_the_mean_of_the_last_interval(fake: tuple[FakeVLLM, LiveServer]) -> None:
    f, srv = fake
    f.observe_ttft(*[0.05] * 98)  # a long quiet past
    b = make_backend(srv.url)
    try:
        assert (await b.scrape()).ttft_s == pytest.approx(0.05)
        f.observe_ttft(2.0, 4.0)  # the engine is now slow
        assert (await b.scrape()).ttft_s == pytest.approx(3.0)  # all-time mean would be ~0.11
        assert (await b.scrape()).ttft_s == pytest.approx(3.0)  # no new request: it stands
        f.observe_ttft(0.5)
        assert (await b.scrape()).ttft_s == pytest.approx(0.5)
    finally:
        await b.context.close()


async def test_the_older_kv_cache_name_works() -> None:
    f = FakeVLLM(MODEL, legacy_cache_metric=True)
    f.set_load(waiting=1, running=2, kv_cache=0.66)
    with upstream_server(f.app) as srv:
        b = make_backend(srv.url)
        try:
            load = await b.scrape()
        finally:
            await b.context.close()
    assert load.kv_cache_usage == 0.66


async def test_other_models_on_the_same_server_are_not_counted() -> None:
    f = FakeVLLM("another/model")
    f.set_load(waiting=30, running=30, kv_cache=0.9)
    with upstream_server(f.app) as srv:
        b = make_backend(srv.url)
        try:
            load = await b.scrape()
        finally:
            await b.context.close()
    assert (load.queue_depth, load.running, load.kv_cache_usage) == (0, 0, None)


def test_chat_through_the_gateway(tmp_path: Path, fake: tuple[FakeVLLM, LiveServer]) -> None:
    f, srv = fake
    cfg: dict[str, Any] = {"name": "gpu", "plugin": "vllm", "base_url": srv.url + "/v1",
                           "model": MODEL, "scrape_interval_s": INTERVAL}
    with gateway(tmp_path, cfg) as gw, sdk(gw.url) as c:
        r = c.chat.completions.with_raw_response.create(
            model="gpu", messages=[{"role": "user", "content": "hi there"}], max_tokens=5)
        out = r.parse()
        assert out.choices[0].message.content == "The quick brown fox jumps"
        assert out.choices[0].finish_reason == "length"  # max_tokens cut the engine's reply
        assert r.headers["x-switchyard-completion-tokens"] == "5"
        assert float(r.headers["x-switchyard-cost-usd"]) == 0.0  # no pricing: a free backend
        assert int(r.headers["x-switchyard-prompt-tokens"]) == out.usage.prompt_tokens > 0
        chunks = list(c.chat.completions.create(
            model="gpu", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            stream_options={"include_usage": True}))
        pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices]
        assert "".join(p or "" for p in pieces) == "The quick brown fox"
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        f.set_load(waiting=7)  # the gateway's own /metrics shows the engine's queue
        line = 'switchyard_backend_queue_depth{backend="gpu"} 7.0'
        wait_until(lambda: line in httpx.get(gw.url + "/metrics").text, what=line,
                   interval=INTERVAL)


async def test_the_running_time_of_the_last_interval_is_read(
        fake: tuple[FakeVLLM, LiveServer]) -> None:
    """vllm:request_inference_time_seconds: what a waiting request waits for per slot."""
    f, srv = fake
    f.observe_inference(*[0.4] * 50)
    b = make_backend(srv.url)
    try:
        assert (await b.scrape()).request_s == pytest.approx(0.4)
        f.observe_inference(6.0, 10.0)  # long generations now
        assert (await b.scrape()).request_s == pytest.approx(8.0)
        assert (await b.scrape()).request_s == pytest.approx(8.0)
    finally:
        await b.context.close()


def test_a_queue_behind_long_requests_is_predicted_long() -> None:
    """Waiting requests wait for the running ones (the engine's recent running time), not
    for as long as the new request itself would run."""
    from gateway import Candidate, RequestFeatures, estimate

    r = RequestFeatures(endpoint="chat", requested="m", prompt_tokens=100, max_tokens=1)
    busy = BackendLoad(queue_depth=8, running=2, kv_cache_usage=0.1, request_s=3.0)
    idle = BackendLoad(running=0, kv_cache_usage=0.0, request_s=3.0)
    c = Candidate.make("v", ttft_s=0.2)
    assert estimate(r, c).ttft_s == pytest.approx(0.2)
    assert estimate(r, Candidate.make("v", ttft_s=0.2, load=idle)).ttft_s == pytest.approx(0.2)
    assert estimate(r, Candidate.make("v", ttft_s=0.2, load=busy)).ttft_s == \
        pytest.approx(0.2 + 8 * 3.0 / 2)


async def test_errors_are_vllms(tmp_path: Path) -> None:
    """Through the gateway: a prompt past max_model_len is OpenAI's context_length_exceeded
    (400), streamed or not; a backend configured with a model the server does not have is
    the gateway's 502, with vLLM's message."""
    import openai

    f = FakeVLLM(MODEL, max_model_len=64)
    with upstream_server(f.app) as srv:
        ok = {"name": "gpu", "plugin": "vllm", "base_url": srv.url + "/v1", "model": MODEL}
        wrong = {**ok, "name": "typo", "model": "no/such-model"}
        with gateway(tmp_path, ok, wrong) as gw, sdk(gw.url) as c:
            long = [{"role": "user", "content": "word " * 100}]
            assert_context_length_exceeded(c, "gpu", long, 64, max_tokens=4)
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(model="typo", messages=[{"role": "user",
                                                                   "content": "hi"}])
            assert e.value.status_code == 502
            assert "`no/such-model` does not exist" in e.value.body["message"]


def test_the_launch_command_line() -> None:
    from pydantic import ValidationError

    from plugins.vllm import launch_argv

    cfg = VLLMConfig(name="gpu", plugin="vllm", base_url="http://127.0.0.1:8123/v1",
                     model="llama-8b", launch={"model": "/models/llama", "python": "/opt/v/python",
                                               "args": ["--max-model-len", "8192"]})
    assert launch_argv(cfg) == [
        "/opt/v/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/llama",
        "--served-model-name", "llama-8b", "--host", "127.0.0.1", "--port", "8123",
        "--max-model-len", "8192"]
    with pytest.raises(ValidationError, match="needs a host and a port"):
        VLLMConfig(name="gpu", plugin="vllm", base_url="http://gpu.internal/v1", model="m",
                   launch={})
    with pytest.raises(ValidationError, match="launch.ready_timeout_s"):
        VLLMConfig(name="gpu", plugin="vllm", base_url="http://127.0.0.1:1/v1", model="m",
                   launch={"ready_timeout_s": 0})
