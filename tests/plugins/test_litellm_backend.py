"""The litellm backend, with no outside traffic: litellm's OpenAI provider is pointed at a
recording OpenAI-compatible upstream on loopback. Prices come from litellm's own cost map."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.harness import KEY, gateway, sdk, upstream_server
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer

MSG = [{"role": "user", "content": "Say hello"}]
# litellm's stream types warn while pydantic first builds them; tests run warnings as errors
LITELLM_WARNING = "ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"
pytestmark = pytest.mark.filterwarnings(LITELLM_WARNING)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RecordingUpstream, LiveServer]]:
    rec = RecordingUpstream(model="gpt-4o-mini")
    with upstream_server(rec.app) as srv:
        yield rec, srv


@pytest.fixture
def rec(upstream: tuple[RecordingUpstream, LiveServer]) -> Iterator[RecordingUpstream]:
    upstream[0].reset()
    yield upstream[0]
    upstream[0].reset()


@pytest.fixture
def client(tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> Iterator[Any]:
    cfg = {"name": "mini", "plugin": "litellm", "model": "openai/gpt-4o-mini",
           "api_base": upstream[1].url + "/v1", "api_key": KEY}
    # no gateway retries here, so the upstream count shows litellm did not retry on its own
    with gateway(tmp_path, cfg, health={"retry": {"retries": 0}}) as gw, sdk(gw.url) as c:
        yield c


def litellm_price() -> tuple[float, float]:
    import litellm

    info = litellm.model_cost["gpt-4o-mini"]
    return float(info["input_cost_per_token"]), float(info["output_cost_per_token"])


def test_chat_cost_comes_from_litellms_cost_map(client: Any, rec: RecordingUpstream) -> None:
    rec.behave("ok", usage=(1200, 345))
    r = client.chat.completions.with_raw_response.create(
        model="mini", messages=MSG, max_tokens=4, user="user-1234", extra_body={"top_k": 3})
    out = r.parse()
    assert out.choices[0].message.content == "Hello from the recording"
    assert out.choices[0].finish_reason == "length"  # max_tokens cut the upstream's reply
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1200, 345)
    pin, pout = litellm_price()
    assert pin > 0 and pout > 0
    assert float(r.headers["x-switchyard-cost-usd"]) == pytest.approx(1200 * pin + 345 * pout,
                                                                      abs=1e-8)
    sent = rec.last.body
    assert sent["model"] == "gpt-4o-mini" and sent["top_k"] == 3
    assert sent["user"] == "user-1234"
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"


def test_stream_through_litellm(client: Any, rec: RecordingUpstream) -> None:
    chunks = list(client.chat.completions.create(
        model="mini", messages=MSG, max_tokens=5, stream=True,
        stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hello", " from", " the", " recording", " upstream"]
    # one finish reason, the upstream's, on the last chunk with a choice; then the usage
    # chunk with no choice at all, as OpenAI sends it (litellm's carries an empty one)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert rec.last.body["stream"] is True


@pytest.mark.parametrize(("upstream_status", "client_status"), [(429, 503), (400, 400), (500, 502)])
def test_litellm_errors_are_mapped(client: Any, rec: RecordingUpstream, upstream_status: int,
                                   client_status: int) -> None:
    rec.behave("status", status=upstream_status, error_body={"error": {"message": "nope"}})
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="mini", messages=MSG, max_tokens=3)
    assert info.value.status_code == client_status
    assert len(rec.requests) == 1  # litellm's SDK did not retry on its own
    assert KEY not in info.value.response.text


def test_a_client_cannot_redirect_our_key(client: Any, rec: RecordingUpstream) -> None:
    other = RecordingUpstream()
    with upstream_server(other.app) as evil:
        client.chat.completions.create(
            model="mini", messages=MSG, max_tokens=3,
            extra_body={"api_base": evil.url + "/v1", "base_url": evil.url + "/v1",
                        "api_key": "client-chosen"})
    assert other.requests == []
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"
    assert "api_base" not in rec.last.body and "api_key" not in rec.last.body
