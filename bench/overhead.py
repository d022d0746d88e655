"""Gateway overhead: the gateway in front of a fixed-response upstream on loopback, against
hitting that upstream directly, at 1 and 32 concurrent connections.

Reports requests/s and the latency the gateway adds (p50, p99). The gateway runs as one
worker process pinned to CPU 0 with all its accounting on (pricing, energy profile, SQLite
ledger, Prometheus metrics); the upstream and the load generator (wrk, or a Python client
where wrk is missing) share CPU 1.

    python bench/overhead.py [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
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

HERE = Path(__file__).resolve().parent
PY = sys.executable
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello"}],
                   "max_tokens": 16})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def run_wrk(url: str, conns: int, seconds: int, key: str = "") -> dict[str, float]:
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n' + auth +
        f"wrk.body = [[{BODY}]]\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %f %f %f\\n", summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99), summary.duration))\n'
        "end\n"
    )
    out = subprocess.run(
        [*pin(1), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout
    lua.unlink()
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    assert m, out
    n, errors, p50, p99, dur = m.groups()
    return {"rps": int(n) / (float(dur) / 1e6), "errors": int(errors),
            "p50_ms": float(p50) / 1000, "p99_ms": float(p99) / 1000}


def run_python(url: str, conns: int, seconds: int, key: str = "") -> dict[str, float]:
    code = f"""
import asyncio, time, aiohttp, json, statistics
async def main():
    lat=[]; errors=0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        end=time.perf_counter()+{seconds}
        async def worker():
            nonlocal errors
            while time.perf_counter()<end:
                t=time.perf_counter()
                async with s.post({url!r}, data={BODY!r}, headers={{'content-type':'application/json', **({{'authorization': 'Bearer {key}'}} if {bool(key)!r} else {{}})}}) as r:
                    await r.read()
                    if r.status!=200: errors+=1
                lat.append(time.perf_counter()-t)
        t0=time.perf_counter()
        await asyncio.gather(*[worker() for _ in range({conns})])
        dur=time.perf_counter()-t0
    lat.sort()
    print(json.dumps({{"rps":len(lat)/dur,"errors":errors,"p50_ms":lat[len(lat)//2]*1e3,"p99_ms":lat[int(len(lat)*.99)]*1e3}}))
asyncio.run(main())
"""
    out = subprocess.run([*pin(1), PY, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    ap.add_argument("--budget", action="store_true",
                    help="send a team's virtual key: auth, rate limits and budget reservation on")
    ap.add_argument("--redis", metavar="URL",
                    help="keep teams, budgets and limits in this Redis (a bench prefix, removed after)")
    args = ap.parse_args()
    load = run_wrk if shutil.which("wrk") else run_python
    up_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "bench.yaml"
    cfg.write_text(f"""
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
ledger: {{kind: {"none" if args.no_ledger else "sqlite"}, path: {tmp / "ledger.sqlite3"}}}
log_level: warning
admin_key: bench-admin-key
""")
    prefix = f"switchyard-bench:{os.getpid()}:"
    if args.redis:
        with cfg.open("a") as f:
            f.write(f"state: {{kind: redis, url: '{args.redis}', prefix: '{prefix}'}}\n")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    procs = [subprocess.Popen([*pin(1), PY, str(HERE / "upstream.py"), str(up_port)])]
    procs.append(subprocess.Popen([*pin(0), PY, "-m", "gateway.cli", "serve", "--config", str(cfg),
                                   "--port", str(gw_port)], env=env))
    try:
        wait_port(up_port)
        wait_port(gw_port)
        time.sleep(1)
        key = make_team_key(gw_port) if args.budget else ""
        rows = []
        for conns in (1, 32):
            load(f"http://127.0.0.1:{gw_port}/v1/chat/completions", conns, 2, key)  # warm up
            direct = load(f"http://127.0.0.1:{up_port}/v1/chat/completions", conns, args.seconds)
            via = load(f"http://127.0.0.1:{gw_port}/v1/chat/completions", conns, args.seconds, key)
            rows.append({"connections": conns, "direct": direct, "gateway": via,
                         "added_p50_ms": via["p50_ms"] - direct["p50_ms"],
                         "added_p99_ms": via["p99_ms"] - direct["p99_ms"]})
        print(f"load generator: {load.__name__[4:]}; gateway: 1 process on CPU 0, accounting on"
              f"{', ledger off' if args.no_ledger else ''}"
              f"{', virtual key + team budget + rpm/tpm' if args.budget else ''}"
              f"{(' (Redis state)' if args.redis else ' (in-process state)') if args.budget else ''}")
        print(f"{'conns':>5} {'direct rps':>11} {'gateway rps':>12} {'added p50 ms':>13} {'added p99 ms':>13} {'errors':>7}")
        for r in rows:
            print(f"{r['connections']:>5} {r['direct']['rps']:>11.0f} {r['gateway']['rps']:>12.0f} "
                  f"{r['added_p50_ms']:>13.3f} {r['added_p99_ms']:>13.3f} {r['gateway']['errors']:>7}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.redis:
            import redis

            r = redis.Redis.from_url(args.redis)
            keys = list(r.scan_iter(match=prefix + "*", count=1000))
            if keys:
                r.delete(*keys)


if __name__ == "__main__":
    main()
