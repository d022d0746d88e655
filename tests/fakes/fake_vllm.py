"""A FAKE vLLM server: it is not vLLM and runs no model.

vLLM needs a GPU and cannot run on CI, so this ASGI app stands in for ``vllm serve`` and
mirrors what the real server (V1 engine, vLLM 0.10/0.11 series) puts on the wire:

* ``POST /v1/chat/completions``: the non-streaming body as vLLM's ``ChatCompletionResponse``
  dumps it (``stop_reason``, ``prompt_logprobs``, ``kv_transfer_params`` and the other fields
  vLLM adds), and the SSE stream as vLLM's ``serving_chat`` writes it: a first chunk whose
  delta is ``{"role": "assistant", "content": ""}``, one chunk per token, a last chunk with
  ``finish_reason`` and ``stop_reason``, then, when ``stream_options.include_usage`` is set,
  a chunk with ``"choices": []`` and ``usage`` (fields in vLLM's order: ``prompt_tokens``,
  ``total_tokens``, ``completion_tokens``), then ``data: [DONE]``. Each event is
  ``data: <json>\\n\\n``, the JSON dumped with ``exclude_unset`` as vLLM does.
* ``GET /metrics``: Prometheus text made by ``prometheus_client`` exactly as vLLM's
  ``PrometheusStatLogger`` makes it: the same metric names, HELP strings, histogram buckets
  and label names (``model_name``, ``engine``); among them ``vllm:num_requests_waiting``,
  ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``, the deprecated
  ``vllm:gpu_cache_usage_perc``, and the histograms ``vllm:time_to_first_token_seconds``,
  ``vllm:inter_token_latency_seconds``, ``vllm:e2e_request_latency_seconds``.
* ``GET /v1/models`` and ``GET /health``.

The engine's load is set by the test: ``set_load(waiting=, running=, kv_cache=)`` and
``observe_ttft(*seconds)``. ``legacy_cache_metric=True`` serves only the old KV-cache name.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
REPLY = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "vLLM", "serves", "tokens"]


class FakeVLLM:
    def __init__(self, model: str = "meta-llama/Llama-3.1-8B-Instruct",
                 legacy_cache_metric: bool = False) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        lv = (model, "0")
        r = self.registry
        self.running = Gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.", labels,
                             registry=r).labels(*lv)
        self.waiting = Gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.", labels,
                             registry=r).labels(*lv)
        self.gpu_cache = Gauge("vllm:gpu_cache_usage_perc",
                               "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use "
                               "vllm:kv_cache_usage_perc instead.", labels, registry=r).labels(*lv)
        self.kv_cache = None if legacy_cache_metric else Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels,
            registry=r).labels(*lv)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, registry=r).labels(*lv)
        self.generation_tokens = Counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.", labels,
                                         registry=r).labels(*lv)
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", labels,
                              buckets=TTFT_BUCKETS, registry=r).labels(*lv)
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", labels,
                             buckets=ITL_BUCKETS, registry=r).labels(*lv)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.", labels,
                             buckets=E2E_BUCKETS, registry=r).labels(*lv)
        self.app = Starlette(routes=[
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
        ])

    # ---- what the test sets ------------------------------------------------------

    def set_load(self, *, waiting: int = 0, running: int = 0, kv_cache: float = 0.0) -> None:
        self.waiting.set(waiting)
        self.running.set(running)
        self.gpu_cache.set(kv_cache)
        if self.kv_cache is not None:
            self.kv_cache.set(kv_cache)

    def observe_ttft(self, *seconds: float) -> None:
        for s in seconds:
            self.ttft.observe(s)

    # ---- endpoints -----------------------------------------------------------------

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _health(self, request: Request) -> Response:
        return Response(b"", 200)

    async def _models(self, request: Request) -> Response:
        card = {"id": self.model, "object": "model", "created": int(time.time()),
                "owned_by": "vllm", "root": self.model, "parent": None, "max_model_len": 4096,
                "permission": []}
        return _json({"object": "list", "data": [card]})

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body.get("model") != self.model:
            msg = f"The model `{body.get('model')}` does not exist."
            return _json({"object": "error", "message": msg, "type": "NotFoundError",
                          "param": None, "code": 404}, 404)
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        tokens = [t if i == 0 else " " + t for i, t in enumerate(REPLY[: max(1, n)])]
        prompt = sum(len(str(m.get("content") or "").split()) + 5 for m in body["messages"]) + 1
        finish = "length" if n < len(REPLY) else "stop"
        if body.get("stream"):
            return StreamingResponse(self._events(body, tokens, prompt, finish),
                                     media_type="text/event-stream")
        t0 = time.perf_counter()
        self._account(prompt, len(tokens), t0)
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + len(tokens),
                 "completion_tokens": len(tokens), "prompt_tokens_details": None}
        message = {"role": "assistant", "reasoning_content": None, "content": "".join(tokens),
                   "tool_calls": []}
        return _json({
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish, "stop_reason": None}],
            "service_tier": None, "system_fingerprint": None, "usage": usage,
            "prompt_logprobs": None, "kv_transfer_params": None,
        })

    async def _events(self, body: dict[str, Any], tokens: list[str], prompt: int,
                      finish: str) -> AsyncIterator[bytes]:
        t0 = time.perf_counter()
        head = {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None,
                  last: bool = False) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish_reason}
            if last:
                choice["stop_reason"] = None
            return _sse({**head, "choices": [choice]})

        yield chunk({"role": "assistant", "content": ""})
        for i, tok in enumerate(tokens):
            await asyncio.sleep(0.002)
            if i == len(tokens) - 1:
                yield chunk({"content": tok}, finish, last=True)
            else:
                yield chunk({"content": tok})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt, "total_tokens": prompt + len(tokens),
                     "completion_tokens": len(tokens)}
            yield _sse({**head, "choices": [], "usage": usage})
        self._account(prompt, len(tokens), t0)
        yield b"data: [DONE]\n\n"

    def _account(self, prompt: int, completion: int, t0: float) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)
        self.e2e.observe(time.perf_counter() - t0)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
