"""The rest of the OpenAI surface and the operator endpoints, end to end: legacy completions
with logprobs, embeddings, /v1/models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import numpy as np
import pytest
from http_helpers import json_events, request_id, sse_events

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


def test_legacy_completion(client):
    out = client.completions.create(model="auto", prompt=PROMPT, max_tokens=4, temperature=0)
    assert out.object == "text_completion"
    assert out.choices[0].text.startswith(" Paris")
    assert out.choices[0].finish_reason == "length"  # the model goes on past 4 tokens
    assert out.usage.completion_tokens == 4
    single = client.completions.create(model="auto", prompt=[PROMPT], max_tokens=4, temperature=0)
    assert single.choices[0].text == out.choices[0].text


def test_legacy_completion_stream(embedded_server):
    body = {"model": "auto", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    plain = httpx.post(embedded_server.url + "/v1/completions", json=body, timeout=120).json()
    events = sse_events(embedded_server.url, "/v1/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = json_events(events)
    # greedy: the streamed pieces join to the plain answer, and end the same way
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == plain["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert not any(c.get("usage") for c in chunks)


def test_legacy_completion_logprobs_are_right(client):
    """The token log-probabilities match a direct evaluation of the model with llama.cpp."""
    from llama_cpp import Llama

    from plugins.llamacpp import smollm2_path

    out = client.completions.create(model="auto", prompt=PROMPT, max_tokens=4, temperature=0,
                                    logprobs=2)
    lp = out.choices[0].logprobs
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset[0] == len(PROMPT)
    for tok, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert len(top) >= 2 and tok in top

    llm = Llama(model_path=str(smollm2_path()), n_ctx=256, logits_all=True, verbose=False)
    try:
        prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
        generated = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in lp.tokens]
        assert all(len(g) == 1 for g in generated)
        llm.eval(prompt)  # then one token at a time, as decoding does (a batch rounds differently)
        for (g,) in generated[:-1]:
            llm.eval([g])
        for i, (g,) in enumerate(generated):
            logits = np.asarray(llm.scores[len(prompt) - 1 + i], dtype=np.float64)
            logsm = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
            assert lp.token_logprobs[i] == pytest.approx(logsm[g], abs=1e-3)
            assert int(np.argmax(logits)) == g  # temperature 0 took the likeliest token
    finally:
        llm.close()


def test_embeddings_float_base64_and_lists(client):
    one = client.embeddings.create(model="minilm", input="hello world")
    (item,) = one.data
    assert len(item.embedding) == 384
    assert math.isclose(sum(x * x for x in item.embedding), 1.0, rel_tol=1e-4)
    assert one.usage.prompt_tokens > 0
    assert one.model == "all-MiniLM-L6-v2"

    many = client.embeddings.create(model="all-MiniLM-L6-v2",
                                    input=["hello world", "a cat", "the stock market fell",
                                           "a small kitten"])
    assert [d.index for d in many.data] == [0, 1, 2, 3]
    vecs = np.array([d.embedding for d in many.data])
    assert vecs.shape == (4, 384)
    assert np.allclose(vecs[0], item.embedding, atol=1e-5)
    # meaning, not spelling: of all the pairs, the cat and the kitten are the closest
    sims = {(i, j): float(vecs[i] @ vecs[j]) for i in range(4) for j in range(i + 1, 4)}
    assert max(sims, key=sims.__getitem__) == (1, 3), sims

    # the SDK asks for base64 by default when it can decode with numpy; ask explicitly too
    raw = client.embeddings.with_raw_response.create(model="minilm", input="hello world",
                                                     encoding_format="base64")
    b64 = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(b64, str)
    decoded = struct.unpack("<384f", base64.b64decode(b64))
    assert np.allclose(decoded, item.embedding, atol=1e-6)
    assert raw.headers["x-switchyard-backend"] == "minilm"

    short = client.embeddings.create(model="minilm", input="hello world", dimensions=64)
    assert len(short.data[0].embedding) == 64


def test_models_lists_routes_backends_and_model_ids(client):
    models = {m.id: m for m in client.models.list()}
    assert {"auto", "local-smol", "smollm2-135m-instruct", "minilm", "all-MiniLM-L6-v2"} <= set(models)
    assert all(m.object == "model" and m.owned_by == "switchyard" for m in models.values())
    assert models["auto"].switchyard["kind"] == "route"
    assert models["auto"].switchyard["backends"] == ["local-smol"]
    assert models["minilm"].switchyard["endpoints"] == ["embeddings"]
    assert "chat" in models["smollm2-135m-instruct"].switchyard["endpoints"]


def test_healthz_and_readyz(embedded_server):
    h = httpx.get(embedded_server.url + "/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    r = httpx.get(embedded_server.url + "/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert set(body["backends"]) == {"local-smol", "minilm"}
    for b in body["backends"].values():
        assert b["breaker"] == "closed"


def test_metrics_after_requests(client, embedded_server):
    """Each counter moves by exactly what the two requests did (the server is shared by the
    session, so this compares /metrics before and after)."""

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = httpx.get(embedded_server.url + "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return _parse(r.text)

    before = scrape()
    rid = request_id()
    chat = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        extra_headers={"x-request-id": rid})
    usage = chat.parse().usage
    emb = client.embeddings.create(model="minilm", input="hi")
    samples = scrape()

    def moved(name: str, **labels: str) -> float:
        def value(s: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
            return sum(v for (n, lbl), v in s.items()
                       if n == name and all(dict(lbl).get(k) == x for k, x in labels.items()))
        return value(samples) - value(before)

    assert moved("switchyard_requests_total", backend="local-smol", status="200") == 1
    assert moved("switchyard_requests_total", backend="minilm", status="200") == 1
    assert moved("switchyard_tokens_total", backend="local-smol", kind="prompt") == usage.prompt_tokens
    assert moved("switchyard_tokens_total", backend="local-smol", kind="completion") == usage.completion_tokens
    assert moved("switchyard_tokens_total", backend="minilm", kind="prompt") == emb.usage.prompt_tokens
    assert moved("switchyard_energy_joules_total", backend="local-smol") == pytest.approx(
        float(chat.headers["x-switchyard-energy-joules"]), abs=1e-3)
    assert moved("switchyard_cost_usd_total", backend="local-smol") == 0.0  # a free backend
    assert moved("switchyard_request_latency_seconds_count", backend="local-smol") == 1
    assert ("switchyard_backend_queue_depth", (("backend", "local-smol"),)) in samples


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
