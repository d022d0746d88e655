"""Streaming relay: a fixed streamed answer (a role chunk, 256 content chunks, a finish
chunk, a usage chunk, ``[DONE]``) from ``upstream.py``, read directly and through three
relays, at 1 and 32 concurrent streams, with the chunks sent in one burst and with
``--spacing-ms`` between them.

    python bench/streaming.py [--seconds 8] [--spacing-ms 5] [--portkey DIR] [--json out.json]
        [--tree DIR ...] [--rounds N] [--cells burst,spaced] [--conns 1,32] [--calls N]
        [--chunks 256] [--nice -15] [--rt] [--first-byte N]

The relays, each one process pinned to CPU 0 (the upstream and the load generator share
CPU 1):

- ``switchyard``: ``switchyard serve`` of this checkout, configured as ``overhead.py``'s
  (accounting on: pricing, energy, SQLite ledger, metrics; ``EXTRA_CONFIG`` appended), the
  client asking for usage (``stream_options``); with ``--tree DIR`` (repeatable) one such
  relay per checkout (``git worktree add /tmp/before REV``), named by its directory, run
  with this .venv, so a change is measured before and after in one sitting;
- ``raw``: uvicorn + Starlette + aiohttp passing the upstream's bytes through untouched
  (``--raw-relay PORT UPSTREAM_PORT`` runs it): the floor a Python relay can reach;
- ``portkey``: Portkey's gateway (``npm install @portkey-ai/gateway@1.15.2`` into DIR),
  ``--port=PORT --headless`` with ``NODE_ENV=production``, proxying to the upstream through
  ``x-portkey-provider: openai`` and ``x-portkey-custom-host`` (its log discarded); a relay
  whose streams fail is reported with its first error, not measured.

Per cell: streams/s completed, chunks/s relayed (``data:`` events the client read), time
to first token (the first content chunk) p50 and p99 and what the relay adds to it (p50
against direct at the same concurrency; and the least against the least, which a loaded
machine's scheduling moves least), the relay's CPU per chunk (its process' user
+ system time over the cell / chunks relayed) and, at one stream, its event loop's CPU
time from a request to its first token (``/proc/PID/schedstat``, p50: what it adds to the
time to first token on an idle core, the load aside). A stream that ends without ``[DONE]`` or
with fewer events than the answer has is an error and makes the script exit 1.
``--rounds N`` measures every cell N times, the relays in turn each time (alternating).
``--nice -15`` (root) runs everything at that niceness, and this session's autogroup (as
``workers.py``), so that on a machine other sessions load the cells get their cores;
``--rt`` runs the relays, the upstream and the client under SCHED_FIFO, so that at one
stream the time to first token is the processes' own, not the scheduler's (as
``overhead.py --rt``). ``--chunks`` shortens the answer: more streams per cell at one
stream with spacing, for the time to first token.

``--calls N`` measures instead the Python function calls per chunk of each Switchyard
tree and of the raw relay: each under cProfile relays N and then 3N bursts (8 at a time),
and the difference over 2N streams' chunks is the relay's own, start-up and shutdown left
out.
Unlike streams/s or CPU time the count does not move with the machine's load.

``--first-byte N`` measures the path to the first byte instead: each tree's gateway with a
probe (``--probe-serve``: uvicorn's request start and its first body write, patched), N
streams one at a time; the Python and C calls from a request's head to its first byte
(``sys.setprofile``, the other tasks that ran in that window included) and, in a second
run without the profiler, the main thread's CPU and wall time over it (p50). In the
burst cell (``--cells burst``) that is the time to first token's whole path; with
spacing, the part before the upstream's first token is sent overlaps the wait for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import shutil
import statistics
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
from workers import set_autogroup_nice

PY = sys.executable
RT: list[str] = []  # --rt: every process of the benchmark under SCHED_FIFO


def place(cpu: int) -> list[str]:
    """The command prefix that runs a process on ``cpu`` (and under SCHED_FIFO with --rt)."""
    return [*RT, *pin(cpu)]
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


# ---- the gateway's path to its first byte (a subprocess: --probe-serve) ---------------------

def probe_serve(out: str, mode: str, argv: list[str]) -> None:
    """``switchyard serve ARGV`` with a probe on each request, from the first byte of its head
    (uvicorn's ``on_message_begin``) to the first byte of body it sends: the main thread's
    CPU and wall time (``mode`` "time"), or every Python and C call made in that window,
    other tasks' included ("calls", ``sys.setprofile``). Written to ``out`` at exit."""
    import atexit

    import uvicorn.protocols.http.httptools_impl as h

    from gateway.cli import main as cli

    times: list[tuple[float, float]] = []
    calls = [0, 0]  # calls, requests
    at = [0.0, 0.0, 0.0]  # on: 1.0 while a request is in its window; wall, CPU at its start

    def count(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            calls[0] += 1

    begin, send = h.HttpToolsProtocol.on_message_begin, h.RequestResponseCycle.send

    def on_message_begin(self: Any) -> None:
        at[:] = [1.0, time.perf_counter(), time.thread_time()]
        if mode == "calls":
            calls[1] += 1
            sys.setprofile(count)
        begin(self)

    async def first_send(self: Any, message: Any) -> None:
        if at[0] and message["type"] == "http.response.body" and message.get("body"):
            sys.setprofile(None)
            times.append((time.perf_counter() - at[1], time.thread_time() - at[2]))
            at[0] = 0.0
        await send(self, message)

    h.HttpToolsProtocol.on_message_begin = on_message_begin  # type: ignore[method-assign]
    h.RequestResponseCycle.send = first_send  # type: ignore[method-assign]
    atexit.register(lambda: Path(out).write_text(json.dumps({"times": times, "calls": calls})))
    sys.exit(cli(argv))


def first_byte(trees: list[Path], n: int, spacing_ms: float) -> None:
    """Each tree's gateway under ``probe_serve``, ``n`` streams one at a time (after 50 to
    warm up): the calls and the CPU (p50) from a request's head to its first byte."""
    tmp = Path(tempfile.mkdtemp())
    for i, tree in enumerate(trees):
        got = {}
        for mode in ("calls", "time"):
            up_port, port = free_port(), free_port()
            cfg, out = tmp / f"fb{i}{mode}.yaml", tmp / f"fb{i}{mode}.json"
            cfg.write_text(gateway_config(up_port, "sqlite", tmp / f"fb{i}{mode}.sqlite3"))
            env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(tree)}
            procs = [upstream(up_port, spacing_ms)]
            try:
                procs.append(subprocess.Popen(
                    [*place(0), PY, str(Path(__file__).resolve()), "--probe-serve", str(out),
                     mode, "serve", "--config", str(cfg), "--port", str(port)],
                    cwd=tree, env=env))
                wait_port(up_port)
                wait_port(port)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for streams in (50, n):
                    r = load(url, 1, 600, None, limit=streams)
                    if r["errors"] or r["streams"] != streams:
                        raise SystemExit(f"{tree}: {r['errors']} errors, first: {r['first_error']}")
            finally:
                stop(procs)
            got[mode] = json.loads(out.read_text())
        (made, requests), times = got["calls"]["calls"], got["time"]["times"][50:]
        print(f"{tree}: {made / requests:.0f} Python and C calls from a request's head to its "
              f"first byte; main thread CPU p50 {statistics.median(c for _, c in times) * 1e6:.0f} "
              f"us, wall p50 {statistics.median(w for w, _ in times) * 1e6:.0f} us ({n} streams "
              f"one at a time, {spacing_ms:g} ms apart, load {os.getloadavg()[0]:.1f})")
    shutil.rmtree(tmp, ignore_errors=True)


# ---- the load generator (a subprocess on CPU 1) --------------------------------------------

CLIENT = r"""
import asyncio, json, sys, time, aiohttp
url, conns, seconds, headers, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5].encode()
EVENTS, LIMIT = int(sys.argv[6]), int(sys.argv[7])  # LIMIT: streams to start (0: no limit)
PID = int(sys.argv[8])  # the relay: its main thread's CPU time up to each first token
def oncpu():
    if not PID: return 0.0
    with open(f"/proc/{PID}/schedstat") as f: return int(f.read().split()[0]) / 1e3
async def main():
    ttft = []; done = 0; chunks = 0; errors = []; started = 0; first_cpu = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(60)) as s:
        end = time.perf_counter() + seconds
        async def worker():
            nonlocal done, chunks, started
            while time.perf_counter() < end and (not LIMIT or started < LIMIT):
                started += 1
                t0 = time.perf_counter(); first = None; n = 0; tail = b""; c0 = oncpu()
                try:
                    async with s.post(url, data=body, headers=headers) as r:
                        if r.status != 200:
                            errors.append(f"{r.status} {(await r.read())[:200]!r}"); continue
                        async for data in r.content.iter_any():
                            if first is None and b'"content":"tok' in data:
                                first = time.perf_counter() - t0
                                first_cpu.append(oncpu() - c0)
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
    ttft.sort(); first_cpu.sort()
    print(json.dumps({"streams_s": done / dur, "chunks_s": chunks / dur, "streams": done,
                      "chunks": chunks, "errors": len(errors), "first_error": errors[0] if errors else "",
                      "ttft_min_ms": ttft[0] * 1e3 if ttft else 0.0,
                      "first_token_cpu_us": first_cpu[len(first_cpu) // 2] if first_cpu else 0.0,
                      "ttft_p50_ms": ttft[len(ttft) // 2] * 1e3 if ttft else 0.0,
                      "ttft_p99_ms": ttft[int(len(ttft) * .99)] * 1e3 if ttft else 0.0}))
asyncio.run(main())
"""


def load(url: str, conns: int, seconds: float, pid: int | None,
         headers: dict[str, str] | None = None, limit: int = 0) -> dict[str, Any]:
    c0 = cpu_s(pid) if pid else 0.0
    out = subprocess.run(
        [*place(1), PY, "-c", CLIENT, url, str(conns), str(seconds),
         json.dumps({"content-type": "application/json", "authorization": "Bearer sk-bench",
                     **(headers or {})}), BODY.decode(), str(EVENTS), str(limit),
         str(pid if pid and conns == 1 else 0)],
        capture_output=True, text=True, check=True).stdout
    r: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if pid and r["chunks"]:
        r["cpu_us_per_chunk"] = (cpu_s(pid) - c0) / r["chunks"] * 1e6
    if not r["first_token_cpu_us"]:
        del r["first_token_cpu_us"]
    return r


def gateway(tree: Path, cfg: Path, port: int, prefix: tuple[str, ...] = ()
            ) -> subprocess.Popen[bytes]:
    """``switchyard serve`` of ``tree`` (its own code first on the path) on CPU 0."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": os.pathsep.join(
        x for x in (str(tree), os.environ.get("PYTHONPATH", "")) if x)}
    return subprocess.Popen([*place(0), PY, *prefix, "-m", "gateway.cli", "serve", "--config",
                             str(cfg), "--port", str(port)], cwd=tree, env=env)


def relay_names(trees: list[Path]) -> list[str]:
    return ["switchyard"] if len(trees) == 1 else [f"sy:{t.name}" for t in trees]


def start_relays(up_port: int, tmp: Path, portkey: str | None, trees: list[Path],
                 procs: list[subprocess.Popen[bytes]],
                 ) -> dict[str, tuple[subprocess.Popen[bytes], str, dict[str, str]]]:
    """Start the relays (each appended to ``procs`` at once, so a failed start stops
    them all) and wait until they listen."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    relays: dict[str, tuple[subprocess.Popen[bytes], str, dict[str, str]]] = {}
    for i, (tree, name) in enumerate(zip(trees, relay_names(trees), strict=True)):
        cfg = tmp / f"gw{i}.yaml"
        cfg.write_text(gateway_config(up_port, "sqlite", tmp / f"ledger{i}.sqlite3"))
        port = free_port()
        p = gateway(tree, cfg, port)
        procs.append(p)
        relays[name] = (p, f"http://127.0.0.1:{port}/v1/chat/completions", {})
    port = free_port()
    relays["raw"] = (subprocess.Popen(
        [*place(0), PY, str(Path(__file__).resolve()), "--raw-relay", str(port), str(up_port)]),
        f"http://127.0.0.1:{port}/v1/chat/completions", {})
    if portkey:
        port = free_port()
        main = Path(portkey) / "node_modules/@portkey-ai/gateway/build/start-server.js"
        relays["portkey"] = (subprocess.Popen(
            [*place(0), "node", str(main), f"--port={port}", "--headless"],
            env={**env, "NODE_ENV": "production"}, stdout=subprocess.DEVNULL),
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"x-portkey-provider": "openai",
             "x-portkey-custom-host": f"http://127.0.0.1:{up_port}/v1"})
    procs += [p for p, _, _ in relays.values() if p not in procs]
    for _, url, _ in relays.values():
        wait_port(int(url.split(":")[2].split("/")[0]))
    time.sleep(1)
    return relays


