"""A FAKE vLLM server: it is not vLLM and runs no model.

Most test runs need the vllm backend's wire format in milliseconds, so this ASGI app stands
in for ``vllm serve``. It follows **vLLM 0.32.0** (V1 engine) as the real server puts it on
the wire; tests/integration/test_vllm_real.py runs the real one (the CPU build) and checks
that the two agree on the key sets below, so the fake cannot drift silently:

* ``POST /v1/chat/completions`` and ``POST /v1/completions``: the non-streaming bodies with
  the fields vLLM 0.32 adds (``stop_reason``, ``token_ids``, ``routed_experts`` in a choice;
  ``refusal``, ``annotations``, ``audio``, ``function_call``, ``reasoning`` in a message;
  ``prompt_token_ids``, ``prompt_text``, ``kv_transfer_params``, ``ec_transfer_params``,
  ``metrics`` at the top; ``system_fingerprint`` ``vllm-0.32.0-<hash>``), and the SSE stream:
  a first chat chunk whose delta is ``{"role": "assistant", "content": ""}`` and which carries
  ``prompt_token_ids``/``prompt_text`` at the top, one chunk per token (``token_ids`` in the
  choice), a last chunk with ``finish_reason`` and ``stop_reason``, then, with
  ``stream_options.include_usage``, a chunk with ``"choices": []``, ``usage`` (fields in
  vLLM's order: ``prompt_tokens``, ``total_tokens``, ``completion_tokens``) and
  ``system_fingerprint``, then ``data: [DONE]``. Each event is ``data: <json>\\n\\n``.
* Errors as ``{"error": {"message", "type", "param", "code"}}``: an unknown model is 404
  ``NotFoundError`` (param ``model``), a prompt past ``max_model_len`` 400 ``BadRequestError``
  (param ``input_tokens``), with vLLM's messages.
* ``GET /metrics``: Prometheus text made by ``prometheus_client`` as vLLM's
  ``PrometheusStatLogger`` makes it: the same names, HELP strings, histogram buckets and
  labels (``model_name``, ``engine``): ``vllm:num_requests_waiting``, its split
  ``vllm:num_requests_waiting_by_reason`` (which a reader must not add to it),
  ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc`` (0.32 no longer serves
  ``vllm:gpu_cache_usage_perc``), ``vllm:request_success_total`` and the histograms
  ``vllm:time_to_first_token_seconds``, ``vllm:request_inference_time_seconds``,
  ``vllm:inter_token_latency_seconds``, ``vllm:e2e_request_latency_seconds``.
* ``GET /v1/models`` and ``GET /health``.

The engine's load is set by the test: ``set_load(waiting=, running=, kv_cache=)``,
``observe_ttft(*seconds)`` and ``observe_inference(*seconds)``. ``legacy_cache_metric=True``
serves only the KV-cache name of vLLM before 0.10 (``vllm:gpu_cache_usage_perc``), for the
reader's fallback.
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


FINGERPRINT = "vllm-0.32.0-cdbcec9a"


class FakeVLLM:
    def __init__(self, model: str = "meta-llama/Llama-3.1-8B-Instruct",
                 legacy_cache_metric: bool = False, max_model_len: int = 4096) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.registry = CollectorRegistry()
        labels = ["engine", "model_name"]  # in the order vLLM 0.32 writes them
        lv = ("0", model)
        r = self.registry
        self.running = Gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.", labels,
                             registry=r).labels(*lv)
        self.waiting = Gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.", labels,
                             registry=r).labels(*lv)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
            "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            [*labels, "reason"], registry=r)
        self.waiting_capacity = by_reason.labels(*lv, "capacity")
        by_reason.labels(*lv, "deferred").set(0)
        if legacy_cache_metric:
            self.kv_cache = Gauge("vllm:gpu_cache_usage_perc",
                                  "GPU KV-cache usage. 1 means 100 percent usage.", labels,
                                  registry=r).labels(*lv)
        else:
            self.kv_cache = Gauge("vllm:kv_cache_usage_perc",
                                  "KV-cache usage. 1 means 100 percent usage.", labels,
                                  registry=r).labels(*lv)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, registry=r).labels(*lv)
        self.generation_tokens = Counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.", labels,
                                         registry=r).labels(*lv)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          ["engine", "finished_reason", "model_name"], registry=r)
        self.success = {reason: success.labels("0", reason, model)
                        for reason in ("stop", "length", "abort", "error", "repetition")}
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", labels,
                              buckets=TTFT_BUCKETS, registry=r).labels(*lv)
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", labels,
                             buckets=ITL_BUCKETS, registry=r).labels(*lv)
        self.inference = Histogram("vllm:request_inference_time_seconds",
                                   "Histogram of time spent in RUNNING phase for request.",
                                   labels, buckets=E2E_BUCKETS, registry=r).labels(*lv)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.", labels,
                             buckets=E2E_BUCKETS, registry=r).labels(*lv)
        self.app = Starlette(routes=[
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
        ])

    # ---- what the test sets ------------------------------------------------------

    def set_load(self, *, waiting: int = 0, running: int = 0, kv_cache: float = 0.0) -> None:
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)
        self.running.set(running)
        self.kv_cache.set(kv_cache)

    def observe_ttft(self, *seconds: float) -> None:
        for s in seconds:
            self.ttft.observe(s)

    def observe_inference(self, *seconds: float) -> None:
        """Requests that ran (were RUNNING) for these times."""
        for s in seconds:
            self.inference.observe(s)

    # ---- endpoints -----------------------------------------------------------------

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _health(self, request: Request) -> Response:
        return Response(b"", 200)

    async def _models(self, request: Request) -> Response:
        now = int(time.time())
        perm = {"id": "modelperm-" + uuid.uuid4().hex[:16], "object": "model_permission",
                "created": now, "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                "allow_fine_tuning": False, "organization": "*", "group": None,
                "is_blocking": False}
        card = {"id": self.model, "object": "model", "created": now, "owned_by": "vllm",
                "root": self.model, "parent": None, "max_model_len": self.max_model_len,
                "permission": [perm]}
        return _json({"object": "list", "data": [card]})

    def _check(self, body: dict[str, Any], prompt: int) -> Response | None:
        """vLLM's errors for an unknown model and a prompt past max_model_len."""
        if body.get("model") != self.model:
            msg = f"The model `{body.get('model')}` does not exist. Valid aliases: {self.model}."
            return _error(msg, "NotFoundError", "model", 404)
        if prompt > self.max_model_len:
            msg = (f"This model's maximum context length is {self.max_model_len} tokens. However, "
                   f"your prompt contains at least {self.max_model_len + 1} input tokens, which "
                   "exceeds this limit even without any output tokens. Please reduce the length "
                   f"of the input prompt. (parameter=input_tokens, value={prompt})")
            return _error(msg, "BadRequestError", "input_tokens", 400)
        return None

    def _tokens(self, body: dict[str, Any]) -> tuple[list[str], str]:
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        tokens = [t if i == 0 else " " + t for i, t in enumerate(REPLY[: max(1, n)])]
        return tokens, ("length" if n < len(REPLY) else "stop")

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        prompt = sum(len(str(m.get("content") or "").split()) + 5 for m in body["messages"]) + 1
        if (err := self._check(body, prompt)) is not None:
            return err
        tokens, finish = self._tokens(body)
        if body.get("stream"):
            return StreamingResponse(self._events(body, tokens, prompt, finish, chat=True),
                                     media_type="text/event-stream")
        self._account(prompt, len(tokens), finish, time.perf_counter())
        message = {"role": "assistant", "content": "".join(tokens), "refusal": None,
                   "annotations": None, "audio": None, "function_call": None, "reasoning": None}
        return _json({
            "id": "chatcmpl-" + uuid.uuid4().hex[:16], "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish, "stop_reason": None, "token_ids": None,
                         "routed_experts": None}],
            "service_tier": None, "system_fingerprint": FINGERPRINT,
            "usage": _usage(prompt, len(tokens), details=True), "prompt_logprobs": None,
            "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
            "ec_transfer_params": None, "metrics": None,
        })

    async def _completions(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        prompt = len(str(body.get("prompt") or "").split()) + 1
        if (err := self._check(body, prompt)) is not None:
            return err
        tokens, finish = self._tokens(body)
        if body.get("stream"):
            return StreamingResponse(self._events(body, tokens, prompt, finish, chat=False),
                                     media_type="text/event-stream")
        self._account(prompt, len(tokens), finish, time.perf_counter())
        return _json({
            "id": "cmpl-" + uuid.uuid4().hex[:16], "object": "text_completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "text": "".join(tokens), "logprobs": None,
                         "finish_reason": finish, "stop_reason": None, "token_ids": None,
                         "prompt_logprobs": None, "prompt_token_ids": None,
                         "routed_experts": None}],
            "service_tier": None, "system_fingerprint": FINGERPRINT,
            "usage": _usage(prompt, len(tokens), details=True), "kv_transfer_params": None,
            "ec_transfer_params": None, "metrics": None,
        })

    async def _events(self, body: dict[str, Any], tokens: list[str], prompt: int,
                      finish: str, chat: bool) -> AsyncIterator[bytes]:
        t0 = time.perf_counter()
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16],
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model}

        def chunk(tok: str, finish_reason: str | None = None) -> bytes:
            choice: dict[str, Any]
            if chat:
                choice = {"index": 0, "delta": {"content": tok}, "logprobs": None,
                          "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": tok, "logprobs": None,
                          "finish_reason": finish_reason, "stop_reason": None,
                          "prompt_token_ids": None}
            if chat and finish_reason is not None:
                choice["stop_reason"] = None
            choice["token_ids"] = None
            return _sse({**head, "choices": [choice]})

        if chat:
            yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                   "content": ""},
                                             "logprobs": None, "finish_reason": None}],
                        "prompt_token_ids": None, "prompt_text": None})
        for i, tok in enumerate(tokens):
            await asyncio.sleep(0.002)
            yield chunk(tok, finish if i == len(tokens) - 1 else None)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({**head, "choices": [], "usage": _usage(prompt, len(tokens)),
                        "system_fingerprint": FINGERPRINT})
        self._account(prompt, len(tokens), finish, t0)
        yield b"data: [DONE]\n\n"

    def _account(self, prompt: int, completion: int, finish: str, t0: float) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)
        self.success[finish].inc()
        self.e2e.observe(time.perf_counter() - t0)


def assert_context_length_exceeded(client: Any, model: str, messages: list[dict[str, str]],
                                   max_model_len: int, max_tokens: int) -> None:
    """A prompt past vLLM's ``max_model_len`` reaches an SDK client through the gateway as a
    400 ``context_length_exceeded`` naming the limit, streamed or not: asserted alike against
    this fake and against the real server."""
    import openai
    import pytest

    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            out = client.chat.completions.create(model=model, messages=messages,
                                                 max_tokens=max_tokens, stream=stream)
            list(out) if stream else None
        body = e.value.body
        assert (body["code"], body["param"], body["type"]) == (
            "context_length_exceeded", "messages", "invalid_request_error")
        assert f"maximum context length is {max_model_len} tokens" in body["message"]


def _usage(prompt: int, completion: int, details: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                           "completion_tokens": completion}
    if details:
        out.update(prompt_tokens_details=None, completion_tokens_details=None)
    return out


def _error(message: str, kind: str, param: str, status: int) -> Response:
    return _json({"error": {"message": message, "type": kind, "param": param, "code": status}},
                 status)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
