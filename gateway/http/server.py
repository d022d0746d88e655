"""The HTTP server: uvicorn on httptools, with the limits uvicorn's protocol lacks.

uvicorn's httptools protocol takes request heads of any size and any number of headers,
and waits for ever for a head or a body that never completes (a ``Content-Length``
larger than the body sent hangs the request). ``LimitedHttpToolsProtocol`` adds, from
``server`` in the config:

- ``max_header_bytes``, ``max_headers``: a larger head gets 431 and the connection closes.
  The parser buffers a header until it ends, so the bytes of a head still incomplete are
  counted as they arrive and refused at the limit too, never held.
- ``header_timeout_s``: a head not complete in time, counted from the connection's
  opening or, on a kept-alive connection, from the request's first byte, gets 408 and the
  connection closes; a connection that sent nothing is closed without a word (a client
  may be about to send on it: a 408 there could be read as its answer).
- ``body_timeout_s``: the time to send the whole body once the head is in; then 408, the
  connection closes and the handler reading the body finds the client gone, with the
  scope marked ``TIMED_OUT`` so it records 408 rather than 499.

``keep_alive_s`` and ``max_connections`` are uvicorn's own ``timeout_keep_alive`` and
``limit_concurrency``. Cost per request: a counter and a comparison per read and per
header; a timer is armed only when a read leaves a request incomplete (a new connection
arms one for its first head), so a request that arrives in one read arms none.

``build_server`` makes the server ``switchyard serve`` runs (``serve``) and the tests start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar, cast

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.config import ServerConfig, Settings
from gateway.errors import HeadersTooLarge, RequestTimeout, SwitchyardError

log = logging.getLogger("switchyard.http")

TIMED_OUT = "switchyard.body_timed_out"
"""Set (True) in a request's ASGI scope when the server gave up waiting for its body."""

_IDLE, _HEAD, _BODY = 0, 1, 2  # where the connection is in the current request


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; ``data_received`` answers it."""

    def __init__(self, err: SwitchyardError) -> None:
        self.err = err


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head-size limits and head and body timeouts.
    ``protocol_for(settings.server)`` makes the subclass that carries the numbers."""

    max_header_bytes: ClassVar[int] = ServerConfig().max_header_bytes
    max_headers: ClassVar[int] = ServerConfig().max_headers
    header_timeout_s: ClassVar[float] = ServerConfig().header_timeout_s
    body_timeout_s: ClassVar[float] = ServerConfig().body_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._head_raw = 0  # bytes read since the last head completed, body bytes not counted
        self._head_size = 0  # header names and values of the current head
        self._timer: asyncio.TimerHandle | None = None

    # ---- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the refusals; then the head-size check and the timer."""
        if self._phase != _BODY:
            self._head_raw += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _Refused):  # raised by one of our callbacks
                self._refuse(e.__context__.err)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            self._cancel_timer()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase == _HEAD and self._head_raw > self.max_header_bytes:
            self._refuse(self._too_large())
        elif self._timer is None and (self._phase or self.cycle is None
                                      or self.cycle.response_complete):
            # a request left incomplete, or bytes that begin none on an idle connection
            delay = self.body_timeout_s if self._phase == _BODY else self.header_timeout_s
            self._timer = self.loop.call_later(delay, self._timed_out)

    # ---- parser callbacks ---------------------------------------------------------

    # per request: uvicorn's methods are called by name, a little cheaper than super()

    def on_message_begin(self) -> None:
        self._phase = _HEAD
        self._head_size = 0
        HttpToolsProtocol.on_message_begin(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, inline (it runs for every header), counting the bytes; the limits are
        # checked once the head is in, and meanwhile by data_received
        self._head_size += len(name) + len(value)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if (self._head_size + len(self.url) > self.max_header_bytes
                or len(self.headers) > self.max_headers):
            raise _Refused(self._too_large())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = _BODY
        self._head_raw = 0
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        HttpToolsProtocol.on_message_complete(self)

    # ---- refusals -----------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_large(self) -> HeadersTooLarge:
        if self.headers is not None and len(self.headers) > self.max_headers:
            return HeadersTooLarge(f"A request may have at most {self.max_headers} headers.")
        return HeadersTooLarge(
            f"The request's headers are larger than the {self.max_header_bytes}-byte limit.")

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # we stopped reading (flow control): not the client's delay
            self._timer = self.loop.call_later(self.header_timeout_s, self._timed_out)
        elif self._phase == _IDLE:  # nothing of a request came
            self.transport.close()
        else:
            what = "body" if self._phase == _BODY else "headers"
            self._refuse(RequestTimeout(f"The request's {what} did not arrive in time."))

    def _refuse(self, err: SwitchyardError) -> None:
        """Answer ``err`` where no other response is owed on this connection, and close.
        A request whose handler is waiting for its body finds the client gone."""
        self._cancel_timer()
        cycle = self.cycle
        if self._phase == _BODY and cycle is not None:
            answer = not self.pipeline and not cycle.response_started
            if isinstance(err, RequestTimeout):
                cast(dict[str, Any], cycle.scope)[TIMED_OUT] = True
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            answer = cycle is None or cycle.response_complete
        log.info("client %s: %d %s (connection closed)",
                 self.client and f"{self.client[0]}:{self.client[1]}", err.status, err.message)
        if answer:
            body = orjson.dumps(err.body())
            head = [STATUS_LINE[err.status]]
            head += [b"%s: %s\r\n" % h for h in self.server_state.default_headers]
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                        b"connection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_for(server: ServerConfig) -> type[LimitedHttpToolsProtocol]:
    """The protocol class with ``server``'s limits (uvicorn takes a class, not an object)."""

    class Protocol(LimitedHttpToolsProtocol):
        max_header_bytes = server.max_header_bytes
        max_headers = server.max_headers
        header_timeout_s = server.header_timeout_s
        body_timeout_s = server.body_timeout_s

    return Protocol


def build_server(app: Any, server: ServerConfig, **options: Any) -> uvicorn.Server:
    """uvicorn serving ``app`` with ``server``'s address and limits; ``options`` are more
    ``uvicorn.Config`` arguments (the tests' ``loop`` and ``log_level``, say)."""
    opts: dict[str, Any] = {
        "host": server.host, "port": server.port, "loop": "uvloop",
        "timeout_keep_alive": server.keep_alive_s, "limit_concurrency": server.max_connections,
        "proxy_headers": False, "server_header": False, **options,
    }
    return uvicorn.Server(uvicorn.Config(app, http=protocol_for(server), **opts))


def server_for(app: Any, settings: Settings, *, access_log: bool = False) -> uvicorn.Server:
    """The server ``switchyard serve`` runs: one process's, or each worker's."""
    return build_server(app, settings.server, log_level=settings.log_level,
                        access_log=access_log, timeout_graceful_shutdown=10)


def serve(app: Any, settings: Settings, *, access_log: bool = False) -> bool:
    """Run ``app`` until stopped (``switchyard serve``); False when it failed to start."""
    srv = server_for(app, settings, access_log=access_log)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it caught
        srv.run()
    return bool(srv.started)
