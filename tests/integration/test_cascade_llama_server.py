"""A cascade whose first stage is a real ``python -m llama_cpp.server`` (SmolLM2-135M) behind
the ``openai_compatible`` backend: the gateway asks that server for logprobs
(``logprobs: true, top_logprobs: 0``: llama-cpp-python's server returns none without the
second), the ``logprob`` judge scores them, the client never sees them; the recording
upstream is the second stage. The gateway on real uvicorn, the official openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.harness import sdk
from fakes.openai_upstream import REPLY, RecordingUpstream
from support import make_settings, serve
from test_llama_server import llama_server  # noqa: F401 - the server process, as a fixture

from gateway.http.app import create_app

pytestmark = pytest.mark.slow
MSG = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def client(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:  # noqa: F811
    up = RecordingUpstream("big-model")
    with serve(up.app) as upstream:
        backends = [
            {"name": "llama-server", "plugin": "openai_compatible", "base_url": llama_server,
             "model": "smollm2", "pricing": {"output_per_mtok": 0.2}},
            {"name": "big", "plugin": "openai_compatible", "base_url": upstream.url + "/v1",
             "model": "big-model", "pricing": {"output_per_mtok": 1000}}]
        cascade = {"stages": ["llama-server", "big"], "judge": "logprob"}
        routes = [{"name": "lenient", "cascade": {**cascade, "judge_options": {"threshold": 0.01}}},
                  {"name": "strict", "cascade": {**cascade, "judge_options": {"threshold": 0.99}}}]
        settings = make_settings(Path(tmp_path_factory.mktemp("gw")), backends=backends,
                                 routes=routes)
        with serve(create_app(settings)) as gw, sdk(gw.url, timeout=120) as c:
            c.upstream = up
            yield c


def _ask(client: Any, route: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=route, messages=MSG, max_tokens=12, temperature=0)


def test_the_server_returns_logprobs_for_the_judge_and_the_client_gets_none(client: Any) -> None:
    raw = _ask(client, "lenient")
    out, chain = raw.parse(), raw.headers["x-switchyard-cascade"]
    assert raw.headers["x-switchyard-backend"] == "llama-server"
    backend, score, outcome = chain.split(";")
    assert backend == "llama-server" and outcome == "accepted"
    assert 0.01 <= float(score.removeprefix("score=")) <= 1.0, "scored from real logprobs"
    assert out.choices[0].message.content and out.choices[0].logprobs is None
    assert client.upstream.requests == []


def test_an_answer_under_the_threshold_escalates(client: Any) -> None:
    raw = _ask(client, "strict")
    assert raw.headers["x-switchyard-backend"] == "big"
    assert raw.headers["x-switchyard-cascade"].endswith(";rejected, big;answered")
    assert raw.parse().choices[0].message.content == " ".join(REPLY.split()[:12])
