"""The savings report (``gateway.report.build``) over the same records on SQLite and on a
real PostgreSQL: the same report from both, equal to sums over the records (requests
without a cascade's later stages, savings by technique, quality, measured vs estimated
energy), groups and series that add up to the totals, percentiles from the rows."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from gateway import LedgerStore, SQLiteLedger, UsageRecord
from gateway.ledger_queries import Window
from gateway.report import build
from plugins.ledger_postgres import PostgresLedger

DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def _record(rnd: random.Random, i: int) -> UsageRecord:
    kind = rnd.choice(["plain", "plain", "hit-exact", "hit-semantic", "cascade2"])
    rec = UsageRecord(
        request_id=f"r{i}", endpoint="chat", requested="auto", route=rnd.choice(
            ["chat", "rag"]), backend=rnd.choice(["cheap", "dear"]), model="m",
        team=rnd.choice(["red", "blue"]), status=200 if i % 13 else 502,
        prompt_tokens=rnd.randint(1, 500), completion_tokens=rnd.randint(0, 300),
        cost_usd=rnd.random() / 100, energy_j=rnd.random() * 50,
        energy_source=rnd.choice(["profile", "nvml"]), co2_g=rnd.random(),
        bytes_sent=rnd.randint(100, 900), bytes_received=rnd.randint(1, 90),
        latency_ms=rnd.uniform(5, 900), ttft_ms=rnd.uniform(1, 200),
        started_at=T0 + rnd.random() * 40 * DAY,
        saved_routing_usd=rnd.random() / 200, saved_routing_energy_j=rnd.random(),
        saved_compress_usd=rnd.random() / 1000, compress_saved_tokens=rnd.randint(0, 50),
        compress_saved_bytes=rnd.randint(0, 500))
    if kind.startswith("hit"):
        rec.backend, rec.cache, rec.saved_cost_usd = "cache", kind, 0.02
        rec.saved_energy_j, rec.saved_bytes = 3.0, 1000
        rec.cache_similarity = 0.93 if kind == "hit-semantic" else 1.0
    elif kind == "cascade2":  # a cascade's second stage: a call, not a request
        rec.cascade_step, rec.judge_score, rec.saved_cascade_usd = 2, 0.4, -0.001
    return rec


_RND = random.Random(16)
RECORDS = [_record(_RND, i) for i in range(400)]


def _filled(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> LedgerStore:
    """A ledger of ``kind`` with every record of ``RECORDS`` written (and drained)."""
    made: LedgerStore = (
        SQLiteLedger(tmp_path / "ledger.sqlite3", flush_interval_s=0.01) if kind == "sqlite"
        else PostgresLedger(request.getfixturevalue("pg_url"), flush_interval_s=0.01))
    asyncio.run(made.start())
    for rec in RECORDS:
        made.write(rec)
    made.close()
    return made


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerStore:
    return _filled(request.param, tmp_path, request)


def _sum(recs: list[UsageRecord], f: Any) -> float:
    return float(sum(f(r) for r in recs))


def _hit(r: UsageRecord) -> bool:
    return (r.cache or "").startswith("hit")


def test_totals_and_savings_equal_the_records(ledger: LedgerStore) -> None:
    rep = build(ledger)
    t = rep["totals"]
    assert t["requests"] == sum(r.cascade_step is None for r in RECORDS)
    assert t["calls"] == len(RECORDS) and t["cache_hits"] == sum(map(_hit, RECORDS))
    assert t["cost_usd"] == pytest.approx(_sum(RECORDS, lambda r: r.cost_usd))
    measured = _sum(RECORDS, lambda r: r.energy_j if r.energy_source == "nvml" else 0)
    assert t["energy"]["measured_j"] == pytest.approx(measured)
    est = t["energy_j"] - measured
    assert t["energy"]["band_j"] == pytest.approx([measured + 0.5 * est, measured + 1.5 * est])
    s = rep["saved_usd"]
    assert s["routing"] == pytest.approx(_sum(RECORDS, lambda r: r.saved_routing_usd))
    assert s["cache"] == pytest.approx(
        _sum(RECORDS, lambda r: r.saved_cost_usd - r.cost_usd if _hit(r) else 0))
    assert s["compression"] == pytest.approx(_sum(RECORDS, lambda r: r.saved_compress_usd))
    assert s["cascade"] == pytest.approx(_sum(RECORDS, lambda r: r.saved_cascade_usd))
    assert rep["saved_tokens"]["cache"] == _sum(
        RECORDS, lambda r: r.prompt_tokens + r.completion_tokens if _hit(r) else 0)
    q = t["quality"]
    assert q["judge_score_mean"] == pytest.approx(0.4)
    assert q["cache_similarity_mean"] == pytest.approx(0.93)
    ok = sorted(r.latency_ms for r in RECORDS if r.status == 200)
    p50, median = rep["latency"]["latency_ms"]["all"]["p50"], ok[(len(ok) + 1) // 2 - 1]
    assert p50 <= median < p50 + (1 if median < 100 else 10)  # its bin, by nearest rank


@pytest.mark.parametrize("since, until", [(None, None), (3.5, 30.2), (10.0, 12.0),
                                          (2.25, 2.75)])
def test_windows_that_cut_days_equal_the_records(ledger: LedgerStore, since: float | None,
                                                 until: float | None) -> None:
    """Whole days come from the daily sums, part-days from the rows: the same figures."""
    w = Window(since=None if since is None else T0 + since * DAY,
               until=None if until is None else T0 + until * DAY)
    inside = [r for r in RECORDS if (w.since is None or r.started_at >= w.since)
              and (w.until is None or r.started_at < w.until)]
    rep = build(ledger, w, "route")
    t = rep["totals"]
    assert t["calls"] == len(inside) and t["cache_hits"] == sum(map(_hit, inside))
    assert t["cost_usd"] == pytest.approx(_sum(inside, lambda r: r.cost_usd))
    assert rep["saved_usd"]["cache"] == pytest.approx(
        _sum(inside, lambda r: r.saved_cost_usd - r.cost_usd if _hit(r) else 0))
    assert rep["saved_usd"]["cascade"] == pytest.approx(
        _sum(inside, lambda r: r.saved_cascade_usd))
    assert rep["saved_tokens"]["compression"] == _sum(inside, lambda r: r.compress_saved_tokens)
    for g in rep["groups"]:
        mine = [r for r in inside if r.route == g["route"]]
        assert g["requests"] == sum(r.cascade_step is None for r in mine)
        assert g["quality"]["judged"] == sum(r.judge_score is not None for r in mine)


@pytest.mark.parametrize("group", ["team", "route", "backend", "day"])
def test_groups_and_series_add_up_to_the_totals(ledger: LedgerStore, group: str) -> None:
    rep = build(ledger, Window(team="red"), group)
    red = [r for r in RECORDS if r.team == "red"]
    assert rep["totals"]["requests"] == sum(r.cascade_step is None for r in red)
    for key in ("requests", "cost_usd", "cache_hits"):
        assert sum(g[key] for g in rep["groups"]) == pytest.approx(rep["totals"][key])
        assert sum(p[key] for p in rep["series"]["points"]) == pytest.approx(
            rep["totals"][key])


def test_both_ledgers_give_the_same_report(tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    reports = [build(_filled(kind, tmp_path, request), group_by="day")
               for kind in ("sqlite", "postgres")]
    for rep in reports:
        rep.pop("elapsed_ms")
    assert _close(*reports)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
        return True
    assert a == b
    return True
