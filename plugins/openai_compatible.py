"""``openai_compatible``: any OpenAI-compatible HTTP server (llama.cpp, vLLM, TGI, Ollama...).

The hot path to a plain-HTTP server (``http://``: a server on this host or the LAN) goes
through ``plugins.http11``, a lean HTTP/1.1 client with a keep-alive pool, under half of
aiohttp's CPU per call; an ``https://`` server through aiohttp (TLS, compression). At
32 concurrent requests a shared httpx.AsyncClient tops out far lower on this hardware
(encode/httpx#3215; figures in bench/README.md).
Streams are relayed as they arrive, never buffered: as blocks of whole events
(``stream_sse``, which the relay passes on untouched), or parsed (``stream``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator

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
    RegisterBackend,
    SSEFrames,
    Usage,
    hookimpl,
    sse_chunks,
)
from plugins.http11 import Pool, request_head

# What follows ``[DONE]`` (normally only the end of the chunked body) is read, within these
# bounds, so that the connection goes back to the pool: a connection whose body was not read
# to its end is closed, and the next request then pays for a new connect.
DRAIN_S = 0.25
DRAIN_BYTES = 65536
_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


class OpenAICompatibleConfig(BackendConfig):
    base_url: str = Field(pattern=r"^https?://")
    model: str
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    embeddings: bool = False  # the server also serves /v1/embeddings
    # ``https://`` only: True checks the server's certificate against the system's CAs; a
    # path to a PEM bundle trusts that bundle instead (a private CA); False checks nothing
    # (a test server: the traffic is encrypted but anyone on the path can read it)
    ssl_verify: bool | str = True

    @field_validator("ssl_verify")
    @classmethod
    def _bundle_exists(cls, v: bool | str) -> bool | str:
        if isinstance(v, str):
            try:
                ssl.create_default_context(cafile=v)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"ssl_verify: cannot read the CA bundle {v!r}: {e}") from None
        return v


def upstream_error(
    status: int, raw: bytes, name: str, headers: Any = None, secrets: tuple[str, ...] = ()
) -> Exception:
    """Map an upstream HTTP error to ours. The backend's own message is kept, with any of
    ``secrets`` masked (some servers echo the key they refused); 4xx about the request is
    the client's, everything else is retryable."""
    msg = ""
    try:
        body = orjson.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else {}
        msg = str(err.get("message") or err.get("detail") or "") if isinstance(err, dict) else str(err)
    except orjson.JSONDecodeError:
        msg = raw[:200].decode("utf-8", "replace")
    for secret in secrets:
        msg = msg.replace(secret, "***")
    text = f"Backend '{name}' answered {status}" + (f": {msg}" if msg else ".")
    if status in (400, 422):
        return InvalidRequest(text)
    if status in (429, 503):
        ra = headers.get("retry-after") if headers is not None else None
        return BackendUnavailable(text, retry_after=float(ra) if ra and ra.isdigit() else None)
    if status in (408, 504):
        return BackendTimeout(text)
    return BackendError(text)


