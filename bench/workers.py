"""Several workers on one host: requests/s of ``switchyard serve --workers N`` against one
worker, in front of the fixed-response upstream (``upstream.py``), at 32 connections.

Nothing is pinned: the gateway's workers, the upstream and the load generator (wrk, one
thread) share the machine's cores, as they would on a small host. Every gateway under test
is started once, then the cells are measured round-robin (A, B, C, A, B, C...), so that
the machine's other work falls on every configuration alike; the load average is printed
beside each cell. Each gateway has accounting on (pricing, energy profile, one SQLite
ledger file shared by its workers, Prometheus metrics) and, with ``--budget``, a team's
virtual key on every request (auth, an rpm/tpm limit and a budget reservation in the state
store).

    python bench/workers.py [--seconds 8] [--rounds 3] [--budget] [--json out.json]
        [--configs 1:memory,1:sqlite,2:sqlite] [--nice -10]

Reports, per configuration: requests/s (median and range over the rounds; 2xx only, and any
other response fails the run as in overhead.py), the gateway's CPU per request (all its
processes), and the ratio of each median to the first configuration's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import overhead
from overhead import free_port, gateway_config, make_team_key, run_wrk, stop, wait_port
from provenance import header

HERE = Path(__file__).resolve().parent


def tree_cpu_s(pid: int) -> list[float]:
    """CPU seconds of ``pid`` and of each of its children (a supervisor and its workers)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [overhead.cpu_s(pid)] + [overhead.cpu_s(int(k)) for k in kids]


def set_autogroup_nice(nice: int) -> None:
    """Linux's autogroup scheduling shares the cores between sessions first, so a process'
    nice does not move its share against other sessions' work: set the session's too."""
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError as e:
        print(f"autogroup nice not set ({e.strerror})", file=sys.stderr)


def start(up_port: int, tmp: Path, workers: int, state: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    d = tmp / f"w{workers}-{state}"
    d.mkdir()
    cfg = d / "bench.yaml"
    cfg.write_text(gateway_config(up_port, "sqlite", d / "ledger.sqlite3")
                   + "admin_key: bench-admin-key\n"
                   + f"state: {{kind: {state}, path: {d / 'state.sqlite3'}}}\n")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                             "--port", str(port), "--workers", str(workers)], env=env)
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--budget", action="store_true", help="a team's virtual key on every request")
    ap.add_argument("--configs", default="1:memory,1:sqlite,2:sqlite",
                    help="WORKERS:STATE, comma-separated; the first is the baseline")
    ap.add_argument("--nice", type=int, default=0,
                    help="run everything (gateways, upstream, wrk) at this niceness, and this "
                    "session's autogroup; negative (as root) lets the benchmark have the cores "
                    "on a machine others load")
    ap.add_argument("--json")
    args = ap.parse_args()
    overhead.pin = lambda cpu: []  # the load generator shares the cores
    if args.nice:
        os.nice(args.nice)  # every process started below inherits it
        set_autogroup_nice(args.nice)
    configs = [(int(w), s) for w, s in (c.split(":") for c in args.configs.split(","))]
    tmp = Path(tempfile.mkdtemp())
    up_port = free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "upstream.py"), str(up_port)])]
    gateways = []
    status = 1
    try:
        wait_port(up_port)
        for workers, state in configs:
            proc, port = start(up_port, tmp, workers, state)
            procs.append(proc)
            gateways.append((workers, state, proc, port))
        for _, _, _, port in gateways:
            wait_port(port, timeout=120)
        time.sleep(2)
        keys = {port: make_team_key(port) if args.budget else "" for *_, port in gateways}
        for *_, port in gateways:  # warm up
            run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.connections, 2,
                    keys[port])
        cells: dict[str, list[dict[str, float]]] = {f"{w}:{s}": [] for w, s, _, _ in gateways}
        print(header())
        print(f"wrk -t1 -c{args.connections}, {args.seconds} s per cell, nothing pinned, "
              f"niceness {os.nice(0)}; "
              f"{'virtual key + team budget + rpm/tpm' if args.budget else 'no key'}; "
              "requests/s counts 2xx only", flush=True)
        for r in range(args.rounds):
            for workers, state, proc, port in gateways:
                load = os.getloadavg()[0]
                c0, t0 = tree_cpu_s(proc.pid), time.monotonic()
                res = run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions",
                              args.connections, args.seconds, keys[port])
                used = [b - a for a, b in zip(c0, tree_cpu_s(proc.pid), strict=True)]
                served = max(1, res["ok"] + res["non2xx"])
                res["cpu_us"] = sum(used) / served * 1e6
                res["cores"] = sum(used) / (time.monotonic() - t0)  # of the gateway's processes
                res["load"] = load
                cells[f"{workers}:{state}"].append(res)
                shares = "/".join(f"{u / (sum(used) or 1):.0%}" for u in used[1:]) or "-"
                print(f"round {r + 1}: {workers} worker(s), {state:>6} state: "
                      f"{res['rps']:7.0f} req/s, p50 {res['p50_ms']:6.2f} ms, "
                      f"CPU {res['cpu_us']:5.0f} us/req, {res['cores']:.2f} cores "
                      f"(workers' shares {shares}), load average {load:.1f}"
                      f"{', NON-2XX ' + str(res['non2xx']) if res['non2xx'] else ''}"
                      f"{', SOCKET ERRORS ' + str(res['socket_errors']) if res['socket_errors'] else ''}",
                      flush=True)
        base = statistics.median(c["rps"] for c in next(iter(cells.values())))
        print(f"\n{'config':>16} {'median req/s':>13} {'range':>15} {'vs first':>9} "
              f"{'CPU us/req':>11}")
        for name, runs in cells.items():
            rps = [c["rps"] for c in runs]
            med = statistics.median(rps)
            w, s = name.split(":")
            print(f"{w + ' worker(s), ' + s:>16} {med:>13.0f} "
                  f"{f'{min(rps):.0f}-{max(rps):.0f}':>15} {med / base:>8.2f}x "
                  f"{statistics.median(c['cpu_us'] for c in runs):>11.0f}")
        if args.json:
            Path(args.json).write_text(json.dumps(cells, indent=2))
        bad = [c for runs in cells.values() for c in runs if c["non2xx"] or c["socket_errors"]]
        if bad:
            print("FAIL: some cells had non-2xx responses or socket errors; these figures are "
                  "not valid", file=sys.stderr)
        status = 1 if bad else 0
    finally:
        stop(procs)
        if args.nice:
            set_autogroup_nice(0)
    sys.exit(status)


if __name__ == "__main__":
    main()
