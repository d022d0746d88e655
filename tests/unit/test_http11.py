"""``plugins.http11``, the lean HTTP/1.1 client of plain-HTTP upstreams, against a real
socket server that writes scripted bytes: keep-alive, chunked bodies, bodies that end with
the connection, servers that close or stall mid-response, bad responses, the pool's limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from plugins.http11 import ConnectFailed, Pool, Response, request_head

Script = Callable[[bytes], list[bytes | float | None]]  # bytes: write, float: sleep, None: close


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """A server answering each request (head and body read by Content-Length) with the
    script's steps; yields its port and the client ports of the requests it got."""
    peers: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await r.readexactly(length)
                peers.append(w.get_extra_info("peername")[1])
                for step in script(body):
                    if step is None:
                        w.close()
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        w.write(step)
                        await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            w.close()  # (cancelled: the test is over and its loop closing)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield port, peers
    finally:
        srv.close()


def head(port: int) -> bytes:
    return request_head("POST", "/v1/x", f"127.0.0.1:{port}", {"content-type": "application/json"})


async def post(pool: Pool, port: int, body: bytes = b"{}", read_s: float = 5.0) -> Response:
    loop = asyncio.get_running_loop()
    return await pool.request(head(port), body, connect_s=2.0, read_s=read_s,
                              deadline=loop.time() + 10.0)


def fixed(body: bytes, extra: bytes = b"") -> list[bytes | float | None]:
    return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n" % (len(body), extra) + body]


def chunked(*parts: bytes) -> list[bytes | float | None]:
    steps: list[bytes | float | None] = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
    for p in parts:
        steps += [b"%x\r\n%s\r\n" % (len(p), p), 0.005]
    return [*steps, b"0\r\n\r\n"]


async def test_a_connection_is_reused_once_its_response_is_read() -> None:
    async with server(lambda body: fixed(b'{"echo": ' + body + b"}")) as (port, peers):
        pool = Pool("127.0.0.1", port)
        for i in range(4):
            async with await post(pool, port, b"%d" % i) as r:
                assert r.status == 200 and r.headers["content-length"] == str(len(b'{"echo": 0}'))
                assert await r.read() == b'{"echo": %d}' % i
        assert len(peers) == 4 and len(set(peers)) == 1
        pool.close()


async def test_a_chunked_body_arrives_as_it_is_written_without_its_framing() -> None:
    parts = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
    async with server(lambda _: chunked(*parts)) as (port, peers):
        pool = Pool("127.0.0.1", port)
        for _ in range(2):
            async with await post(pool, port) as r:
                reads = [x async for x in r.iter_any()]
                assert b"".join(reads) == b"".join(parts)
                assert len(reads) == 3  # each write its own read: nothing held back
                assert r.at_eof()
        assert len(set(peers)) == 1  # kept after a chunked body too
        pool.close()


async def test_a_response_not_read_to_its_end_closes_its_connection() -> None:
    async with server(lambda _: chunked(b"a" * 10, b"b" * 10)) as (port, peers):
        pool = Pool("127.0.0.1", port)
        async with await post(pool, port) as r:
            async for _ in r.iter_any():
                break
        async with await post(pool, port) as r:
            await r.read()
        assert len(set(peers)) == 2
        pool.close()


async def test_drain_reads_the_end_so_the_connection_is_kept() -> None:
    async with server(lambda _: chunked(b"data: [DONE]\n\n")) as (port, peers):
        pool = Pool("127.0.0.1", port)
        for _ in range(3):
            async with await post(pool, port) as r:
                async for x in r.iter_any():
                    assert x == b"data: [DONE]\n\n"
                    await r.drain(1.0, 65536)  # the end comes in a later write
                    break
        assert len(set(peers)) == 1
        pool.close()


async def test_connection_close_and_a_body_until_close_are_not_reused() -> None:
    steps = {b"1": fixed(b"one", b"connection: close\r\n"),
             b"2": [b"HTTP/1.1 200 OK\r\n\r\nuntil the end", None]}
    async with server(lambda body: steps[body]) as (port, peers):
        pool = Pool("127.0.0.1", port)
        async with await post(pool, port, b"1") as r:
            assert await r.read() == b"one"
        async with await post(pool, port, b"2") as r:
            assert await r.read() == b"until the end"
        async with await post(pool, port, b"1") as r:
            assert await r.read() == b"one"
        assert len(set(peers)) == 3
        pool.close()


async def test_a_server_that_closes_mid_body_is_a_connection_error() -> None:
    steps = [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", None]
    async with server(lambda _: steps) as (port, _peers):
        pool = Pool("127.0.0.1", port)
        async with await post(pool, port) as r:
            with pytest.raises(ConnectionResetError):
                await r.read()
        pool.close()


async def test_a_stalled_server_is_a_timeout_and_a_refused_connect_a_connect_failure() -> None:
    steps = {b"part": [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", 2.0],
             b"none": [2.0]}
    async with server(lambda body: steps[body]) as (port, _peers):
        pool = Pool("127.0.0.1", port)
        async with await post(pool, port, b"part", read_s=0.2) as r:
            with pytest.raises(TimeoutError):
                await r.read()
        with pytest.raises(TimeoutError):  # no head at all
            await post(pool, port, b"none", read_s=0.2)
        pool.close()
    with pytest.raises(ConnectFailed):
        await post(Pool("127.0.0.1", port), port)


async def test_a_response_that_is_not_http_is_a_connection_error() -> None:
    async with server(lambda _: [b"SSH-2.0-OpenSSH\r\n\r\n", 1.0]) as (port, _peers):
        with pytest.raises(ConnectionError, match="not HTTP"):
            await post(Pool("127.0.0.1", port), port)


async def test_the_pool_limit_holds_a_request_until_a_connection_is_free() -> None:
    async with server(lambda _: [0.2, *fixed(b"ok")]) as (port, peers):
        pool = Pool("127.0.0.1", port, limit=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one() -> bytes:
            async with await post(pool, port) as r:
                return await r.read()

        assert await asyncio.gather(one(), one()) == [b"ok", b"ok"]
        assert loop.time() - t0 >= 0.4  # one after the other
        assert len(set(peers)) == 1
        pool.close()


def test_a_header_that_could_split_the_request_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid HTTP header"):
        request_head("POST", "/", "h", {"x-key": "a\r\nx-other: b"})
    with pytest.raises(ValueError, match="invalid HTTP header"):
        request_head("POST", "/", "h", {"bad name": "v"})
