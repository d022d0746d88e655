"""What budget enforcement costs per request: key check + rate limits + reservation +
settlement, with the in-process store and with Redis, against no enforcement at all.

    python bench/budgets.py [--n 3000] [--concurrency 32] [--redis redis://127.0.0.1:6379/0]

Runs the gateway's own objects (KeyAuthenticator, BudgetAdmission) as the pipeline calls
them, on one event loop, without HTTP or a backend: the figure is the enforcement's own
overhead. Both ways are measured and printed, labelled: one request at a time (the latency
each request pays), and ``--concurrency`` asyncio workers gathered on one loop, each sending
its share back to back (throughput of the enforcement path, and each request's latency
under that load; with Redis the workers' scripts queue on one connection pool).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from provenance import header as provenance_header

from gateway.auth import KeyAuthenticator, mint_key
from gateway.backend import BaseBackend
from gateway.config import BackendConfig, BudgetsConfig, Pricing
from gateway.interfaces import RequestFeatures
from gateway.pipeline.admission import BudgetAdmission, OpenAdmission
from gateway.pipeline.context import RequestContext
from gateway.state import StateStore, Team
from plugins.state_memory import MemoryStore
from plugins.state_redis import RedisStore

FEATURES = RequestFeatures(endpoint="chat", requested="m", prompt_tokens=40, max_tokens=64)
BACKEND = BaseBackend(BackendConfig(name="b", plugin="x", model="m",
                                    pricing=Pricing(input_per_mtok=0.5, output_per_mtok=1.5)))


async def one(auth: KeyAuthenticator | None, adm: Any, header: str) -> None:
    ctx = RequestContext(request_id="r")
    if auth is not None:
        ident = await auth.verify(header)
        assert ident is not None
        ctx.team, ctx.key_id = ident.team.name, ident.key.key_id
        ctx.identity = ident
    await adm.admit(ctx, FEATURES, defer=True)  # as the pipeline does without a cache
    res = await adm.reserve(ctx, BACKEND, FEATURES)
    await adm.settle(ctx, res, 0.00004, 80)


async def setup(store: StateStore, limits: bool) -> tuple[KeyAuthenticator, BudgetAdmission, str]:
    await store.create_team(Team(name="bench", budget_usd=1e6, period="day",
                                 rpm=10**9 if limits else None, tpm=10**12 if limits else None))
    key, rec = mint_key("bench", "k")
    await store.put_key(rec)
    auth = KeyAuthenticator(store, cache_ttl_s=2.0)
    return auth, BudgetAdmission(store, BudgetsConfig()), f"Bearer {key}"


def _pct(lat: list[float], q: float) -> float:
    return sorted(lat)[min(len(lat) - 1, int(len(lat) * q))] * 1e6


async def measure(auth: Any, adm: Any, header: str, n: int, conc: int,
                  sent: Callable[[], int] | None = None) -> dict[str, float]:
    """``n`` requests one at a time, then ``n`` requests by ``conc`` workers (asyncio.gather)
    that each send their share back to back: latency per request and requests/s, both ways."""
    for _ in range(200):  # warm up: caches, script loading, connections
        await one(auth, adm, header)
    lat: list[float] = []
    before = sent() if sent else 0
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        await one(auth, adm, header)
        lat.append(time.perf_counter() - t)
    seq_s = time.perf_counter() - t0
    # each command a request sends waits for its reply: one round trip each
    trips = (sent() - before) / n if sent else 0.0
    clat: list[float] = []
    shares = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]

    async def worker(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            await one(auth, adm, header)
            clat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in shares))
    conc_s = time.perf_counter() - t0
    return {"seq_p50_us": statistics.median(lat) * 1e6, "seq_p99_us": _pct(lat, 0.99),
            "seq_rps": n / seq_s, "conc_p50_us": statistics.median(clat) * 1e6,
            "conc_p99_us": _pct(clat, 0.99), "conc_rps": n / conc_s, "redis_trips": trips}


async def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, dict[str, float]]] = []

    def add(name: str, r: dict[str, float]) -> None:
        rows.append((name, r))

    add("none (OpenAdmission)", await measure(None, OpenAdmission(), "", args.n, args.concurrency))
    for limits in (False, True):
        auth, adm, header = await setup(MemoryStore(), limits)
        add(f"memory{' + rpm/tpm' if limits else ''}",
            await measure(auth, adm, header, args.n, args.concurrency))
    if args.redis:
        for limits in (False, True):
            prefix = f"switchyard-bench:{uuid.uuid4().hex[:8]}:"
            store = RedisStore(args.redis, prefix)
            try:
                auth, adm, header = await setup(store, limits)
                add(f"redis{' + rpm/tpm' if limits else ''}",
                    await measure(auth, adm, header, args.n, args.concurrency,
                                  lambda s=store: s.r.commands))
            finally:
                keys = await store.r.scan(prefix + "*")
                if keys:
                    await store.r.execute("DEL", *keys)
                await store.close()
    print(provenance_header())
    print(f"budget enforcement per request: key check, rate limits, reservation, settlement "
          f"(n={args.n} each way)")
    print(f"  one at a time: latency each request pays; {args.concurrency} concurrent: "
          f"{args.concurrency} asyncio workers on one event loop (throughput, and latency "
          "under that load)")
    print(f"{'':<24}{'---- one at a time ----':^38}{f'---- {args.concurrency} concurrent ----':^38}")
    print(f"{'store':<24}{'p50':>13}{'p99':>13}{'req/s':>12}{'p50':>13}{'p99':>13}{'req/s':>12}"
          f"{'Redis trips/req':>17}")

    def us(x: float) -> str:
        return f"{x:>10.1f} us"

    for name, r in rows:
        trips = f"{r['redis_trips']:.2f}" if name.startswith("redis") else "-"
        print(f"{name:<24}{us(r['seq_p50_us'])}{us(r['seq_p99_us'])}{r['seq_rps']:>12,.0f}"
              f"{us(r['conc_p50_us'])}{us(r['conc_p99_us'])}{r['conc_rps']:>12,.0f}{trips:>17}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    asyncio.run(main(p.parse_args()))
