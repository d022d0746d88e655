"""A LiteLLM proxy config whose deployments are local servers, imported with
``switchyard import-litellm`` and served: the official openai SDK calls the same model names
it called on LiteLLM (chat through a load-balanced group, an alias, a ``hosted_vllm``
deployment, a fallback; embeddings from a real MiniLM server), and the requests arrive at the
deployments LiteLLM would have used, with the key from the variable the LiteLLM file named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes.fake_vllm import REPLY as VLLM_REPLY
from fakes.fake_vllm import FakeVLLM
from fakes.harness import sdk
from fakes.openai_upstream import REPLY, RecordingUpstream
from support import free_port, make_settings, serve

from gateway.cli import main
from gateway.config import load_settings

KEY = "sk-upstream-from-env-7d3a"

LITELLM_CONFIG = """
model_list:
  - model_name: team-model
    litellm_params:
      model: openai/upstream-model
      api_base: http://127.0.0.1:{a}/v1
      api_key: os.environ/UPSTREAM_KEY
  - model_name: team-model
    litellm_params:
      model: openai/upstream-model
      api_base: http://127.0.0.1:{b}/v1
      api_key: os.environ/UPSTREAM_KEY
  - model_name: llama
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://127.0.0.1:{v}/v1
  - model_name: embedder
    litellm_params:
      model: openai/all-MiniLM-L6-v2
      api_base: http://127.0.0.1:{e}/v1
    model_info:
      mode: embedding
  - model_name: broken
    litellm_params:
      model: openai/upstream-model
      api_base: http://127.0.0.1:{closed}/v1
router_settings:
  routing_strategy: least-busy
  fallbacks: [{{"broken": ["team-model"]}}]
  model_group_alias: {{"gpt-4": "team-model"}}
"""


def chat(client: Any, model: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8)
    return raw.parse().choices[0].message.content, raw.headers["x-switchyard-backend"]


@pytest.mark.slow  # MiniLM loads for the embedding deployment
def test_the_sdk_calls_the_litellm_model_names_on_the_imported_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.http.app import create_app

    a, b, vllm = RecordingUpstream(), RecordingUpstream(), FakeVLLM()
    # a real embedding server: another gateway serving MiniLM on /v1/embeddings
    minilm = create_app(make_settings(tmp_path / "emb", backends=[
        {"name": "minilm", "plugin": "sentence_transformers"}]))
    with serve(a.app) as sa, serve(b.app) as sb, serve(vllm.app) as sv, serve(minilm) as se:
        src = tmp_path / "litellm.yaml"
        src.write_text(LITELLM_CONFIG.format(a=sa.port, b=sb.port, v=sv.port, e=se.port,
                                             closed=free_port()))
        out = tmp_path / "switchyard.yaml"
        assert main(["import-litellm", str(src), "-o", str(out)]) == 0
        monkeypatch.setenv("UPSTREAM_KEY", KEY)
        assert main(["check-config", str(out)]) == 0
        capsys.readouterr()
        assert KEY not in out.read_text()  # a reference to the variable, never its value
        assert "# team-model: LiteLLM routing_strategy least-busy -> policy latency" \
            in out.read_text()

        settings = load_settings(out, ledger={"path": str(tmp_path / "ledger.sqlite3")})
        with serve(create_app(settings)) as gw:
            client = sdk(gw.url)
            # load balancing: the group's two deployments, both called under the SDK's name
            served = {chat(client, "team-model")[1] for _ in range(6)}
            assert served <= {"team-model@1", "team-model@2"}
            text, backend = chat(client, "gpt-4")  # LiteLLM's model_group_alias
            assert text and REPLY.startswith(text) and backend in ("team-model@1", "team-model@2")
            text, backend = chat(client, "llama")  # hosted_vllm -> the vllm backend
            assert text.startswith(VLLM_REPLY[0]) and backend == "llama@1"
            text, backend = chat(client, "broken")  # down: LiteLLM's fallback answers
            assert text and REPLY.startswith(text) and backend in ("team-model@1", "team-model@2")
            emb = client.embeddings.create(model="embedder", input=["a cat", "a kitten"])
            assert [len(d.embedding) for d in emb.data] == [384, 384]  # MiniLM's vectors
            client.close()

    recorded = a.requests + b.requests
    assert len(recorded) == 8
    assert all(r.body["model"] == "upstream-model" for r in recorded)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in recorded)
