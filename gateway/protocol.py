"""Wire models of the OpenAI API, used to validate what clients send.

Validation checks what the gateway relies on and types the common parameters; every field,
known or not, is kept (``extra="allow"``) and passed through to the backend. Types are
strict, as OpenAI's own API is: ``"10"`` is not an integer and ``"false"`` not a boolean
(pydantic's lax mode would turn them into 10 and False, and ``true`` into 1). The pipeline
reads the validated request, never the raw body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import InvalidRequest
from gateway.interfaces import Usage


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool | None = None


class ContentPart(_Open):
    """One part of a message's content: ``text``, or an image, audio or file part."""

    type: str
    text: str = ""  # a string whenever present, on any part

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and "text" not in self.model_fields_set:
            raise ValueError("a text part needs 'text'")
        return self


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class CacheOptions(BaseModel):
    """``extra_body={"switchyard": {"cache": {...}}}``: this request's cache controls
    (docs/cache.md); unset fields keep the route's."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mode: Literal["on", "off", "read_only", "refresh", "no_store"] | None = None
    ttl_s: float | None = Field(None, gt=0)
    threshold: float | None = Field(None, ge=0, le=1)


class CompressOptions(BaseModel):
    """``extra_body={"switchyard": {"compress": {...}}}``: this request's prompt compression
    (docs/compression.md); unset fields keep the route's. ``ratio`` or ``token_budget``
    replaces the route's target; ``off`` sends the prompt as it is."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ratio: float | None = Field(None, gt=1)
    token_budget: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    off: bool = False


class SwitchyardOptions(BaseModel):
    """Per-request options, sent as ``extra_body={"switchyard": {...}}``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    policy: str | None = None
    max_cost_usd: float | None = Field(None, ge=0)
    ttft_slo_ms: float | None = Field(None, gt=0)
    latency_target: Literal["ttft", "total"] | None = None
    include_co2: bool | None = None
    cache: CacheOptions | None = None
    compress: CompressOptions | None = None


MAX_TOKENS_LIMIT = 2**31 - 1  # what engines take (a C int); no model writes more


class WireRequest(_Open):
    """What every endpoint's request has; the pipeline reads these, never the raw body."""

    model: str = Field(min_length=1)
    user: str | None = None
    switchyard: SwitchyardOptions | None = None

    @property
    def streaming(self) -> bool:
        return False

    @property
    def max_output(self) -> int | None:
        """The most tokens one completion may write (None: the client set no limit)."""
        return None

    @property
    def choices(self) -> int:
        """How many completions the call writes (0 for embeddings)."""
        return 0


