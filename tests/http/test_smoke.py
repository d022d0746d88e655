"""End to end with the official openai SDK against the embedded default on real uvicorn."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_chat_non_streaming(client):
    r = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
    )
    out = r.parse()
    assert out.choices[0].message.content
    assert 1 <= out.usage.completion_tokens <= 8
    assert r.headers["x-switchyard-backend"] == "local-smol"
    assert int(r.headers["x-switchyard-completion-tokens"]) == out.usage.completion_tokens
    assert float(r.headers["x-switchyard-cost-usd"]) == 0.0  # the local model is free
    assert float(r.headers["x-switchyard-energy-joules"]) > 0


def test_chat_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Count to five"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 8