def transport_error(name: str, e: BaseException) -> Exception:
    """A failure below HTTP: a connect failure or timeout is 503 (unreachable), a read
    timeout 504, a dropped connection 503. TimeoutError is an OSError: test it first."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        why = getattr(e.certificate_error, "verify_message", "") or e.certificate_error
        return BackendUnavailable(f"Backend '{name}' is unreachable: its TLS certificate is not "
                                  f"trusted ({why}); set ssl_verify to the CA bundle that signed it.")
    if isinstance(e, aiohttp.ConnectionTimeoutError) or not isinstance(e, TimeoutError):
        return BackendUnavailable(f"Backend '{name}' is unreachable: {type(e).__name__}.")
    return BackendTimeout(f"Backend '{name}' did not answer in time.")


class _Response(Protocol):
    """What the backend reads of a response, from either client."""

    status: int

    @property
    def headers(self) -> Any: ...

    async def read(self) -> bytes: ...

    def iter_any(self) -> AsyncIterator[bytes]: ...

    async def drain(self, timeout_s: float, max_bytes: int) -> None: ...


class _Aio:
    """An aiohttp response as ``_Response``."""

    def __init__(self, r: aiohttp.ClientResponse) -> None:
        self.r, self.status, self.headers = r, r.status, r.headers

    async def read(self) -> bytes:
        return await self.r.read()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self.r.content.iter_any()

    async def drain(self, timeout_s: float, max_bytes: int) -> None:
        content = self.r.content
        if content.at_eof():
            return
        try:
            async with asyncio.timeout(timeout_s):
                while max_bytes > 0 and (data := await content.readany()):
                    max_bytes -= len(data)
        except TimeoutError:
            pass


class OpenAICompatibleBackend(BaseBackend):
    config: OpenAICompatibleConfig

    def __init__(self, config: OpenAICompatibleConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        self.base_url = config.base_url.rstrip("/")
        h = {"content-type": "application/json", **config.headers}
        if config.api_key is not None:
            h["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._headers = h
        self._secrets = tuple(
            x for x in (config.api_key.get_secret_value() if config.api_key else "",) if x
        )
        caps: set[Endpoint] = {"chat", "completions"}
        if config.embeddings:
            caps.add("embeddings")
        self.capabilities = frozenset(caps)
        t = config.timeouts
        self._timeout = aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=t.total_s, sock_connect=t.connect_s, sock_read=t.first_token_s
        )
        # The relay takes the upstream's events as bytes (``stream_sse``): a subclass that
        # changes ``stream`` (vLLM maps its errors there) keeps it until it changes this too.
        own = type(self).stream is OpenAICompatibleBackend.stream
        self.stream_sse: Callable[[BackendCall, Meter], AsyncIterator[bytes]] | None = (
            self._stream_sse if own or type(self)._stream_sse is not OpenAICompatibleBackend._stream_sse
            else None)

        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=config.ssl_verify)
            if isinstance(config.ssl_verify, str) else config.ssl_verify)
        self._pool: Pool | None = None
        u = urlsplit(self.base_url)
        if u.scheme == "http" and u.hostname:
            port = u.port or 80
            host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
            if u.port:
                host += f":{port}"
            self._pool = Pool(u.hostname, port, self.context.connector_limit)
            self._heads = {ep: request_head("POST", u.path + p, host, h)
                           for ep, p in _PATHS.items()}

    def _url(self, call: BackendCall) -> str:
        return self.base_url + _PATHS[call.endpoint]

    @asynccontextmanager
    async def _post(self, call: BackendCall, data: bytes,
                    stream: bool) -> AsyncIterator[_Response]:
        """POST ``data`` for ``call``; the response, released on leaving."""
        if self._pool is None:
            async with self.context.http().post(
                self._url(call), data=data, headers=self._headers,
                timeout=self._stream_timeout if stream else self._timeout, ssl=self._ssl,
            ) as r:
                yield _Aio(r)
            return
        t = self.config.timeouts
        resp = await self._pool.request(
            self._heads[call.endpoint], data, connect_s=t.connect_s,
            read_s=t.first_token_s if stream else t.total_s,
            deadline=asyncio.get_running_loop().time() + t.total_s)
        async with resp:
            yield resp

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        data = orjson.dumps(call.body)
        meter.bytes_sent += len(data)
        try:
            async with self._post(call, data, False) as resp:
                raw = await resp.read()
                meter.bytes_received += len(raw)
                if resp.status >= 400:
                    raise upstream_error(resp.status, raw, self.name, resp.headers, self._secrets)
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise transport_error(self.name, e) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(f"Backend '{self.name}' sent a body that is not JSON.") from None
        if not isinstance(body, dict):
            raise BackendError(f"Backend '{self.name}' sent an unexpected body.")
        usage = Usage.from_openai(body.get("usage")) or Usage()
        meter.usage = usage
        return BackendResult(body, usage)

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        async for block in self._stream_sse(call, meter):
            for chunk in sse_chunks(block):
                if chunk.get("usage"):
                    meter.usage = Usage.from_openai(chunk["usage"])
                yield chunk

    async def _stream_sse(self, call: BackendCall, meter: Meter) -> AsyncIterator[bytes]:
        """The upstream's events as they arrive, in blocks of whole canonical events
        (``gateway.SSEFrames``), up to ``[DONE]``; an error event raises. Its deadline is
        the HTTP client's (``total_s``, and ``first_token_s`` between reads)."""
        data = orjson.dumps(call.body)
        meter.bytes_sent += len(data)
        frames = SSEFrames()
        try:
            async with self._post(call, data, True) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    meter.bytes_received += len(raw)
                    raise upstream_error(resp.status, raw, self.name, resp.headers, self._secrets)
                async for read in resp.iter_any():
                    meter.bytes_received += len(read)
                    block = frames.feed(read)
                    if block:
                        yield block
                    if frames.done:
                        await resp.drain(DRAIN_S, DRAIN_BYTES)
                        break
                    if frames.error is not None:
                        break
                else:
                    block = frames.close()
                    if block:
                        yield block
                if frames.error is not None:
                    err = frames.error["error"]
                    msg = str(err.get("message") if isinstance(err, dict) else err)
                    for secret in self._secrets:
                        msg = msg.replace(secret, "***")
                    raise BackendError(f"Backend '{self.name}' failed mid-stream: {msg}")
        except ValueError:  # a line that is not a JSON object (orjson's error is one)
            raise BackendError(f"Backend '{self.name}' sent a malformed event.") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            raise transport_error(self.name, e) from None

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        await super().close()

    async def probe(self) -> None:
        async with self.context.http().get(
            self.base_url + "/models", headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeouts.connect_s),
        ) as resp:
            if resp.status >= 500:
                raise BackendUnavailable(f"Backend '{self.name}' health check answered {resp.status}.")


@hookimpl(trylast=True)
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("openai_compatible", OpenAICompatibleBackend, OpenAICompatibleConfig)
