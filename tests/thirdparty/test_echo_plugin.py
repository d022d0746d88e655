"""A third-party plugin, installed from its own package (this directory, by the Makefile),
is found through its entry point and serves requests through the official openai SDK."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import openai
import pytest
import uvicorn
from support import serve

from gateway import hookimpl
from gateway.http.app import create_app
from gateway.registry import build_registry


def test_the_package_is_installed_with_an_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="switchyard") if ep.name == "echo"]
    assert ep.value == "switchyard_echo"
    assert ep.dist is not None and ep.dist.name == "switchyard-echo"


def test_it_is_discovered_as_a_user_plugin() -> None:
    entry = build_registry().backends["echo"]
    assert entry.source == "echo" and not entry.builtin
    _factory, model = entry.value
    assert model.__module__ == "switchyard_echo"


@pytest.fixture
def echo_client(settings_factory: Any) -> Iterator[Any]:
    settings = settings_factory(
        backends=[{"name": "parrot", "plugin": "echo", "prefix": "you said: ",
                   "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}],
        routes=[{"name": "auto", "backends": ["parrot"]}],
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # real uvicorn on loopback, as a user would run it
        assert thread.is_alive(), "the gateway did not start"
        time.sleep(0.02)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                           max_retries=0, timeout=30)
    yield client
    client.close()
    server.should_exit = True
    thread.join(timeout=30)


def test_a_gateway_serves_the_echo_backend(echo_client: Any) -> None:
    raw = echo_client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "first"},
                                {"role": "assistant", "content": "ok"},
                                {"role": "user", "content": "hello there"}],
    )
    out = raw.parse()
    assert out.choices[0].message.content == "you said: hello there"
    assert out.usage.completion_tokens == 4
    assert raw.headers["x-switchyard-backend"] == "parrot"
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0


def test_the_echo_backend_streams_word_by_word(echo_client: Any) -> None:
    chunks = list(echo_client.chat.completions.create(
        model="parrot", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True},
    ))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["you", " said:", " one", " two", " three"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_a_failing_observer_never_breaks_a_request(settings_factory: Any) -> None:
    seen: list[str] = []

    class Broken:
        @hookimpl
        def switchyard_request_recorded(self, record: Any) -> None:
            seen.append(record.request_id)
            raise RuntimeError("observer bug")

    settings = settings_factory(
        backends=[{"name": "parrot", "plugin": "echo"}],
        routes=[{"name": "auto", "backends": ["parrot"]}],
    )
    with serve(create_app(settings, extra_plugins=[Broken()])) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        out = c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content.endswith("hi")
        assert len(seen) == 1
