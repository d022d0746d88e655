"""Soak: minutes of mixed traffic through a real gateway, with failures injected, then the
invariants checked.

    python bench/soak.py [--duration 180] [--concurrency 16] [--llama] [--failure-mode closed]

Starts everything itself, on loopback only, in a temp dir: a ``redis-server`` on a free
port (append-only file, fsync always, so a restart keeps teams, keys and spend), the
fixed-response upstream (``bench/upstream.py``, priced, streams too), and ``switchyard
serve`` (from the interpreter's own environment) with a generated config: Redis state,
a SQLite ledger, a team with a budget and rpm/tpm limits and one virtual key. With
``--llama`` the in-process llama.cpp model is a second backend that a few requests use.

For ``--duration`` seconds, ``--concurrency`` clients send a mix: plain chat completions,
streams read to the end, streams the client drops after two events, bad input (broken
JSON, no messages, max_tokens 0, an unknown key, an unknown model, a body over the limit:
each expects its own 4xx). At 30 % of the run the upstream is killed (SIGKILL) and
restarted ``--outage-s`` later; at 60 % Redis is killed and restarted the same way. The
windows are recorded; a 5xx is allowed only for a request that overlaps one (plus
``--grace-s`` for breakers and health checks to notice the recovery).

At the end the gateway is stopped (it drains its ledger and reconciles its settlements),
then checked, each line PASS or FAIL, exit status 1 on any FAIL:

- every 2xx response's request id is in the ledger exactly once (and every other
  response's: refused requests leave a record too);
- the team's spend in Redis equals the sum of the ledger's costs for the team, to the
  nano-dollar, and no reservation is left (reserved 0, no open hold);
- 5xx only 502/503/504, and only inside an outage window; no mid-stream error outside one;
- each bad input got its 4xx; no client-side failure (timeout, refused connection);
- the gateway's resident memory, sampled every ``--rss-interval`` s, is flat after
  warm-up (the last sample at most ``--rss-slack-mb`` above the first);
- the gateway logged no unhandled error and exited cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from provenance import header

HERE = Path(__file__).resolve().parent
PY = sys.executable
ADMIN = "soak-admin-key"
PREFIX = "soak:"
TEAM = "soak"
NANO = 1_000_000_000


# ---- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 120, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open in {timeout} s")


def wait_closed(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)


@dataclass
class Procs:
    tmp: Path
    redis_port: int
    up_port: int
    gw_port: int
    redis: subprocess.Popen[bytes] | None = None
    upstream: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None

    def start_redis(self) -> None:
        log = open(self.tmp / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--dir", str(self.tmp), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "yes"], stdout=log, stderr=log)
        wait_port(self.redis_port, 30, self.redis)
        r = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 30
        while True:  # the port opens before the append-only file is loaded
            try:
                r.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        r.close()

    def start_upstream(self) -> None:
        self.upstream = subprocess.Popen(
            [PY, str(HERE / "upstream.py"), str(self.up_port), "--stream-chunks", "8",
             "--stream-interval-ms", "25"])
        wait_port(self.up_port, 30, self.upstream)

    def start_gateway(self, config: Path) -> None:
        exe = Path(PY).parent / "switchyard"
        cmd = [str(exe)] if exe.exists() else [PY, "-m", "gateway.cli"]
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
        log = open(self.tmp / "gateway.log", "ab")  # noqa: SIM115
        self.gateway = subprocess.Popen([*cmd, "serve", "--config", str(config), "--port",
                                         str(self.gw_port)], env=env, stdout=log, stderr=log)
        wait_port(self.gw_port, 180, self.gateway)

    @staticmethod
    def kill(p: subprocess.Popen[bytes] | None) -> None:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop_gateway(self) -> int | None:
        """SIGINT (uvicorn's graceful shutdown: the ledger drains, settlements reconcile)."""
        p = self.gateway
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                return None
        return p.returncode

    def stop_all(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.stop_gateway()
        self.kill(self.upstream)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(self.redis)


def write_config(procs: Procs, args: argparse.Namespace) -> Path:
    llama = """
  - name: local
    plugin: llamacpp
    n_ctx: 512
    max_queue: 4
    pricing: {input_per_mtok: 0.05, output_per_mtok: 0.20}
""" if args.llama else ""
    llama_route = "  - name: soak-local\n    backends: [local]\n" if args.llama else ""
    cfg = procs.tmp / "soak.yaml"
    cfg.write_text(f"""
server: {{max_body_bytes: 65536}}
backends:
  - name: upstream
    plugin: openai_compatible
    base_url: http://127.0.0.1:{procs.up_port}/v1
    model: bench-model
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
    energy: {{watts_busy: 300, grid_g_per_kwh: 400}}
    timeouts: {{connect_s: 1, first_token_s: 10, total_s: 30}}
{llama}routes:
  - name: soak
    backends: [upstream]
{llama_route}ledger: {{kind: sqlite, path: {procs.tmp / "ledger.sqlite3"}}}
state: {{kind: redis, url: 'redis://127.0.0.1:{procs.redis_port}/0', prefix: '{PREFIX}',
         failure_mode: {args.failure_mode}}}
health: {{probe_interval_s: 1, share_interval_s: 1, breaker: {{failure_threshold: 3, open_s: 1}}}}
admin_key: {ADMIN}
log_level: warning
""")
    return cfg


def make_team_key(port: int) -> str:
    import httpx

    admin = {"authorization": f"Bearer {ADMIN}"}
    base = f"http://127.0.0.1:{port}/admin"
    httpx.post(f"{base}/teams", headers=admin, timeout=30, json={
        "name": TEAM, "budget_usd": 1000, "period": "total",
        "rpm": 10_000_000, "tpm": 10_000_000_000}).raise_for_status()
    r = httpx.post(f"{base}/keys", headers=admin, json={"team": TEAM, "name": "soak"}, timeout=30)
    r.raise_for_status()
    return str(r.json()["key"])


# ---- traffic -------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    kind: str
    start: float
    end: float
    status: int | None  # None: no HTTP response (timeout, refused connection)
    rid: str | None
    expect: int | None = None  # the 4xx a bad input should get
    note: str = ""  # "done", "dropped", "stream-error", or the client-side exception


BAD = [  # (name, body or raw bytes, expected status)
    ("broken-json", b'{"model": "soak", "messages": [', 400),
    ("no-messages", {"model": "soak"}, 400),
    ("max-tokens-0", {"model": "soak", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 0}, 400),
    ("unknown-key", None, 401),
    ("unknown-model", {"model": "no-such-model",
                       "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("too-large", {"model": "soak", "messages": [{"role": "user", "content": "x" * 70_000}]}, 413),
]


def chat_body(i: int, model: str = "soak", stream: bool = False, max_tokens: int = 16) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": f"Say hello, #{i}"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def read_stream(resp: aiohttp.ClientResponse, drop_after: int | None) -> str:
    """Read SSE events; stop (and drop the connection) after ``drop_after`` events."""
    events = 0
    note = "no-done"
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        events += 1
        payload = line[5:].strip()
        if payload == b"[DONE]":
            note = "done" if note == "no-done" else note
            break
        if payload.startswith(b'{"error"'):
            note = "stream-error"
        if drop_after is not None and events >= drop_after:
            resp.close()  # the client goes away mid-stream
            return "dropped"
    return note


async def one(s: aiohttp.ClientSession, url: str, key: str, kind: str, i: int) -> Result:
    auth = {"authorization": f"Bearer {key}"}
    expect, data = None, None
    if kind == "bad":
        name, payload, expect = BAD[i % len(BAD)]
        kind = f"bad:{name}"
        if name == "unknown-key":
            auth = {"authorization": "Bearer sk-sy-0123456789ab_not-a-real-secret"}
            payload = chat_body(i)
        data = payload if isinstance(payload, bytes) else None
        body = payload if isinstance(payload, dict) else None
    elif kind == "local":
        body = chat_body(i, model="soak-local", max_tokens=8)
    else:
        body = chat_body(i, stream=kind in ("stream", "drop"))
    t0 = time.monotonic()
    try:
        async with s.post(url, json=body, data=data, headers=auth) as resp:
            rid = resp.headers.get("x-switchyard-request-id")
            if kind in ("stream", "drop") and resp.status == 200:
                note = await read_stream(resp, 2 if kind == "drop" else None)
            else:
                await resp.read()
                note = ""
            return Result(kind, t0, time.monotonic(), resp.status, rid, expect, note)
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        return Result(kind, t0, time.monotonic(), None, None, expect, type(e).__name__)


def pick_kind(rng: random.Random, llama: bool) -> str:
    x = rng.random()
    if llama and x < 0.03:
        return "local"
    return "chat" if x < 0.50 else "stream" if x < 0.75 else "drop" if x < 0.87 else "bad"


async def traffic(url: str, key: str, args: argparse.Namespace, t_end: float) -> list[Result]:
    results: list[Result] = []
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=args.request_timeout_s)
    conn = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:

        async def worker(w: int) -> None:
            rng = random.Random(args.seed * 1000 + w)
            while time.monotonic() < t_end:
                r = await one(s, url, key, pick_kind(rng, args.llama), next(counter))
                results.append(r)
                if r.status is None or r.status >= 500:
                    await asyncio.sleep(0.25)  # a client backs off; no busy loop on 503s

        await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    return results


# ---- chaos and memory ----------------------------------------------------------------------


@dataclass
class Timeline:
    t0: float
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (s since start, KiB)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def sample_rss(pid: int, tl: Timeline, interval: float, t_end: float) -> None:
    while time.monotonic() < t_end:
        kib = rss_kib(pid)
        if kib is not None:
            tl.rss.append((time.monotonic() - tl.t0, kib))
        await asyncio.sleep(interval)


async def outage(name: str, procs: Procs, tl: Timeline, at: float, down_s: float) -> None:
    """Kill ``name`` (SIGKILL) at ``at`` seconds into the run, restart it ``down_s`` later."""
    await asyncio.sleep(max(0.0, tl.t0 + at - time.monotonic()))
    loop = asyncio.get_running_loop()
    down = time.monotonic()
    if name == "upstream":
        procs.kill(procs.upstream)
        await loop.run_in_executor(None, wait_closed, procs.up_port)
    else:
        procs.kill(procs.redis)
        await loop.run_in_executor(None, wait_closed, procs.redis_port)
    await asyncio.sleep(down_s)
    await loop.run_in_executor(None, procs.start_upstream if name == "upstream" else procs.start_redis)
    tl.windows.append((name, down - tl.t0, time.monotonic() - tl.t0))


async def run_load(procs: Procs, key: str, args: argparse.Namespace) -> tuple[list[Result], Timeline]:
    tl = Timeline(t0=time.monotonic())
    t_end = tl.t0 + args.duration
    url = f"http://127.0.0.1:{procs.gw_port}/v1/chat/completions"
    assert procs.gateway is not None
    side = [asyncio.create_task(sample_rss(procs.gateway.pid, tl, args.rss_interval, t_end))]
    if not args.no_chaos:
        side.append(asyncio.create_task(outage("upstream", procs, tl, args.duration * 0.3,
                                               args.outage_s)))
        side.append(asyncio.create_task(outage("redis", procs, tl, args.duration * 0.6,
                                               args.outage_s)))
    results = await traffic(url, key, args, t_end)
    await asyncio.gather(*side)
    rss = rss_kib(procs.gateway.pid)
    if rss is not None:
        tl.rss.append((time.monotonic() - tl.t0, rss))
    return results, tl


# ---- invariants ----------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def in_window(r: Result, tl: Timeline, grace: float) -> bool:
    a, b = r.start - tl.t0, r.end - tl.t0
    return any(a <= up + grace and b >= down for _, down, up in tl.windows)


def since_restart(r: Result, tl: Timeline) -> float:
    """Seconds from the last restart before this request ended (0 inside a window)."""
    return min((max(0.0, r.end - tl.t0 - up) for _, down, up in tl.windows
                if r.end - tl.t0 >= down), default=0.0)


def recovery(results: list[Result], tl: Timeline) -> list[str]:
    """Per window: 5xx during it (with grace) and how long after the restart the first
    request that started then succeeded."""
    out = []
    for name, down, up in tl.windows:
        ok = [r.end - tl.t0 - up for r in results if r.status == 200
              and r.start - tl.t0 >= up]
        first = f"{min(ok):.2f} s" if ok else "never"
        out.append(f"{name} down {down:.1f}-{up:.1f} s (SIGKILL, restart); first success "
                   f"after the restart: +{first}")
    return out


def read_ledger(path: Path) -> list[tuple[str, int, str | None, float, str | None]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT request_id, status, team, cost_usd, error_code FROM requests").fetchall()
    finally:
        conn.close()


def read_budget(port: int) -> dict[str, str]:
    r = redis.Redis(port=port, decode_responses=True)
    try:
        return dict(r.hgetall(f"{PREFIX}{{{TEAM}}}:b:total"))
    finally:
        r.close()


def check_ledger(results: list[Result], ledger: list[Any]) -> list[Check]:
    counts = Counter(row[0] for row in ledger)
    ok2 = [r for r in results if r.status is not None and 200 <= r.status < 300]
    no_id = [r for r in ok2 if not r.rid]
    bad2 = [r.rid for r in ok2 if r.rid and counts[r.rid] != 1]
    other = [r for r in results if r.status is not None and not 200 <= r.status < 300]
    bad_other = [(r.status, r.rid) for r in other if not r.rid or counts[r.rid] != 1]
    dup = [rid for rid, n in counts.items() if n > 1]
    return [
        Check("every 2xx in the ledger exactly once", not no_id and not bad2 and not dup,
              f"{len(ok2)} 2xx; {len(bad2)} missing or repeated, {len(no_id)} without an id; "
              f"{len(dup)} ids repeated in {len(ledger)} ledger rows"
              + (f"; e.g. {bad2[:3]}" if bad2 else "")),
        Check("every other response in the ledger exactly once", not bad_other,
              f"{len(other)} non-2xx; {len(bad_other)} without exactly one row"
              + (f"; by status {dict(Counter(s for s, _ in bad_other))}" if bad_other else "")),
    ]


def check_spend(ledger: list[Any], budget: dict[str, str]) -> list[Check]:
    from gateway.budgets import to_nano

    ledger_nano = sum(to_nano(row[3] or 0.0) for row in ledger if row[2] == TEAM)
    spent = int(budget.get("spent", 0))
    reserved = int(budget.get("reserved", 0))
    holds = [k for k, v in budget.items() if k.startswith("r:")]
    purged = [k for k in holds if budget[k] == "x"]
    return [
        Check("spend in Redis == sum of the ledger's costs", spent == ledger_nano,
              f"Redis {spent} n$ (${spent / NANO:.6f}), ledger {ledger_nano} n$ "
              f"(${ledger_nano / NANO:.6f}), difference {spent - ledger_nano} n$"),
        Check("no reservation left", reserved == 0 and not holds,
              f"reserved {reserved} n$, {len(holds)} open holds ({len(purged)} expired)"),
    ]


def check_statuses(results: list[Result], tl: Timeline, grace: float) -> list[Check]:
    five = [r for r in results if r.status is not None and r.status >= 500]
    outside = [r for r in five if not in_window(r, tl, grace)]
    wrong = [r for r in five if r.status not in (502, 503, 504)]
    serr = [r for r in results if r.note == "stream-error" and not in_window(r, tl, grace)]
    bad = [r for r in results if r.kind.startswith("bad:")]
    wrong4 = [r for r in bad if r.status != r.expect
              and not (r.status in (502, 503, 504) and in_window(r, tl, grace))]
    client = [r for r in results if r.status is None]
    late = max((since_restart(r, tl) for r in five), default=0.0)
    return [
        Check("5xx only 502/503/504, only in an outage window", not outside and not wrong,
              f"{len(five)} 5xx ({dict(Counter(r.status for r in five))}); {len(outside)} "
              f"outside the windows (+{grace:.0f} s grace), {len(wrong)} other than 502/503/504; "
              f"the last one {late:.1f} s after a restart"),
        Check("no mid-stream error outside an outage window", not serr,
              f"{sum(r.note == 'stream-error' for r in results)} streams ended by an error "
              f"event, {len(serr)} outside the windows"),
        Check("each bad input got its 4xx", not wrong4,
              f"{len(bad)} bad requests; {len(wrong4)} with another status"
              + (f": {sorted(Counter((r.kind, r.status) for r in wrong4).items())[:4]}"
                 if wrong4 else "")),
        Check("no client-side failure", not client,
              f"{len(client)} requests without a response"
              + (f": {dict(Counter(r.note for r in client))}" if client else "")),
    ]


def check_memory(tl: Timeline, warmup: float, slack_mb: float) -> tuple[Check, str]:
    after = [(t, k) for t, k in tl.rss if t >= warmup] or tl.rss[-1:]
    if not after:
        return Check("memory flat after warm-up", False, "no RSS samples"), ""
    first, last, top = after[0][1] / 1024, after[-1][1] / 1024, max(k for _, k in after) / 1024
    start = tl.rss[0][1] / 1024
    line = (f"RSS {start:.0f} MB at start; after {warmup:.0f} s warm-up {first:.0f} MB, last "
            f"{last:.0f} MB, max {top:.0f} MB ({len(after)} samples)")
    return Check("memory flat after warm-up", last - first <= slack_mb,
                 f"{line}; growth {last - first:+.1f} MB (allowed {slack_mb:.0f})"), line


def check_gateway(tmp: Path, rc: int | None) -> Check:
    text = (tmp / "gateway.log").read_text(errors="replace")
    unhandled = text.count("unhandled error") + text.count("Traceback")
    errors = sum(" ERROR " in line for line in text.splitlines())
    return Check("gateway: no unhandled error, clean exit", unhandled == 0 and rc == 0,
                 f"exit status {rc}; {unhandled} tracebacks/unhandled errors, {errors} ERROR "
                 "log lines (an outage logs some)")


# ---- report --------------------------------------------------------------------------------


def summary(results: list[Result], tl: Timeline, args: argparse.Namespace, rss_line: str,
            ledger_rows: int, spent: int) -> None:
    n = len(results)
    print(f"soak: {args.duration:.0f} s, {args.concurrency} concurrent clients, "
          f"failure_mode {args.failure_mode}{', llama.cpp backend' if args.llama else ''}; "
          f"{n} requests ({n / args.duration:.0f}/s), {ledger_rows} ledger rows, "
          f"spend ${spent / NANO:.6f}")
    for line in recovery(results, tl):
        print(f"  {line}")
    kinds = sorted({r.kind.split(':')[0] for r in results})
    print(f"  {'kind':<8}{'sent':>8}{'2xx':>8}{'4xx':>8}{'5xx':>8}{'none':>7}"
          f"{'2xx p50 ms':>12}{'2xx p99 ms':>12}  notes")
    for k in kinds:
        rs = [r for r in results if r.kind.split(":")[0] == k]
        c = Counter((r.status // 100) if r.status else 0 for r in rs)
        lat = sorted((r.end - r.start) * 1000 for r in rs if r.status == 200)
        p50 = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
        p99 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f}" if lat else "-"
        notes = Counter(r.note for r in rs if r.note and r.note != "done")
        print(f"  {k:<8}{len(rs):>8}{c[2]:>8}{c[4]:>8}{c[5]:>8}{c[0]:>7}{p50:>12}{p99:>12}  "
              + ", ".join(f"{v} {m}" for m, v in sorted(notes.items())))
    print(f"  {rss_line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--llama", action="store_true", help="add the in-process llama.cpp backend")
    ap.add_argument("--failure-mode", choices=("closed", "open"), default="closed")
    ap.add_argument("--outage-s", type=float, default=5.0, help="how long each outage lasts")
    ap.add_argument("--grace-s", type=float, default=5.0,
                    help="after a restart, 5xx still allowed for this long")
    ap.add_argument("--no-chaos", action="store_true", help="no kills: every 5xx fails")
    ap.add_argument("--request-timeout-s", type=float, default=30.0)
    ap.add_argument("--rss-interval", type=float, default=2.0)
    ap.add_argument("--warmup-s", type=float, default=None,
                    help="memory is judged from here (default: 20 %% of the run, at most 30 s)")
    ap.add_argument("--rss-slack-mb", type=float, default=16.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs, ledger)")
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        print("soak: needs redis-server on PATH (Debian: apt-get install redis-server)",
              file=sys.stderr)
        return 2
    warmup = args.warmup_s if args.warmup_s is not None else min(30.0, args.duration * 0.2)
    print(header())
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-soak-"))
    procs = Procs(tmp, free_port(), free_port(), free_port())
    try:
        procs.start_redis()
        procs.start_upstream()
        procs.start_gateway(write_config(procs, args))
        key = make_team_key(procs.gw_port)
        results, tl = asyncio.run(run_load(procs, key, args))
        time.sleep(0.5)
        rc = procs.stop_gateway()
        ledger = read_ledger(tmp / "ledger.sqlite3")
        budget = read_budget(procs.redis_port)
    finally:
        procs.stop_all()
    mem, rss_line = check_memory(tl, warmup, args.rss_slack_mb)
    checks = [*check_ledger(results, ledger), *check_spend(ledger, budget),
              *check_statuses(results, tl, args.grace_s), mem, check_gateway(tmp, rc)]
    summary(results, tl, args, rss_line, len(ledger), int(budget.get("spent", 0)))
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    failed = [c for c in checks if not c.ok]
    if not args.keep and not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    elif failed:
        print(f"kept {tmp} (config, gateway.log, redis.log, ledger.sqlite3)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
