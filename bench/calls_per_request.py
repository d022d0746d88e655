"""Python function calls per request: the gateway of each TREE under cProfile, serving N and
then 3N requests from a fixed-response upstream (the difference is the requests' own). Unlike requests/s or CPU time, the count does not
drift with the machine, so two trees compare exactly in any sitting.

    python bench/calls_per_request.py TREE [TREE ...] [--requests 1000] [--top 25]
        [--budget [--redis URL]]

``--budget`` sends a team's virtual key (auth, rpm/tpm limits, budget reservation and
settlement, as ``overhead.py --budget``); ``--redis`` keeps that state in Redis (a prefix per
run, removed after). The gateway's PYTHONPATH is the tree, then this one's.

Each TREE is a checkout of this repository, run with this .venv (`git worktree add
/tmp/before REV`). With two trees it prints the functions whose calls per request differ
most. `EXTRA_CONFIG='disable_plugins: [cache, judges]'` is appended to the gateway's config
(an older tree under this .venv's newer entry points).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import httpx
from overhead import free_port, gateway_config, make_team_key, wait_port
from provenance import header

HERE = Path(__file__).resolve().parent
PY = sys.executable
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16}


async def load(port: int, n: int, concurrency: int = 8, key: str = "") -> None:
    sem = asyncio.Semaphore(concurrency)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
        async def one() -> None:
            async with sem:
                r = await c.post("/v1/chat/completions", json=BODY)
                if r.status_code != 200:
                    raise SystemExit(f"non-2xx response {r.status_code}: {r.text[:200]}")
        await asyncio.gather(*(one() for _ in range(n)))


def profile(tree: Path, n: int, out: Path, budget: bool = False, redis_url: str = "") -> None:
    up, gw = free_port(), free_port()
    cfg = out.with_suffix(".yaml")
    prefix = f"switchyard-bench:{os.getpid()}:{out.stem}:"
    cfg.write_text(gateway_config(up, "sqlite", out.with_suffix(".sqlite3"))
                   + ("admin_key: bench-admin-key\n" if budget else "")
                   + (f"state: {{kind: redis, url: '{redis_url}', prefix: '{prefix}'}}\n"
                      if redis_url else ""))
    path = os.pathsep.join(x for x in (str(tree), os.environ.get("PYTHONPATH", "")) if x)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": path}
    procs = [subprocess.Popen([PY, str(HERE / "upstream.py"), str(up)])]
    procs.append(subprocess.Popen(
        [PY, "-m", "cProfile", "-o", str(out), "-m", "gateway.cli", "serve", "--config",
         str(cfg), "--port", str(gw)], cwd=tree, env=env, stderr=subprocess.DEVNULL))
    try:
        wait_port(up)
        wait_port(gw)
        asyncio.run(load(gw, n, key=make_team_key(gw) if budget else ""))
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)
        if redis_url:
            import redis

            r = redis.Redis.from_url(redis_url)
            keys = list(r.scan_iter(match=prefix + "*", count=1000))
            if keys:
                r.delete(*keys)


def per_function(stats: pstats.Stats, n: int) -> dict[str, float]:
    calls: dict[str, float] = defaultdict(float)
    for (path, _line, name), (_cc, nc, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        calls[f"{Path(path).name}:{re.sub(' at 0x[0-9a-f]+', '', name)}"] += nc / n
    return calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--budget", action="store_true",
                    help="send a team's virtual key: auth, rate limits and budget reservation on")
    ap.add_argument("--redis", metavar="URL", default="",
                    help="with --budget: keep teams, budgets and limits in this Redis")
    args = ap.parse_args()
    print(header())
    tmp = Path(tempfile.mkdtemp())
    tables = []
    for i, tree in enumerate(args.trees):
        # start-up and shutdown make about a million calls: two runs, n and 3n requests,
        # and the difference over 2n is what a request costs
        runs = []
        for k, n in enumerate((args.requests, 3 * args.requests)):
            out = tmp / f"tree{i}-{k}.prof"
            profile(tree.resolve(), n, out, args.budget, args.redis)
            runs.append(pstats.Stats(str(out)))
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                             check=False, capture_output=True, text=True).stdout.strip()
        n2 = 2 * args.requests
        total = (runs[1].total_calls - runs[0].total_calls) / n2  # type: ignore[attr-defined]
        print(f"{tree} ({rev}): {total:.1f} Python calls per request "
              f"(runs of {args.requests} and {3 * args.requests} requests)")
        one, three = per_function(runs[0], 1), per_function(runs[1], 1)
        tables.append({k: (three.get(k, 0.0) - one.get(k, 0.0)) / n2 for k in set(one) | set(three)})
    if len(tables) == 2:
        a, b = tables
        diff = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}
        print(f"calls per request, {args.trees[1]} minus {args.trees[0]}:")
        for k in sorted(diff, key=lambda k: -abs(diff[k]))[:args.top]:
            if abs(diff[k]) >= 0.01:
                print(f"{diff[k]:+8.2f}  {k}")


if __name__ == "__main__":
    main()
