"""Streaming relay: a fixed streamed answer (a role chunk, 256 content chunks, a finish
chunk, a usage chunk, ``[DONE]``) from ``upstream.py``, read directly and through three
relays, at 1 and 32 concurrent streams, with the chunks sent in one burst and with
``--spacing-ms`` between them.

    python bench/streaming.py [--seconds 8] [--spacing-ms 5] [--portkey DIR] [--json out.json]

The relays, each one process pinned to CPU 0 (the upstream and the load generator share
CPU 1):

- ``switchyard``: ``switchyard serve`` of the current directory, configured as
  ``overhead.py``'s (accounting on: pricing, energy, SQLite ledger, metrics; ``EXTRA_CONFIG``
  appended), the client asking for usage (``stream_options``);
- ``raw``: uvicorn + Starlette + aiohttp passing the upstream's bytes through untouched
  (``--raw-relay PORT UPSTREAM_PORT`` runs it): the floor a Python relay can reach;
- ``portkey``: Portkey's gateway (``npm install @portkey-ai/gateway@1.15.2`` into DIR),
  ``--port=PORT --headless`` with ``NODE_ENV=production``, proxying to the upstream through
  ``x-portkey-provider: openai`` and ``x-portkey-custom-host``; a relay whose streams fail
  is reported with its first error, not measured.

Per cell: streams/s completed, chunks/s relayed (``data:`` events the client read), time
to first token (the first content chunk) p50 and p99 and what the relay adds to it (p50
against direct at the same concurrency), and the relay's CPU per chunk (its process' user
+ system time over the cell / chunks relayed). A stream that ends without ``[DONE]`` or
with fewer events than the answer has is an error and makes the script exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overhead import cpu_s, free_port, gateway_config, pin, stop, wait_port
from provenance import header

PY = sys.executable
CHUNKS = 256
EVENTS = CHUNKS + 4  # role, content x 256, finish, usage, [DONE]
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello"}],
                   "stream": True, "stream_options": {"include_usage": True}}).encode()


# ---- the raw relay (a subprocess: --raw-relay) --------------------------------------------

def raw_relay(port: int, up_port: int) -> None:
    import aiohttp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}
    url = f"http://127.0.0.1:{up_port}/v1/chat/completions"

    async def relay(request: Request) -> StreamingResponse:
        body = await request.body()
        resp = await state["s"].post(url, data=body, headers={"content-type": "application/json"})

        async def chunks() -> Any:
            try:
                async for data in resp.content.iter_any():
                    yield data
            finally:
                resp.release()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            state["s"] = s
            yield

    app = Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"])],
                    lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop",
                http="httptools")


# ---- the load generator (a subprocess on CPU 1) --------------------------------------------

CLIENT = r"""
import asyncio, json, sys, time, aiohttp
url, conns, seconds, headers, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5].encode()
EVENTS = int(sys.argv[6])
async def main():
    ttft = []; done = 0; chunks = 0; errors = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(60)) as s:
        end = time.perf_counter() + seconds
        async def worker():
            nonlocal done, chunks
            while time.perf_counter() < end:
                t0 = time.perf_counter(); first = None; n = 0; tail = b""
                try:
                    async with s.post(url, data=body, headers=headers) as r:
                        if r.status != 200:
                            errors.append(f"{r.status} {(await r.read())[:200]!r}"); continue
                        async for data in r.content.iter_any():
                            if first is None and b'"content":"tok' in data:
                                first = time.perf_counter() - t0
                            n += data.count(b"data: ")
                            tail = (tail + data)[-64:]
                except (aiohttp.ClientError, OSError) as e:
                    errors.append(type(e).__name__); continue
                chunks += n
                if n != EVENTS or b"[DONE]" not in tail or first is None:
                    errors.append(f"short stream: {n} events"); continue
                done += 1; ttft.append(first)
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(conns)])
        dur = time.perf_counter() - t0
    ttft.sort()
    print(json.dumps({"streams_s": done / dur, "chunks_s": chunks / dur, "streams": done,
                      "chunks": chunks, "errors": len(errors), "first_error": errors[0] if errors else "",
                      "ttft_p50_ms": ttft[len(ttft) // 2] * 1e3 if ttft else 0.0,
                      "ttft_p99_ms": ttft[int(len(ttft) * .99)] * 1e3 if ttft else 0.0}))
asyncio.run(main())
"""


def load(url: str, conns: int, seconds: float, pid: int | None,
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    c0 = cpu_s(pid) if pid else 0.0
    out = subprocess.run(
        [*pin(1), PY, "-c", CLIENT, url, str(conns), str(seconds),
         json.dumps({"content-type": "application/json", "authorization": "Bearer sk-bench",
                     **(headers or {})}), BODY.decode(), str(EVENTS)],
        capture_output=True, text=True, check=True).stdout
    r: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if pid and r["chunks"]:
        r["cpu_us_per_chunk"] = (cpu_s(pid) - c0) / r["chunks"] * 1e6
    return r


def start_relays(up_port: int, tmp: Path, portkey: str | None,
                 procs: list[subprocess.Popen[bytes]],
                 ) -> dict[str, tuple[subprocess.Popen[bytes], str, dict[str, str]]]:
    """Start the relays (each appended to ``procs`` at once, so a failed start stops
    them all) and wait until they listen."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    cfg = tmp / "gw.yaml"
    cfg.write_text(gateway_config(up_port, "sqlite", tmp / "ledger.sqlite3"))
    relays: dict[str, tuple[subprocess.Popen[bytes], str, dict[str, str]]] = {}
    port = free_port()
    relays["switchyard"] = (subprocess.Popen(
        [*pin(0), PY, "-m", "gateway.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env), f"http://127.0.0.1:{port}/v1/chat/completions", {})
    port = free_port()
    relays["raw"] = (subprocess.Popen(
        [*pin(0), PY, str(Path(__file__).resolve()), "--raw-relay", str(port), str(up_port)]),
        f"http://127.0.0.1:{port}/v1/chat/completions", {})
    if portkey:
        port = free_port()
        main = Path(portkey) / "node_modules/@portkey-ai/gateway/build/start-server.js"
        relays["portkey"] = (subprocess.Popen(
            [*pin(0), "node", str(main), f"--port={port}", "--headless"],
            env={**env, "NODE_ENV": "production"}),
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"x-portkey-provider": "openai",
             "x-portkey-custom-host": f"http://127.0.0.1:{up_port}/v1"})
    procs += [p for p, _, _ in relays.values()]
    for _, url, _ in relays.values():
        wait_port(int(url.split(":")[2].split("/")[0]))
    time.sleep(1)
    return relays


def cells(args: argparse.Namespace, spacing_ms: float) -> list[dict[str, Any]]:
    up_port = free_port()
    tmp = Path(tempfile.mkdtemp())
    procs = [subprocess.Popen([*pin(1), PY, str(HERE / "upstream.py"), str(up_port),
                               "--stream-chunks", str(CHUNKS),
                               "--stream-interval-ms", str(spacing_ms)])]
    rows = []
    try:
        wait_port(up_port)
        relays = start_relays(up_port, tmp, args.portkey, procs)
        for conns in (1, 32):
            direct = load(f"http://127.0.0.1:{up_port}/v1/chat/completions", conns,
                          args.seconds, None)
            rows.append({"spacing_ms": spacing_ms, "conns": conns, "via": "direct", **direct})
            for name, (p, url, headers) in relays.items():
                load(url, conns, 1.0, None, headers)  # warm up
                r = load(url, conns, args.seconds, p.pid, headers)
                r["ttft_added_ms"] = r["ttft_p50_ms"] - direct["ttft_p50_ms"]
                rows.append({"spacing_ms": spacing_ms, "conns": conns, "via": name, **r})
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--raw-relay":
        raw_relay(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--spacing-ms", type=float, default=5.0,
                    help="between chunks in the spaced runs (5 ms: 200 tokens/s)")
    ap.add_argument("--portkey", metavar="DIR", help="where @portkey-ai/gateway is installed")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = cells(args, 0.0) + cells(args, args.spacing_ms)
    print(header())
    print(f"streams of {EVENTS} events ({CHUNKS} content chunks); relays on CPU 0, upstream "
          f"and client on CPU 1; {args.seconds:g} s per cell")
    print(f"{'spacing':>8} {'conns':>5} {'via':>11} {'streams/s':>10} {'chunks/s':>10} "
          f"{'TTFT p50':>9} {'p99':>8} {'TTFT added':>11} {'CPU/chunk':>10} {'errors':>7}")
    for r in rows:
        cpu = f"{r['cpu_us_per_chunk']:.1f} us" if "cpu_us_per_chunk" in r else "-"
        added = f"{r['ttft_added_ms']:.2f} ms" if "ttft_added_ms" in r else "-"
        print(f"{r['spacing_ms']:>6g}ms {r['conns']:>5} {r['via']:>11} {r['streams_s']:>10.1f} "
              f"{r['chunks_s']:>10.0f} {r['ttft_p50_ms']:>6.2f} ms {r['ttft_p99_ms']:>5.1f} ms "
              f"{added:>11} {cpu:>10} {r['errors']:>7}")
    for r in rows:
        if r["errors"]:
            print(f"FAIL: {r['via']} at {r['conns']} streams, spacing {r['spacing_ms']:g} ms: "
                  f"{r['errors']} errors, first: {r['first_error']}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.exit(1 if any(r["errors"] for r in rows) else 0)


if __name__ == "__main__":
    main()
