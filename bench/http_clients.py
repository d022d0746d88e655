"""Which HTTP client for the backends' hot path? Requests/s at 32 concurrent requests.

A fixed-response upstream (aiohttp.web, in its own process) on loopback; each client sends
POSTs of a small chat body for ``--seconds`` with ``--concurrency`` workers over one shared
client, after a short warm-up:

* httpx.AsyncClient, default transport (encode/httpx#3215: its pool collapses under
  concurrency)
* httpx.AsyncClient over httpx_aiohttp's AiohttpTransport (httpx's API, aiohttp's pool)
* aiohttp.ClientSession
* ``plugins.http11.Pool``, the lean HTTP/1.1 client ``openai_compatible`` uses for
  ``http://`` upstreams

Each row also gives the client process' CPU per request (user + system).

Run: ``python bench/http_clients.py [--seconds 3] [--concurrency 32]``. Timing goals live
here, never in tests. Figures depend on the machine; report them with its core count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from provenance import header

BODY = (b'{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":8}')
ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":'
          b'[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}')

UPSTREAM = f"""
from aiohttp import web
async def h(request):
    await request.read()
    return web.Response(body={ANSWER!r}, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", h)
web.run_app(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), print=None,
            access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port)])
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("upstream did not start")


CPU_PER_REQUEST: list[float] = []


async def drive(send: Callable[[], Awaitable[None]], seconds: float, concurrency: int) -> float:
    """Requests/s over ``seconds`` after a 0.5 s warm-up; the process' CPU per request over
    the same window goes to ``CPU_PER_REQUEST``."""
    count = 0
    counting = False
    stop = False

    async def worker() -> None:
        nonlocal count
        while not stop:
            await send()
            if counting:
                count += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)
    counting = True
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    counting = False
    elapsed = time.perf_counter() - t0
    CPU_PER_REQUEST.append((time.process_time() - c0) / max(count, 1))
    stop = True
    await asyncio.gather(*tasks)
    return count / elapsed


async def bench_httpx(url: str, seconds: float, c: int) -> float:
    import httpx

    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(limits=limits) as client:
        async def send() -> None:
            r = await client.post(url, content=BODY, headers={"content-type": "application/json"})
            r.raise_for_status()
        return await drive(send, seconds, c)


async def bench_httpx_aiohttp(url: str, seconds: float, c: int) -> float:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        async def send() -> None:
            r = await client.post(url, content=BODY, headers={"content-type": "application/json"})
            r.raise_for_status()
        return await drive(send, seconds, c)


async def bench_aiohttp(url: str, seconds: float, c: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
        async def send() -> None:
            async with session.post(url, data=BODY,
                                    headers={"content-type": "application/json"}) as r:
                r.raise_for_status()
                await r.read()
        return await drive(send, seconds, c)


async def bench_http11(url: str, seconds: float, c: int) -> float:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from urllib.parse import urlsplit

    from plugins.http11 import Pool, request_head

    u = urlsplit(url)
    assert u.hostname and u.port
    pool = Pool(u.hostname, u.port, limit=c)
    head = request_head("POST", u.path, u.netloc, {"content-type": "application/json"})
    loop = asyncio.get_running_loop()

    async def send() -> None:
        r = await pool.request(head, BODY, connect_s=5.0, read_s=30.0, deadline=loop.time() + 30)
        async with r:
            if r.status >= 400:
                raise RuntimeError(r.status)
            await r.read()
    try:
        return await drive(send, seconds, c)
    finally:
        pool.close()


CLIENTS = {
    "httpx.AsyncClient (default transport)": bench_httpx,
    "httpx + httpx_aiohttp.AiohttpTransport": bench_httpx_aiohttp,
    "aiohttp.ClientSession": bench_aiohttp,
    "plugins.http11.Pool": bench_http11,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    port = free_port()
    proc = start_upstream(port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        rows = []
        for name, fn in CLIENTS.items():
            rps = asyncio.run(fn(url, args.seconds, args.concurrency))
            rows.append((name, rps, CPU_PER_REQUEST[-1]))
    finally:
        proc.terminate()
        proc.wait(10)
    print(header())
    print(f"{args.concurrency} concurrent, {args.seconds:g} s each, {os.cpu_count()} cores, "
          "upstream aiohttp.web in its own process")
    print(f"{'client':42} {'requests/s':>12} {'CPU us/request':>15}")
    for name, rps, cpu in rows:
        print(f"{name:42} {rps:12,.0f} {cpu * 1e6:15.1f}")


if __name__ == "__main__":
    main()
