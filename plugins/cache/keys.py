"""What a request is, for the cache: its namespace, its exact key, its semantic group and
text, and whether its answer may be reused at all.

- **Exact key**: a hash of the namespace, the endpoint, the model or route the client named
  and the whole forwarded body (every message, every parameter that changes the answer,
  the tools), in a normal form: keys sorted, ``null`` parameters dropped, and the
  parameters that never change an answer left out (``IGNORED``).
- **Semantic group**: the same hash with the last user turn's text left out. A semantic
  match is searched only among entries of the request's group: the system prompt, the
  earlier turns, the model, the sampling parameters and the tools must all be equal. The
  namespace is part of both hashes, so no entry is ever found across teams (or keys).
- **Text**: the last user turn (chat) or the prompt (completions), text only and at most
  ``SEMANTIC_MAX_CHARS`` (MiniLM reads 256 word pieces: two longer prompts that differ
  past them would embed the same). Embeddings requests have no text: exact tier only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import Exchange

# parameters that never change the answer: the delivery, the caller's labels
IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier",
                     "prompt_cache_key", "safety_identifier"})
SEMANTIC_MAX_CHARS = 1000
_TEXT_SLOT = "\x00the last user turn\x00"
# OpenAI's default temperature: a request that sets none is sampled at 1
DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str
    exact: str  # the entry id of this request's answer
    group: str | None  # None: no semantic tier for this request
    text: str | None


def namespace(x: Exchange, per: str) -> str:
    ctx = x.ctx
    if per == "key" and ctx.key_id:
        return "k:" + ctx.key_id
    return "t:" + ctx.team if ctx.team else "anonymous"


def _digest(*parts: Any) -> str:
    data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _normal(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None and k not in IGNORED}


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None  # an image, audio, a file: exact tier only


def _semantic(x: Exchange, body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The body with its last user turn's text taken out, and that text."""
    if x.endpoint == "chat":
        messages = body.get("messages") or []
        last = messages[-1] if messages else None
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = _text(last.get("content"))
        rest = {**body, "messages": [*messages[:-1], {**last, "content": _TEXT_SLOT}]}
    elif x.endpoint == "completions":
        text = body.get("prompt") if isinstance(body.get("prompt"), str) else None
        rest = {**body, "prompt": _TEXT_SLOT}
    else:
        return None
    if text is None or not text.strip() or len(text) > SEMANTIC_MAX_CHARS:
        return None
    return rest, text


def keys(x: Exchange, per: str, semantic: bool) -> Keys:
    ns = namespace(x, per)
    body = _normal(x.forwarded)
    exact = _digest(ns, x.endpoint, x.req.model, body)
    found = _semantic(x, body) if semantic else None
    if found is None:
        return Keys(ns, exact, None, None)
    rest, text = found
    return Keys(ns, exact, _digest(ns, x.endpoint, x.req.model, rest), text)


def user_turns(x: Exchange) -> int:
    if x.endpoint != "chat":
        return 1
    return sum(1 for m in x.forwarded.get("messages") or ()
               if isinstance(m, dict) and m.get("role") == "user")


def why_not_reusable(x: Exchange, max_temperature: float, max_turns: int) -> str | None:
    """Why this request's answer is not for reuse (None: it is), known before any call:
    sampled above the ceiling, several completions, a conversation too long."""
    if x.endpoint == "embeddings":
        return None
    t = getattr(x.req, "temperature", None)
    if (DEFAULT_TEMPERATURE if t is None else t) > max_temperature:
        return "temperature"
    if x.req.choices > 1:
        return "n"
    if user_turns(x) > max_turns:
        return "turns"
    return None


def answer_reusable(answer: dict[str, Any]) -> bool:
    """One choice, no tool or function calls."""
    if "data" in answer:  # embeddings
        return True
    choices = answer.get("choices") or []
    if len(choices) != 1:
        return False
    ch = choices[0]
    msg = ch.get("message") or {}
    return not (msg.get("tool_calls") or msg.get("function_call")
                or ch.get("finish_reason") in ("tool_calls", "function_call"))
