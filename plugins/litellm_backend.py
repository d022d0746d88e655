"""``litellm``: remote providers (OpenAI, Anthropic, ... 100+) through litellm.

Prices come from litellm's bundled cost map (``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set
before litellm is imported, so it never fetches one); ``pricing`` in config overrides it.
litellm's exceptions are mapped to ours by their HTTP status class.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field, SecretStr

from gateway import (
    BackendCall,
    BackendConfig,
    BackendContext,
    BackendError,
    BackendResult,
    BackendTimeout,
    BackendUnavailable,
    BaseBackend,
    Endpoint,
    InvalidRequest,
    Meter,
    Pricing,
    RegisterBackend,
    Usage,
    has_content,
    hookimpl,
)

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _litellm() -> Any:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMConfig(BackendConfig):
    model: str
    api_key: SecretStr | None = None
    api_base: str | None = None
    embeddings: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)


# For a model its bundled map lacks, litellm's get_model_info asks these providers' servers
# (config.json on huggingface.co, Ollama's /api/show): never at start-up, nor in check-config.
_ASKS_ONLINE = frozenset({"huggingface", "ollama", "ollama_chat", "lemonade"})

# litellm reads these from its keyword arguments as connection settings: taken from a
# client's body, they would send our key wherever the client likes. Config sets them.
_CONNECTION_KEYS = frozenset({
    "api_key", "api_base", "base_url", "api_version", "custom_llm_provider", "organization",
    "headers", "extra_headers", "timeout", "max_retries", "client", "mock_response",
})
_CONNECTION_PREFIXES = ("aws_", "azure_", "vertex_", "litellm_", "watsonx_")


def client_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The client's body without anything litellm would take as a connection setting."""
    return {k: v for k, v in body.items()
            if k not in _CONNECTION_KEYS and not k.startswith(_CONNECTION_PREFIXES)}


def map_litellm_error(name: str, e: Exception) -> Exception:
    status = getattr(e, "status_code", None)
    msg = f"Backend '{name}': {type(e).__name__}"
    if isinstance(e, TimeoutError) or type(e).__name__ == "Timeout" or status in (408, 504):
        return BackendTimeout(msg + " (timed out).")
    if status in (400, 404, 422) and type(e).__name__ in ("BadRequestError", "ContextWindowExceededError",
                                                          "UnprocessableEntityError"):
        return InvalidRequest(f"{msg}: {getattr(e, 'message', '')}"[:500])
    if status in (429, 503) or type(e).__name__ in ("RateLimitError", "ServiceUnavailableError",
                                                  "APIConnectionError"):
        return BackendUnavailable(msg + ".")
    return BackendError(msg + ".")


class LiteLLMBackend(BaseBackend):
    config: LiteLLMConfig

    def __init__(self, config: LiteLLMConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        caps: set[Endpoint] = {"chat", "completions"}
        if config.embeddings:
            caps.add("embeddings")
        self.capabilities = frozenset(caps)
        self._ll = _litellm()
        info: dict[str, Any] = {}
        try:
            if self._ll.get_llm_provider(config.model)[1] not in _ASKS_ONLINE:
                info = self._ll.get_model_info(config.model)
        except Exception:  # noqa: BLE001 - a model litellm does not know has no prices
            info = {}
        self._info = info
        if config.context_window is None and info.get("max_input_tokens"):
            self.config = config.model_copy(update={"context_window": int(info["max_input_tokens"])})

    def pricing(self) -> Pricing:
        if self.config.pricing is not None:
            return self.config.pricing
        i = self._info
        cached = i.get("cache_read_input_token_cost")
        return Pricing(
            input_per_mtok=float(i.get("input_cost_per_token") or 0.0) * 1e6,
            output_per_mtok=float(i.get("output_cost_per_token") or 0.0) * 1e6,
            cached_input_per_mtok=float(cached) * 1e6 if cached is not None else None,
        )

    def count_tokens(self, call: BackendCall) -> int:
        try:
            if call.endpoint == "chat":
                return int(self._ll.token_counter(model=self.config.model, messages=call.body["messages"]))
            return super().count_tokens(call)
        except Exception:  # noqa: BLE001 - no tokenizer for this model: estimate
            return super().count_tokens(call)

    def _kwargs(self, call: BackendCall) -> dict[str, Any]:
        kw = {**self.config.extra, **client_fields(call.body), "model": self.config.model}
        if self.config.api_key is not None:
            kw["api_key"] = self.config.api_key.get_secret_value()
        if self.config.api_base:
            kw["api_base"] = self.config.api_base
        t = self.config.timeouts
        kw.setdefault("timeout", t.total_s)
        # the gateway retries and falls back itself; the SDK's own retries would only add
        # seconds (and repeat a 429) before it can
        kw.setdefault("max_retries", 0)
        return kw

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        kw = self._kwargs(call)
        try:
            if call.endpoint == "chat":
                resp = await self._ll.acompletion(**kw)
            elif call.endpoint == "completions":
                resp = await self._ll.atext_completion(**kw)
            else:
                resp = await self._ll.aembedding(**kw)
        except Exception as e:  # noqa: BLE001 - litellm raises many types; all are mapped
            raise map_litellm_error(self.name, e) from None
        body = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
        usage = Usage.from_openai(body.get("usage")) or Usage()
        meter.usage = usage
        return BackendResult(body, usage)

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        """Relay litellm's stream. litellm reads it through httpx, whose cancel scopes
        belong to the task that opened them, while the gateway reads the first chunk and
        the rest from different tasks: one pump task of our own owns litellm's iterator
        and hands chunks over through a queue."""
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue(maxsize=64)
        pump = asyncio.create_task(self._pump(call, queue))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.get("usage"):
                    meter.usage = Usage.from_openai(item["usage"])
                    _openai_usage_chunk(item)
                yield item
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def _pump(
        self, call: BackendCall, queue: asyncio.Queue[dict[str, Any] | BaseException | None]
    ) -> None:
        kw = self._kwargs(call)
        kw["stream"] = True
        try:
            fn = self._ll.acompletion if call.endpoint == "chat" else self._ll.atext_completion
            resp = await fn(**kw)
            async for chunk in resp:
                d = chunk.model_dump(exclude_none=True) if hasattr(chunk, "model_dump") else dict(chunk)
                await queue.put(d)
        except Exception as e:  # noqa: BLE001 - litellm raises many types; all are mapped
            await queue.put(map_litellm_error(self.name, e))
            return
        await queue.put(None)


def _openai_usage_chunk(chunk: dict[str, Any]) -> None:
    """litellm's usage chunk carries an empty choice (``delta: {}``, no finish reason); an
    OpenAI stream's carries none (``choices: []``): a client that reads ``choices[0]`` on
    every chunk would otherwise see a phantom one."""
    choices = chunk.get("choices")
    if choices and all(not c.get("finish_reason") and not has_content({"choices": [c]})
                       for c in choices):
        chunk["choices"] = []


@hookimpl(trylast=True)
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("litellm", LiteLLMBackend, LiteLLMConfig)
