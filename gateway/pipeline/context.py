"""Per-request context the HTTP layer builds and the pipeline reads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.auth import Identity
from gateway.interfaces import Constraints
from gateway.state import Limit


@dataclass(slots=True)
class TokensCounted:
    """Tokens-per-minute windows that counted the prompt at admission: the rest of the
    request's tokens are added to them when it settles."""

    limits: list[Limit]
    prompt_tokens: int
    local: bool  # counted by the local fallback store during an outage (fail open)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    team: str | None = None
    key_id: str | None = None
    policy: str | None = None  # per-request override (header or extra_body)
    constraints: Constraints = field(default_factory=Constraints)
    received_at: float = field(default_factory=time.perf_counter)
    identity: Identity | None = None  # the caller's key and team, when keys are configured
    tokens_counted: TokensCounted | None = None  # set by admission, read when settling
    # rate limits admission left to the first reservation, which takes them in the same
    # round trip to the state store (``Admission.admit(..., defer=True)``)
    limits_pending: list[Limit] | None = None
    # the request's cache headers (``Cache-Control``, ``x-switchyard-cache-*``), lower-case
    # names; only read when a cache is configured
    cache_headers: dict[str, str] | None = None