def upstream(port: int, spacing_ms: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*place(1), PY, str(HERE / "upstream.py"), str(port),
                             "--stream-chunks", str(CHUNKS), "--stream-interval-ms",
                             str(spacing_ms)])


def cells(args: argparse.Namespace, spacing_ms: float) -> list[dict[str, Any]]:
    up_port = free_port()
    tmp = Path(tempfile.mkdtemp())
    procs = [upstream(up_port, spacing_ms)]
    rows = []
    try:
        wait_port(up_port)
        relays = start_relays(up_port, tmp, args.portkey, args.tree, procs)
        for conns in args.conns:
            for n in range(args.rounds):
                direct = load(f"http://127.0.0.1:{up_port}/v1/chat/completions", conns,
                              args.seconds, None)
                rows.append({"spacing_ms": spacing_ms, "conns": conns, "round": n,
                             "via": "direct", "load": os.getloadavg()[0], **direct})
                for name, (p, url, headers) in relays.items():
                    if n == 0:
                        load(url, conns, 1.0, None, headers)  # warm up
                    r = load(url, conns, args.seconds, p.pid, headers)
                    r["ttft_added_ms"] = r["ttft_p50_ms"] - direct["ttft_p50_ms"]
                    r["ttft_added_min_ms"] = r["ttft_min_ms"] - direct["ttft_min_ms"]
                    rows.append({"spacing_ms": spacing_ms, "conns": conns, "round": n,
                                 "via": name, "load": os.getloadavg()[0], **r})
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def calls(trees: list[Path], n: int) -> None:
    """Python calls per chunk of each tree's gateway, then of the raw relay (cProfile; n
    and 3n bursts)."""
    from calls_per_request import per_function

    tmp = Path(tempfile.mkdtemp())
    tables = []
    for i, tree in enumerate([*trees, None]):
        runs = []
        for k, streams in enumerate((n, 3 * n)):
            up_port, port = free_port(), free_port()
            cfg, out = tmp / f"gw{i}-{k}.yaml", tmp / f"gw{i}-{k}.prof"
            cfg.write_text(gateway_config(up_port, "sqlite", tmp / f"ledger{i}-{k}.sqlite3"))
            profile = ("-m", "cProfile", "-o", str(out))
            procs = [upstream(up_port, 0.0)]
            try:
                procs.append(gateway(tree, cfg, port, profile) if tree else subprocess.Popen(
                    [*pin(0), PY, *profile, str(Path(__file__).resolve()), "--raw-relay",
                     str(port), str(up_port)]))
                wait_port(up_port)
                wait_port(port)
                r = load(f"http://127.0.0.1:{port}/v1/chat/completions", 8, 600, None,
                         limit=streams)
                if r["errors"] or r["streams"] != streams:
                    raise SystemExit(f"{tree}: {r['errors']} errors, first: {r['first_error']}")
            finally:
                stop(procs)
            runs.append(pstats.Stats(str(out)))
        chunks = 2 * n * EVENTS
        total = (runs[1].total_calls - runs[0].total_calls) / chunks  # type: ignore[attr-defined]
        print(f"{tree or 'raw relay'}: {total:.1f} Python calls per chunk, "
              f"{total * EVENTS:.0f} per stream (runs of {n} and {3 * n} streams of {EVENTS} "
              f"events, 8 at a time)")
        if tree is None:
            break
        one, three = per_function(runs[0], 1), per_function(runs[1], 1)
        tables.append({k: (three.get(k, 0.0) - one.get(k, 0.0)) / chunks
                       for k in set(one) | set(three)})
    if len(tables) == 2:
        a, b = tables
        diff = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}
        print(f"calls per chunk, {trees[1]} minus {trees[0]}:")
        for name in sorted(diff, key=lambda k: -abs(diff[k]))[:25]:
            if abs(diff[name]) >= 0.01:
                print(f"{diff[name]:+8.2f}  {name}")
    shutil.rmtree(tmp, ignore_errors=True)


