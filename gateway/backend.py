"""``BaseBackend``: what every backend shares, so a plugin writes only its calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.config import BackendConfig, Pricing
from gateway.errors import InvalidRequest
from gateway.interfaces import BackendCall, BackendLoad, BackendResult, Endpoint, Meter, Usage
from gateway.protocol import prompt_text


@dataclass
class BackendContext:
    """What the gateway hands each backend: the shared HTTP session, made on first use
    inside the running event loop (tests may inject their own)."""

    http_session: aiohttp.ClientSession | None = None
    connector_limit: int = 0  # 0: no limit on pooled connections
    # CPU threads a backend that computes in this process may use (the in-process llama.cpp
    # model); None: its own default. ``serve --workers N`` sets cores // N.
    threads: int | None = None
    _owned: bool = field(default=False, repr=False)

    def http(self) -> aiohttp.ClientSession:
        if self.http_session is None or self.http_session.closed:
            connector = aiohttp.TCPConnector(limit=self.connector_limit, ttl_dns_cache=300)
            # no cookie jar: one tenant's call must not carry a cookie another's answer set
            self.http_session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._owned = True
        return self.http_session

    async def close(self) -> None:
        if self._owned and self.http_session is not None:
            await self.http_session.close()


class BaseBackend:
    """Defaults for the Backend protocol. Subclasses implement ``call`` and ``stream``."""

    capabilities: frozenset[Endpoint] = frozenset({"chat", "completions"})

    def __init__(self, config: BackendConfig, context: BackendContext | None = None) -> None:
        self.config = config
        self.context = context or BackendContext()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model(self) -> str:
        return self.config.model or self.config.name

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        raise InvalidRequest(f"Backend {self.name!r} does not serve {call.endpoint}.")

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        raise InvalidRequest(f"Backend {self.name!r} does not stream {call.endpoint}.")
        yield {}  # pragma: no cover - makes this an async generator

    async def probe(self) -> None:
        return None

    def load(self) -> BackendLoad:
        return BackendLoad()

    def count_tokens(self, call: BackendCall) -> int:
        """Prompt tokens, estimated: about four characters a token plus message framing.
        Backends with a tokenizer override this."""
        text = prompt_text(call.endpoint, call.body)
        n_msgs = len(call.body.get("messages") or ()) if call.endpoint == "chat" else 0
        return max(1, len(text) // 4 + 4 * n_msgs)

    def pricing(self) -> Pricing:
        return self.config.pricing or Pricing()

    def price_per_token(self) -> tuple[float, float]:
        p = self.pricing()
        return p.input_per_mtok / 1e6, p.output_per_mtok / 1e6

    def cost_usd(self, usage: Usage, busy_s: float) -> float:
        p = self.pricing()
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = p.cached_input_per_mtok if p.cached_input_per_mtok is not None else p.input_per_mtok
        return (
            (usage.prompt_tokens - cached) * p.input_per_mtok
            + cached * cached_price
            + usage.completion_tokens * p.output_per_mtok
        ) / 1e6 + p.per_hour * busy_s / 3600.0