class _Sampling(WireRequest):
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None

    @property
    def streaming(self) -> bool:
        return self.stream

    @property
    def max_output(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def choices(self) -> int:
        return self.n or 1


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
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
    best_of: int | None = Field(None, ge=1, le=20)

    @property
    def choices(self) -> int:
        """``max(n, best_of)`` completions for each prompt of a batch."""
        p = self.prompt
        prompts = len(p) if isinstance(p, list) and p and not isinstance(p[0], int) else 1
        return max(self.n or 1, self.best_of or 1) * prompts


class EmbeddingRequest(WireRequest):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    # not used by embeddings, but typed as on the other endpoints: a wrong type is a 400
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_MODELS: dict[str, type[WireRequest]] = {
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


def validate(endpoint: str, body: dict[str, Any]) -> WireRequest:
    """Validate ``body`` for ``endpoint``; raise InvalidRequest naming the bad parameter."""
    try:
        return _MODELS[endpoint].model_validate(body)
    except ValidationError as e:
        # of a union's failed members, the one that got deepest into the body says most
        # (``messages.0.content.0.text``, not "content is not a string")
        found = [(_param(er["loc"], body, missing=er["type"] == "missing"), er)
                 for er in e.errors()]
        param, err = max(found, key=lambda f: len(f[0].split(".")) if f[0] else 0)
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


def prompt_text(endpoint: str, body: dict[str, Any], limit: int | None = None) -> str:
    """The prompt's text, for token estimates and content-aware plan editors; with ``limit``,
    at most its first ``limit`` characters (per-request plugin code gets a bounded input, so
    a megabyte prompt cannot make a plugin's regex freeze the event loop)."""
    if endpoint == "chat":
        parts: list[str] = []
        size = 0
        for m in body.get("messages") or ():
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
                size += len(c)
            elif isinstance(c, list):
                for p in c:
                    t = p.get("text") if isinstance(p, dict) else None
                    if isinstance(t, str):
                        parts.append(t)
                        size += len(t)
            if limit is not None and size >= limit:
                break
        text = "\n".join(parts)
    else:
        p = body.get("prompt") if endpoint == "completions" else body.get("input")
        if isinstance(p, str):
            text = p
        elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            text = "\n".join(p)
        else:
            text = ""
    return text if limit is None else text[:limit]


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


# An upper bound of prompt tokens for any tokenizer, without one: a byte-level tokenizer
# (BPE, or SentencePiece with byte fallback) never makes more tokens than the text has UTF-8
# bytes, plus its special tokens; a chat template adds a few tokens per message and may add
# text of its own (a default system prompt, tool instructions).
FRAME_TOKENS = 8  # per message (role markers, separators), or per prompt (BOS, EOS)
TEMPLATE_TOKENS = 256  # once per chat request: a template's own text
MEDIA_TOKENS = 4096  # per image (no vendor bills more than this for one); audio and files by size


def _utf8(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _json_size(v: Any) -> int:
    try:
        return len(orjson.dumps(v))
    except TypeError:  # not JSON (a caller's own object): its text
        return _utf8(str(v))


def _content_bound(content: Any) -> int:
    if isinstance(content, str):
        return _utf8(content)
    if not isinstance(content, list):
        return _json_size(content) if content is not None else 0
    n = 0
    for part in content:
        if not isinstance(part, dict):
            n += _json_size(part)
        elif part.get("type") == "text" and isinstance(part.get("text"), str):
            n += _utf8(part["text"])
        elif part.get("type") == "image_url":
            n += MEDIA_TOKENS
        else:  # audio, a file, a part this gateway does not know: its size, at least an image's
            n += max(MEDIA_TOKENS, _json_size(part))
    return n


def _input_bound(p: Any) -> int:
    if isinstance(p, str):
        return _utf8(p) + FRAME_TOKENS
    if not isinstance(p, list):
        return FRAME_TOKENS
    n = 0
    for x in p:
        if isinstance(x, str):
            n += _utf8(x) + FRAME_TOKENS
        elif isinstance(x, list):  # one prompt of token ids
            n += len(x) + FRAME_TOKENS
        else:  # a token id
            n += 1
    return n + FRAME_TOKENS


def max_prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """The most prompt tokens ``body`` can be billed for, by any backend: one token per UTF-8
    byte of everything the prompt is made of (text, names, tool calls and definitions,
    response format), plus what a chat template adds, plus ``MEDIA_TOKENS`` per image. What a
    budget holds before the call: the backend's own count may be far lower, never higher."""
    if endpoint != "chat":
        n = _input_bound(body.get("prompt") if endpoint == "completions" else body.get("input"))
        suffix = body.get("suffix")
        return n + (_utf8(suffix) if isinstance(suffix, str) else 0)
    n = TEMPLATE_TOKENS
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        n += FRAME_TOKENS
        for k, v in m.items():
            if k == "content":
                n += _content_bound(v)
            elif k != "role":
                n += _utf8(v) if isinstance(v, str) else _json_size(v)
    for k in ("tools", "functions", "tool_choice", "response_format"):
        v = body.get(k)
        if v is not None:
            n += _utf8(v) if isinstance(v, str) else _json_size(v)
    return n


def usage_chunk(last: dict[str, Any] | None, usage: Usage) -> dict[str, Any]:
    """The final chunk of a stream that reports ``usage`` (OpenAI's shape: no choices),
    after ``last``, the stream's last chunk (its id, object, created and model)."""
    last = last or {}
    return {"id": last.get("id"), "object": last.get("object") or "chat.completion.chunk",
            "created": last.get("created"), "model": last.get("model"), "choices": [],
            "usage": usage.to_openai()}
