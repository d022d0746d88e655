"""A lean HTTP/1.1 client for calls to plain-HTTP upstreams (a vLLM or llama.cpp server on
this host or the LAN, any OpenAI-compatible server behind ``http://``).

aiohttp's client spends about 150 µs of CPU on one small POST and its answer at one
connection on this project's machines, this one about 70 (75 against 30 µs at 32
concurrent; ``bench/http_clients.py``): at one connection the difference was a fifth of the
gateway's CPU per request, and most of it sits on the path to the first token. What it leaves out is what such an upstream does not need: TLS, proxies, redirects,
cookies (a gateway must not carry one tenant's cookies into another's calls anyway),
compression (nothing is asked for: ``Accept-Encoding`` is not sent). ``https://`` upstreams
keep aiohttp.

- ``Pool``: keep-alive connections to one ``host:port``, at most ``limit`` at once (0: no
  limit). A connection goes back to the pool only when its response was read to its end
  and the server did not ask to close it; any other is closed.
- ``Pool.request``: writes the request in one write, waits for the response head; the
  body is then read with ``Response.read`` (all of it) or ``Response.iter_any`` (what
  each read brought, the chunked encoding removed), each wait at most ``read_s``, the
  whole exchange before ``deadline`` (the event loop's clock).
- Errors are the socket's own classes: ``ConnectFailed`` (a ``ConnectionError``: refused,
  unreachable, or no connection within ``connect_s``), ``ConnectionResetError`` when the
  server closes mid-response, ``ConnectionError`` for a response that is not HTTP, and
  ``TimeoutError`` when a read waits too long.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Mapping
from typing import Self

import httptools

HIGH_WATER = 1 << 20  # body bytes buffered before the socket stops being read
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ConnectFailed(ConnectionError):
    """No connection: refused, unreachable, or not made within the connect timeout."""


def request_head(method: str, path: str, host: str, headers: Mapping[str, str]) -> bytes:
    """The request line and headers, up to ``Content-Length``'s value (the caller adds
    the length and the blank line). A header name or value that could split the head
    (CR, LF) is refused."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in headers.items():
        if not _TOKEN.match(k) or "\r" in v or "\n" in v or "\0" in v:
            raise ValueError(f"invalid HTTP header {k!r}")
        lines.append(f"{k}: {v}")
    lines.append("Content-Length: ")
    return "\r\n".join(lines).encode("latin-1")


class _Conn(asyncio.Protocol):
    """One connection: the parser's callbacks fill the current response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.resp: Response | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.resp is not None:
            self.resp._lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.resp is not None:
            self.resp._feed(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """One response: its status and headers (names in lower case) once ``Pool.request``
    returns, its body through ``read`` or ``iter_any``."""

    def __init__(self, pool: Pool, conn: _Conn, deadline: float, read_s: float) -> None:
        self._pool, self._conn = pool, conn
        self._deadline, self._read_s = deadline, read_s
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self._until_close = False
        self._keep = False
        self.complete = False
        self._released = False

    # ---- the parser's callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key, v = name.decode("latin-1").lower(), value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = v if old is None else old + ", " + v

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True
        self._keep = self._parser.should_keep_alive()  # read here: llhttp resets it later
        # neither a length nor chunks: the body ends when the server closes
        self._until_close = ("content-length" not in self.headers
                             and "chunked" not in self.headers.get("transfer-encoding", ""))

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # ---- from the connection ---------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError("the upstream switched protocols"))
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"the upstream's response is not HTTP/1.1 ({e})"))
        if self._buffered > HIGH_WATER and not self._paused and self._conn.transport:
            self._conn.transport.pause_reading()
            self._paused = True
        self._wake()

    def _lost(self, exc: Exception | None) -> None:
        if not self.complete and self.head_done and self._until_close:
            self.complete = True  # a body that ends with the connection
        if not self.complete and self._error is None:
            self._error = exc or ConnectionResetError("the upstream closed the connection")
        self._wake()

    def _fail(self, e: BaseException) -> None:
        self._error = e
        self._conn.close()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        """Until the connection brings something (bytes, the end, an error)."""
        now = self._loop.time()
        when = min(now + self._read_s, self._deadline)
        if when <= now:
            raise TimeoutError
        self._waiter = self._loop.create_future()
        try:
            async with asyncio.timeout_at(when):
                await self._waiter
        finally:
            self._waiter = None

    async def _head(self) -> None:
        while not self.head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    # ---- the body --------------------------------------------------------------------

    def _take(self) -> bytes:
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._conn.transport is not None:
            self._paused = False
            self._conn.transport.resume_reading()
        return data

    def iter_any(self) -> Response:
        """The body as it arrives: what each read brought (never empty), the chunked
        encoding removed. (The response is its own iterator: breaking out of the loop
        leaves no generator for the event loop to close.)"""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                return self._take()
            if self.complete:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        parts = [x async for x in self]
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    async def drain(self, timeout_s: float, max_bytes: int) -> None:
        """Read what is left (at most ``max_bytes``, ``timeout_s``) so that the connection
        can be kept; whatever does not end in time is cut when released."""
        left = max_bytes
        try:
            async with asyncio.timeout(timeout_s):
                async for data in self:
                    left -= len(data)
                    if left <= 0:
                        return
        except (TimeoutError, ConnectionError):
            pass

    def release(self) -> None:
        """Back to the pool when read to its end on a connection the server keeps open;
        closed otherwise."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.resp = None
        self._pool._back(conn, self.complete and not self._chunks and self._error is None
                         and not conn.closed and self._keep and not self._until_close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Pool:
    """Keep-alive connections to one ``host:port``."""

    def __init__(self, host: str, port: int, limit: int = 0) -> None:
        self.host, self.port = host, port
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self._closed = False

    def _back(self, conn: _Conn, reusable: bool) -> None:
        """A released connection: kept for the next request when ``reusable`` (and the pool
        is open), closed otherwise; its slot freed either way."""
        if reusable and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
        if self._slots is not None:
            self._slots.release()

    async def _connect(self, connect_s: float, deadline: float) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        wait = min(connect_s, deadline - loop.time())
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                _, conn = await loop.create_connection(_Conn, self.host, self.port)
        except TimeoutError:
            raise ConnectFailed(f"no connection to {self.host}:{self.port} within "
                                f"{connect_s:g} s") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: "
                                f"{e.strerror or type(e).__name__}") from None
        return conn

    async def request(self, head: bytes, body: bytes, *, connect_s: float, read_s: float,
                      deadline: float) -> Response:
        """Send ``head`` (from ``request_head``) with ``body``; the response once its head
        has come. Release it (``async with``) when done."""
        if self._slots is not None:
            await self._slots.acquire()
        try:
            conn = await self._connect(connect_s, deadline)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        resp = Response(self, conn, deadline, read_s)
        conn.resp = resp
        assert conn.transport is not None
        conn.transport.write(head + b"%d\r\n\r\n" % len(body) + body)
        try:
            await resp._head()
        except BaseException:
            resp.release()
            raise
        return resp

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
