"""A small asyncio Redis client for the state store: commands packed and replies parsed by
hiredis (C), on a few long-lived connections that each carry many commands at once.

redis-py spends about 460 Python calls on each command (argument encoding, a pooled
connection checked out and back, two ``wait_for`` timeouts, observability hooks); a budget
request sends two. Here a command is ``hiredis.pack_command``, one ``transport.write`` and
a future that ``data_received`` resolves in order (Redis answers a connection's commands in
the order they came): about ten Python calls. The commands of concurrent requests share a
connection without waiting for each other (pipelined), which is also what lets one write
carry several of them when the loop is busy.

Errors are redis-py's classes, so the store's retry rules read the same for both clients:
a connection closed or reset is ``ConnectionError`` (every command in flight on it fails;
the next command opens a fresh connection), a reply later than ``timeout_s`` is
``TimeoutError`` (the connection is dropped: its later replies would be misread), Redis
still loading its data is ``BusyLoadingError``, any other error reply ``ResponseError``.
``evalsha`` answers ``NOSCRIPT`` (a restarted Redis has no scripts) by sending the script
itself with ``EVAL``, which also caches it: the script did not run, so resending is safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float
# hiredis' C packer (its stub types the tuple as one element)
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class Script:
    """A Lua script and its SHA-1 (what ``EVALSHA`` names it by)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names a script by its SHA-1


class _NotSent(RedisConnectionError):
    """The connection was found closed before the command was written: sending it on
    another is safe for any command."""


