"""The openai_compatible backend through the gateway, against a recording upstream on real
uvicorn: what reaches the backend, and how its failures reach the client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.harness import KEY, gateway, sdk, upstream_server
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, free_port

MSG = [{"role": "user", "content": "Say hello"}]
# Happy paths get timeouts a loaded 2-core machine never trips; only the timeout tests use
# SHORT, against an upstream scripted to wait far past it (SLOW_S), so neither can flake.
GENEROUS = {"connect_s": 5.0, "first_token_s": 60.0, "total_s": 120.0}
SHORT = {"connect_s": 5.0, "first_token_s": 2.0, "total_s": 4.0}
SLOW_S = 15.0
PRICES = {"input_per_mtok": 3.0, "output_per_mtok": 7.0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RecordingUpstream, LiveServer]]:
    rec = RecordingUpstream(model="upstream-model")
    with upstream_server(rec.app) as srv:
        yield rec, srv


@pytest.fixture
def rec(upstream: tuple[RecordingUpstream, LiveServer]) -> Iterator[RecordingUpstream]:
    upstream[0].reset()
    yield upstream[0]
    upstream[0].reset()


def backend(base_url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "up", "plugin": "openai_compatible", "base_url": base_url,
            "model": "upstream-model", "api_key": KEY, **kw}


@pytest.fixture
def client(tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> Iterator[Any]:
    with gateway(tmp_path, backend(upstream[1].url + "/v1", timeouts=GENEROUS,
                                   pricing=PRICES)) as gw:
        c = sdk(gw.url)
        yield c
        c.close()


@pytest.fixture
def short_client(tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> Iterator[Any]:
    """A gateway whose backend times out after SHORT: for the timeout tests only."""
    with gateway(tmp_path, backend(upstream[1].url + "/v1", timeouts=SHORT)) as gw:
        c = sdk(gw.url)
        yield c
        c.close()


def test_unknown_fields_and_extra_body_reach_the_backend_unchanged(client: Any, rec: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    out = client.chat.completions.create(
        model="up", messages=MSG, max_tokens=4, user="user-1234",
        extra_body={"guided_json": schema, "repetition_penalty": 1.15, "top_k": 7,
                    "chat_template_kwargs": {"enable_thinking": False}},
    )
    assert out.choices[0].message.content == "Hello from the recording"
    assert out.choices[0].finish_reason == "length"  # max_tokens cut the upstream's reply
    sent = rec.last.body
    assert sent["user"] == "user-1234"
    assert sent["guided_json"] == schema
    assert sent["repetition_penalty"] == 1.15
    assert sent["top_k"] == 7
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["messages"] == MSG and sent["max_tokens"] == 4
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"


def test_gateway_sets_model_to_the_backends_own(client: Any, rec: Any) -> None:
    rec.behave("ok", usage=(1200, 345))
    r = client.chat.completions.with_raw_response.create(model="up", messages=MSG, max_tokens=3)
    assert rec.last.body["model"] == "upstream-model"
    assert r.headers["x-switchyard-backend"] == "up"
    # billed from the usage the upstream reported, at the configured prices
    usage = r.parse().usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (1200, 345)
    expected = (1200 * PRICES["input_per_mtok"] + 345 * PRICES["output_per_mtok"]) / 1e6
    assert float(r.headers["x-switchyard-cost-usd"]) == pytest.approx(expected, abs=1e-8)
    assert expected > 0
    # the model's own name works as well, and is what is sent on
    client.completions.create(model="upstream-model", prompt="Once", max_tokens=3)
    assert rec.last.path == "/v1/completions" and rec.last.body["model"] == "upstream-model"


def test_stream_passes_fields_and_relays_every_chunk(client: Any, rec: Any) -> None:
    stream = client.chat.completions.create(model="up", messages=MSG, max_tokens=6, stream=True,
                                            user="user-5678",
                                            extra_body={"repetition_penalty": 1.3})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hello", " from", " the", " recording", " upstream", " ,"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert rec.last.body["repetition_penalty"] == 1.3 and rec.last.body["stream"] is True
    assert rec.last.body["user"] == "user-5678"


@pytest.mark.parametrize(("upstream_status", "client_error", "client_status"), [
    (400, openai.BadRequestError, 400),
    (422, openai.BadRequestError, 400),
    (500, openai.APIStatusError, 502),
    (429, openai.APIStatusError, 503),
])
def test_upstream_status_maps_to_ours(client: Any, rec: Any, upstream_status: int,
                                      client_error: type[Exception], client_status: int) -> None:
    rec.behave("status", status=upstream_status,
               error_body={"error": {"message": "upstream says no", "type": "x"}})
    with pytest.raises(client_error) as info:
        client.chat.completions.create(model="up", messages=MSG, max_tokens=3)
    assert info.value.status_code == client_status  # type: ignore[attr-defined]
    assert "upstream says no" in str(info.value)


def test_stream_refused_before_first_byte_keeps_the_status(client: Any, rec: Any) -> None:
    rec.behave("status", status=400, error_body={"error": {"message": "bad field"}})
    with pytest.raises(openai.BadRequestError):
        list(client.chat.completions.create(model="up", messages=MSG, max_tokens=3, stream=True))


def test_connection_refused_is_503(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with gateway(tmp_path, backend(dead)) as gw, sdk(gw.url) as c:
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="up", messages=MSG, max_tokens=3)
        assert info.value.status_code == 503
        assert info.value.body["code"] == "backend_unavailable"  # type: ignore[index]


def test_slow_upstream_is_504(short_client: Any, rec: Any) -> None:
    rec.behave("slow", delay_s=SLOW_S)
    with pytest.raises(openai.APIStatusError) as info:
        short_client.chat.completions.create(model="up", messages=MSG, max_tokens=3)
    assert info.value.status_code == 504
    assert info.value.body["code"] == "backend_timeout"  # type: ignore[index]


def test_stream_without_first_token_in_time_is_504(short_client: Any, rec: Any) -> None:
    rec.behave("slow", delay_s=SLOW_S)
    with pytest.raises(openai.APIStatusError) as info:
        list(short_client.chat.completions.create(model="up", messages=MSG, max_tokens=3,
                                                  stream=True))
    assert info.value.status_code == 504
    assert info.value.body["code"] == "backend_timeout"  # type: ignore[index]


@pytest.mark.parametrize("kind", ["break_stream", "stall_stream"])
def test_failure_after_the_stream_started_is_one_error_event(short_client: Any, rec: Any,
                                                             kind: str) -> None:
    """A stream that breaks, or stalls past the read timeout, after its first chunks."""
    rec.behave(kind, chunks=2, delay_s=SLOW_S)
    got: list[str] = []
    stream = short_client.chat.completions.create(model="up", messages=MSG, max_tokens=10,
                                                  stream=True)
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "Hello from"  # what arrived before the failure was relayed
    assert "up" in info.value.message


def test_errors_never_leak_the_key_or_a_traceback(client: Any, rec: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rec.behave("status", status=401, error_body={"error": {
        "message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}})
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="up", messages=MSG, max_tokens=3)
    assert info.value.status_code == 502
    body = info.value.response.text
    assert KEY not in body and "Traceback" not in body and "***" in body
    rec.behave("break_stream", chunks=1)
    with pytest.raises(openai.APIError) as info2:
        list(client.chat.completions.create(model="up", messages=MSG, max_tokens=5, stream=True))
    assert KEY not in str(info2.value.body) and "Traceback" not in str(info2.value.body)
    ours = [r for r in caplog.records if r.name.startswith("switchyard")]
    assert all(KEY not in r.getMessage() and r.exc_info is None for r in ours)
    assert all(KEY not in r.getMessage() for r in caplog.records)
