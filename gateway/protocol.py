"""Wire models of the OpenAI API, used to validate what clients send.

Validation checks what the gateway relies on and types the common parameters; every field,
known or not, is kept (``extra="allow"``) and passed through to the backend.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import InvalidRequest


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class SwitchyardOptions(BaseModel):
    """Per-request options, sent as ``extra_body={"switchyard": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    policy: str | None = None
    max_cost_usd: float | None = Field(None, ge=0)
    ttft_slo_ms: float | None = Field(None, gt=0)
    latency_target: Literal["ttft", "total"] | None = None
    include_co2: bool | None = None


class _Sampling(_Open):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    switchyard: SwitchyardOptions | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


_MODELS: dict[str, type[_Open]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def validate(endpoint: str, body: dict[str, Any]) -> _Open:
    """Validate ``body`` for ``endpoint``; raise InvalidRequest naming the bad parameter."""
    try:
        return _MODELS[endpoint].model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(err["loc"], body, missing=err["type"] == "missing")
        if err["type"] == "missing":
            msg = f"Missing required parameter: '{param}'."
        elif err["type"] == "too_short" and param == "messages":
            msg = "'messages' must contain at least one message."
        else:
            msg = f"Invalid value for '{param}': {err['msg']}."
        raise InvalidRequest(msg, param=param) from None


def _param(loc: tuple[int | str, ...], body: Any, *, missing: bool) -> str | None:
    """The parameter's path in the client's body (``messages.0.role``), leaving out the
    union members pydantic adds to a location (``stop.str``)."""
    parts: list[str] = []
    cur = body
    for i, key in enumerate(loc):
        in_dict = isinstance(cur, dict) and key in cur
        in_list = isinstance(cur, list) and isinstance(key, int) and key < len(cur)
        if in_dict or in_list:
            cur = cur[key]
        elif not (missing and i == len(loc) - 1):
            continue  # a union member's name, not a key of the body
        parts.append(str(key))
    return ".".join(parts) or None


def prompt_text(endpoint: str, body: dict[str, Any]) -> str:
    """The prompt's text, for token estimates and content-aware plan editors."""
    if endpoint == "chat":
        parts: list[str] = []
        for m in body.get("messages") or ():
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "\n".join(parts)
    p = body.get("prompt") if endpoint == "completions" else body.get("input")
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and isinstance(p[0], str):
        return "\n".join(p)
    return ""


def has_content(chunk: dict[str, Any]) -> bool:
    """Whether a stream chunk (chat or legacy completion) carries generated output: the
    token count of a stream whose backend reports no usage."""
    for ch in chunk.get("choices") or ():
        d = ch.get("delta")
        if d is not None:
            if d.get("content") or d.get("tool_calls") or d.get("reasoning_content"):
                return True
        elif ch.get("text"):
            return True
    return False