def _error(e: ResponseError) -> Exception:
    """The error reply as the class redis-py would raise."""
    msg = str(e)
    if msg.startswith("NOSCRIPT"):
        return NoScriptError(msg)
    if msg.startswith("LOADING"):
        return BusyLoadingError(msg)
    return e


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                fut = waiting.popleft()[0]
                if not fut.done():  # a caller cancelled waits no more; its reply is skipped
                    fut.set_result(reply)
        # a reply hiredis cannot read, or one nobody asked for (IndexError)
        except (hiredis.ProtocolError, UnicodeDecodeError, IndexError) as e:
            self.fail(RedisConnectionError(f"Protocol error from Redis ({type(e).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Connection closed by server."), close=False)

    # ---- the client's side -------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and \
            not self.transport.is_closing()

    def send(self, payload: bytes, commands: int = 1) -> list[asyncio.Future[Any]]:
        """Write ``payload`` (``commands`` packed commands); a future per reply."""
        if not self.usable():  # closed since it was chosen (asyncio's transport drops a
            raise _NotSent("Connection closed by server.")  # write after close silently)
        assert self.transport is not None
        try:
            self.transport.write(payload)
        except RuntimeError as e:  # uvloop: "the handler is closed"
            self.fail(RedisConnectionError("Connection closed by server."))
            raise _NotSent("Connection closed by server.") from e
        now = self.loop.time()
        futs = [self.loop.create_future() for _ in range(commands)]
        for f in futs:
            self.waiting.append((f, now))
        if self._timer is None:
            self._timer = self.loop.call_at(now + self.timeout_s, self._check)
        return futs

    def _check(self) -> None:
        """Every command gets ``timeout_s`` for its reply; one timer per connection, set
        for the oldest command still waiting (cheaper than a timer per command)."""
        self._timer = None
        if not self.waiting:
            return
        due = self.waiting[0][1] + self.timeout_s
        if self.loop.time() >= due:
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self.loop.call_at(due, self._check)

    def fail(self, e: Exception, *, close: bool = True) -> None:
        """The connection is unusable: every command waiting on it gets ``e``."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(type(e)(*e.args))
                fut.exception()  # retrieved: a caller that left no longer logs it
        if close and self.transport is not None:
            self.transport.abort()


class RespClient:
    """Connections to the Redis of ``url`` (``redis://``, ``rediss://`` or ``unix://``,
    with redis-py's query options: ``client_name``, ``db``, user and password), at most
    ``size`` of them; a command goes to the one with the fewest replies outstanding."""

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, timeout_s: float = 2.0,
                 size: int = 2) -> None:
        self.options: dict[str, Any] = dict(parse_url(url))
        self.tls = url.startswith("rediss://")
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.size = size
        self.commands = 0  # sent, for bench/budgets.py's round-trip count
        self._conns: list[_Connection] = []
        self._opening: asyncio.Task[_Connection] | None = None

    async def _open(self) -> _Connection:
        o, loop = self.options, asyncio.get_running_loop()

        def protocol() -> _Connection:
            return _Connection(self.timeout_s)

        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if "path" in o:
                    _, conn = await loop.create_unix_connection(protocol, o["path"])
                else:
                    tls = ssl.create_default_context() if self.tls else None
                    _, conn = await loop.create_connection(
                        protocol, o.get("host", "localhost"), int(o.get("port", 6379)), ssl=tls)
                hello: list[tuple[Arg, ...]] = []
                if o.get("password"):
                    user = o.get("username")
                    hello.append(("AUTH", user, o["password"]) if user else ("AUTH", o["password"]))
                if int(o.get("db", 0)):
                    hello.append(("SELECT", int(o["db"])))
                if o.get("client_name"):
                    hello.append(("CLIENT", "SETNAME", o["client_name"]))
                if hello:
                    packed = b"".join(_pack(c) for c in hello)
                    for reply in await asyncio.gather(*conn.send(packed, len(hello))):
                        if isinstance(reply, ResponseError):
                            raise RedisConnectionError(f"Redis refused the connection: {reply}")
        except BaseException as e:
            if conn is not None:
                conn.fail(RedisConnectionError("Connection not set up"))
            if isinstance(e, TimeoutError):  # the builtin: asyncio.timeout's
                raise RedisTimeoutError("Timeout connecting to Redis") from e
            if isinstance(e, OSError):
                raise RedisConnectionError(f"Cannot connect to Redis ({type(e).__name__})") from e
            raise
        return conn

    async def _connection(self) -> _Connection:
        """The live connection with the fewest replies outstanding; a new one while there
        are fewer than ``size`` and all are busy. Callers that find none wait on one
        opening, not one each (a burst after a restart opens one connection)."""
        conns = self._conns
        if conns and not conns[0].waiting and conns[0].usable():  # the usual case when idle
            return conns[0]
        for _ in range(3):
            live = [c for c in self._conns if c.usable()]
            if len(live) != len(self._conns):
                self._conns = live
            best = min(live, key=lambda c: len(c.waiting)) if live else None
            if best is not None and (not best.waiting or len(live) >= self.size):
                return best
            opening = self._opening
            if opening is None or opening.done():  # done: its callback has not run yet
                opening = self._opening = asyncio.ensure_future(self._open())
                opening.add_done_callback(self._opened)
            if best is not None:  # busy, and another opening: use this one meanwhile
                return best
            conn = await asyncio.shield(opening)
            if conn.usable():  # Redis may have closed it between its set-up and now
                return conn
        raise _NotSent("Connection closed by server.")

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        if self._opening is task:
            self._opening = None
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()
        if sum(c.usable() for c in self._conns) >= self.size:
            conn.fail(RedisConnectionError("Client has enough connections"))
        else:
            self._conns.append(conn)

    async def _send(self, payload: bytes, commands: int) -> list[asyncio.Future[Any]]:
        self.commands += commands
        for _ in range(2):
            try:
                return (await self._connection()).send(payload, commands)
            except _NotSent:  # that connection is gone now: the next is a fresh one
                pass
        return (await self._connection()).send(payload, commands)

    async def execute(self, *args: Arg) -> Any:
        """One command; its reply (bulk strings decoded as UTF-8), or its error raised."""
        reply = await (await self._send(_pack(args), 1))[0]
        if isinstance(reply, ResponseError):
            raise _error(reply)
        return reply

    async def execute_many(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Several commands in one write (a pipeline, not a transaction); every reply, or
        the first error raised."""
        payload = b"".join(_pack(c) for c in commands)
        replies = [await f for f in await self._send(payload, len(commands))]
        for r in replies:
            if isinstance(r, ResponseError):
                raise _error(r)
        return replies

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run ``script`` by its SHA-1; one Redis does not have yet is sent whole."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def scan(self, pattern: str, count: int = 500) -> list[str]:
        found: list[str] = []
        cursor = "0"
        while True:
            cursor, keys = await self.execute("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            found.extend(keys)
            if cursor == "0":
                return found

    async def aclose(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        for c in self._conns:
            c.fail(RedisConnectionError("Client closed"))
        self._conns = []
