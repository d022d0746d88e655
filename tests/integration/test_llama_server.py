"""A real ``python -m llama_cpp.server`` process (SmolLM2-135M) behind the gateway as an
``openai_compatible`` backend, the gateway on real uvicorn, the official openai SDK as client."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.harness import gateway, sdk
from support import free_port

from plugins.llamacpp import smollm2_path

pytestmark = pytest.mark.slow
MSG = [{"role": "user", "content": "Count from one to ten."}]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's base URL (``.../v1``); the process is always terminated."""
    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("llama_cpp.server did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def client(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cfg = {"name": "llama-server", "plugin": "openai_compatible", "base_url": llama_server,
           "model": "smollm2", "pricing": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}}
    with gateway(Path(tmp_path_factory.mktemp("gw")), cfg) as gw, sdk(gw.url, timeout=120) as c:
        yield c


def test_chat_non_streaming_with_accounting(client: Any) -> None:
    r = client.chat.completions.with_raw_response.create(model="llama-server", messages=MSG,
                                                         max_tokens=8, temperature=0)
    out = r.parse()
    assert out.choices[0].message.content
    h = r.headers
    assert h["x-switchyard-backend"] == "llama-server"
    assert int(h["x-switchyard-bytes-sent"]) > 0 and int(h["x-switchyard-bytes-received"]) > 0
    assert int(h["x-switchyard-prompt-tokens"]) == out.usage.prompt_tokens > 0
    assert int(h["x-switchyard-completion-tokens"]) == out.usage.completion_tokens > 0
    assert float(h["x-switchyard-cost-usd"]) > 0


def test_chat_streams_chunk_by_chunk(client: Any) -> None:
    stream = client.chat.completions.create(model="llama-server", messages=MSG, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)  # the SDK raises if the stream ends with an error event
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3  # relayed token by token, not as one buffered block
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    # llama_cpp.server ignores stream_options.include_usage; the gateway still ends the
    # stream with the usage chunk the client asked for, counting the relayed tokens
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(pieces)
    assert chunks[-1].usage.prompt_tokens > 0


def test_legacy_completions(client: Any) -> None:
    r = client.completions.with_raw_response.create(model="llama-server",
                                                    prompt="The capital of France is",
                                                    max_tokens=6, temperature=0)
    out = r.parse()
    assert out.choices[0].text
    assert int(r.headers["x-switchyard-completion-tokens"]) == out.usage.completion_tokens > 0
    assert int(r.headers["x-switchyard-bytes-received"]) > 0