def summary(rows: list[dict[str, Any]]) -> None:
    """Per cell and relay, the medians over the rounds: TTFT p50, what it adds (p50 against
    direct, each round against that round's direct), the event loop's CPU to the first
    token, CPU per chunk."""
    print("\nmedians over the rounds")
    print(f"{'spacing':>8} {'conns':>5} {'via':>14} {'TTFT p50':>9} {'TTFT added':>11} "
          f"{'1st CPU':>9} {'CPU/chunk':>10} {'streams/s':>10}")
    groups: dict[tuple[float, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["spacing_ms"], r["conns"], r["via"]), []).append(r)

    def med(rs: list[dict[str, Any]], key: str, fmt: str) -> str:
        vals = [r[key] for r in rs if key in r]
        return format(statistics.median(vals), fmt) if vals else "-"

    for (spacing, conns, via), rs in groups.items():
        print(f"{spacing:>6g}ms {conns:>5} {via:>14} {med(rs, 'ttft_p50_ms', '.2f'):>6} ms "
              f"{med(rs, 'ttft_added_ms', '.2f'):>8} ms {med(rs, 'first_token_cpu_us', '.0f'):>6} us "
              f"{med(rs, 'cpu_us_per_chunk', '.1f'):>7} us {med(rs, 'streams_s', '.1f'):>10}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--raw-relay":
        raw_relay(int(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 3 and sys.argv[1] == "--probe-serve":
        probe_serve(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--spacing-ms", type=float, default=5.0,
                    help="between chunks in the spaced runs (5 ms: 200 tokens/s)")
    ap.add_argument("--portkey", metavar="DIR", help="where @portkey-ai/gateway is installed")
    ap.add_argument("--tree", type=Path, action="append",
                    help="a Switchyard checkout to measure (repeatable; default: this one)")
    ap.add_argument("--rounds", type=int, default=1, help="measure each cell N times")
    ap.add_argument("--cells", default="burst,spaced", help="burst, spaced or both")
    ap.add_argument("--conns", default="1,32", help="concurrent streams per cell")
    ap.add_argument("--calls", type=int, metavar="N",
                    help="count Python calls per chunk instead (N and 3N streams)")
    ap.add_argument("--first-byte", type=int, metavar="N",
                    help="measure instead each tree's path from a request's head to its first "
                    "byte: calls and CPU, N streams one at a time (--spacing-ms apart, or "
                    "0 with --cells burst)")
    ap.add_argument("--chunks", type=int, default=256,
                    help="content chunks per stream (fewer: more streams a cell at one "
                    "stream with spacing, for the time to first token)")
    ap.add_argument("--rt", action="store_true",
                    help="run the relays, the upstream and the client under SCHED_FIFO (chrt -f "
                    "1; root): what a relay adds without the machine's other work in the way "
                    "(for the 1-stream cells: at 32 streams they would take the cores)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run everything at this niceness, and this session's autogroup")
    ap.add_argument("--json")
    args = ap.parse_args()
    global CHUNKS, EVENTS
    CHUNKS, EVENTS = args.chunks, args.chunks + 4
    args.tree = [t.resolve() for t in args.tree or [HERE.parent]]
    args.conns = [int(c) for c in args.conns.split(",")]
    if args.nice:
        os.nice(args.nice)  # every process started below inherits it
        set_autogroup_nice(args.nice)
    if args.rt:
        RT[:] = ["chrt", "-f", "1"]
    print(header())
    print(f"niceness {os.nice(0)}{', SCHED_FIFO' if args.rt else ''}, load average "
          f"{os.getloadavg()[0]:.1f}")
    if args.calls:
        calls(args.tree, args.calls)
        return
    if args.first_byte:
        first_byte(args.tree, args.first_byte, 0.0 if args.cells == "burst" else args.spacing_ms)
        return
    kinds = args.cells.split(",")
    rows = ((cells(args, 0.0) if "burst" in kinds else [])
            + (cells(args, args.spacing_ms) if "spaced" in kinds else []))
    print(f"streams of {EVENTS} events ({CHUNKS} content chunks); relays on CPU 0, upstream "
          f"and client on CPU 1; {args.seconds:g} s per cell")
    print(f"{'spacing':>8} {'conns':>5} {'via':>14} {'streams/s':>10} {'chunks/s':>10} "
          f"{'TTFT p50':>9} {'p99':>8} {'TTFT added':>11} {'added min':>10} {'CPU/chunk':>10} "
          f"{'1st CPU':>9} {'errors':>7} {'load':>5}")
    for r in rows:
        cpu = f"{r['cpu_us_per_chunk']:.1f} us" if "cpu_us_per_chunk" in r else "-"
        added = f"{r['ttft_added_ms']:.2f} ms" if "ttft_added_ms" in r else "-"
        added_min = f"{r['ttft_added_min_ms']:.2f} ms" if "ttft_added_min_ms" in r else "-"
        first = f"{r['first_token_cpu_us']:.0f} us" if "first_token_cpu_us" in r else "-"
        print(f"{r['spacing_ms']:>6g}ms {r['conns']:>5} {r['via']:>14} {r['streams_s']:>10.1f} "
              f"{r['chunks_s']:>10.0f} {r['ttft_p50_ms']:>6.2f} ms {r['ttft_p99_ms']:>5.1f} ms "
              f"{added:>11} {added_min:>10} {cpu:>10} {first:>9} {r['errors']:>7} "
              f"{r['load']:>5.1f}")
    if args.rounds > 1:
        summary(rows)
    for r in rows:
        if r["errors"]:
            print(f"FAIL: {r['via']} at {r['conns']} streams, spacing {r['spacing_ms']:g} ms: "
                  f"{r['errors']} errors, first: {r['first_error']}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.nice:
        set_autogroup_nice(0)
    sys.exit(1 if any(r["errors"] for r in rows) else 0)


if __name__ == "__main__":
    main()
