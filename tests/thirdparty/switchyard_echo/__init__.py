"""``echo``: a backend that answers with the last user message, as an OpenAI chat completion.

A real (if tiny) backend, written against ``gateway``'s public API only: it shows every part
a backend plugin has (a config model, a ``BaseBackend`` subclass with ``call`` and
``stream``, and the registration hook). Useful to test a gateway without a model.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from gateway import (
    BackendCall,
    BackendConfig,
    BackendResult,
    BaseBackend,
    InvalidRequest,
    Meter,
    RegisterBackend,
    Usage,
    hookimpl,
)


class EchoConfig(BackendConfig):
    model: str | None = "echo-1"
    prefix: str = Field("", description="put before every answer")
    delay_s: float = Field(0.0, ge=0, description="pause between streamed words")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class EchoBackend(BaseBackend):
    config: EchoConfig

    def answer(self, call: BackendCall) -> str:
        if call.endpoint == "chat":
            users = [m for m in call.body.get("messages") or () if m.get("role") == "user"]
            said = _text(users[-1].get("content")) if users else ""
        elif call.endpoint == "completions":
            prompt = call.body.get("prompt", "")
            said = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        else:
            raise InvalidRequest(f"Backend {self.name!r} does not serve {call.endpoint}.")
        return self.config.prefix + said

    def _usage(self, call: BackendCall, answer: str) -> Usage:
        return Usage(self.count_tokens(call), max(1, len(answer.split())))

    def _envelope(self, call: BackendCall, obj: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": obj,
                "created": int(time.time()), "model": self.model}

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        text = self.answer(call)
        usage = self._usage(call, text)
        if call.endpoint == "chat":
            body = self._envelope(call, "chat.completion") | {"choices": [{
                "index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"}]}
        else:
            body = self._envelope(call, "text_completion") | {"choices": [{
                "index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]}
        body["usage"] = usage.to_openai()
        meter.usage = usage
        return BackendResult(body, usage)

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        text = self.answer(call)
        chat = call.endpoint == "chat"
        env = self._envelope(call, "chat.completion.chunk" if chat else "text_completion")
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            delta = {"role": "assistant", "content": piece} if chat and i == 0 else {"content": piece}
            choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": piece}
            yield env | {"choices": [choice | {"finish_reason": None}]}
            if self.config.delay_s:
                await asyncio.sleep(self.config.delay_s)
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        yield env | {"choices": [last | {"finish_reason": "stop"}]}
        usage = self._usage(call, text)
        meter.usage = usage
        if (call.body.get("stream_options") or {}).get("include_usage"):
            yield env | {"choices": [], "usage": usage.to_openai()}


@hookimpl
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("echo", EchoBackend, EchoConfig)
