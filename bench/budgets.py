"""What budget enforcement costs per request: key check + rate limits + reservation +
settlement, with the in-process store and with Redis, against no enforcement at all.

    python bench/budgets.py [--n 3000] [--concurrency 32] [--redis redis://127.0.0.1:6379/0]

Runs the gateway's own objects (KeyAuthenticator, BudgetAdmission) as the pipeline calls
them, on one event loop, without HTTP or a backend: the figure is the enforcement's own
overhead. ``sequential`` is one request at a time (latency added to each request);
``concurrent`` keeps ``--concurrency`` in flight (throughput of the enforcement path).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

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
        ctx.extra["identity"] = ident
    await adm.admit(ctx, FEATURES)
    res = await adm.reserve(ctx, BACKEND, FEATURES)
    await adm.settle(ctx, res, 0.00004, 80)


async def setup(store: StateStore, limits: bool) -> tuple[KeyAuthenticator, BudgetAdmission, str]:
    await store.create_team(Team(name="bench", budget_usd=1e6, period="day",
                                 rpm=10**9 if limits else None, tpm=10**12 if limits else None))
    key, rec = mint_key("bench", "k")
    await store.put_key(rec)
    auth = KeyAuthenticator(store, cache_ttl_s=2.0)
    return auth, BudgetAdmission(store, BudgetsConfig()), f"Bearer {key}"


async def measure(auth: Any, adm: Any, header: str, n: int, conc: int) -> tuple[float, float]:
    for _ in range(200):  # warm up: caches, script loading, connections
        await one(auth, adm, header)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await one(auth, adm, header)
        lat.append(time.perf_counter() - t0)
    sem = asyncio.Semaphore(conc)

    async def bounded() -> None:
        async with sem:
            await one(auth, adm, header)

    t0 = time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(n)))
    per_s = n / (time.perf_counter() - t0)
    return statistics.median(lat) * 1e6, per_s


async def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, float, float]] = []

    def add(name: str, r: tuple[float, float]) -> None:
        rows.append((name, *r))

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
                    await measure(auth, adm, header, args.n, args.concurrency))
            finally:
                keys = [k async for k in store.r.scan_iter(match=prefix + "*")]
                if keys:
                    await store.r.delete(*keys)
                await store.close()
    print(f"budget enforcement per request (n={args.n}, concurrency={args.concurrency})")
    print(f"{'store':<24}{'median latency':>16}{'requests/s':>14}")
    for name, lat_us, per_s in rows:
        print(f"{name:<24}{lat_us:>13.1f} us{per_s:>14,.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    asyncio.run(main(p.parse_args()))
