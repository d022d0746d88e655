"""What each request saved (gateway.savings), from plain records: routing against the
route's baseline at the request's own tokens, compression at the serving backend's input
price, a cascade against its strongest stage with every stage's spend debited, and nothing
for an error or a cache hit (the cache writes its own)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.accounting import UsageRecord, co2_grams
from gateway.backend import BaseBackend
from gateway.config import BackendConfig
from gateway.interfaces import Usage
from gateway.savings import Savings, baselines_of


def backend(name: str, inp: float, out: float, **energy: Any) -> BaseBackend:
    cfg = BackendConfig(name=name, plugin="x", model="m", pricing={
        "input_per_mtok": inp, "output_per_mtok": out}, energy=energy or {"watts_busy": 100})
    return BaseBackend(cfg)


BACKENDS = {"cheap": backend("cheap", 1.0, 2.0, joules_per_token=0.5),
            "dear": backend("dear", 10.0, 30.0, joules_per_token=2.0, grid_g_per_kwh=100.0)}
TARGETS = {"auto": SimpleNamespace(backends=("cheap", "dear"), baseline="dear", cascade=None),
           "ask": SimpleNamespace(backends=("cheap", "dear"), baseline=None,
                                  cascade=SimpleNamespace(route="ask",
                                                          stages=("cheap", "dear")))}


@pytest.fixture
def savings() -> Savings:
    return Savings(BACKENDS, *baselines_of(TARGETS))


def served(requested: str = "auto", backend: str = "cheap", **kw: Any) -> UsageRecord:
    rec = UsageRecord("r1", "chat", requested, route=requested, backend=backend,
                      prompt_tokens=100, completion_tokens=20, **kw)
    b = BACKENDS.get(backend, BACKENDS["cheap"])
    rec.cost_usd = b.cost_usd(Usage(rec.prompt_tokens, rec.completion_tokens), 0.0)
    rec.energy_j = 0.5 * 120
    return rec


def test_routing_saves_the_baselines_price_for_the_same_tokens(savings: Savings) -> None:
    rec = served()
    savings.fill(rec)
    assert rec.baseline == "dear"
    assert rec.saved_routing_usd == pytest.approx((100 * 10 + 20 * 30) / 1e6 - rec.cost_usd)
    assert rec.saved_routing_energy_j == pytest.approx(2.0 * 120 - 60)
    assert rec.saved_routing_co2_g == pytest.approx(co2_grams(240, 100.0) - rec.co2_g)
    base = served(backend="dear")
    savings.fill(base)  # the baseline served: routing saved nothing
    assert base.saved_routing_usd == 0 and base.saved_routing_energy_j == 0


def test_compression_saves_its_tokens_at_the_serving_price(savings: Savings) -> None:
    rec = served(compress="compressed", compress_saved_tokens=300)
    savings.fill(rec)
    assert rec.saved_compress_usd == pytest.approx(300 * 1.0 / 1e6)
    assert rec.saved_compress_energy_j == pytest.approx(300 * 0.5)


def test_errors_and_cache_hits_have_no_routing_saving(savings: Savings) -> None:
    err = served(status=502)
    hit = served(backend="cache", cache="hit-exact")
    for rec in (err, hit):
        savings.fill(rec)
        assert rec.saved_routing_usd == 0 and rec.saved_compress_usd == 0


def _step(n: int, backend: str, answered: int | None, score: float | None) -> UsageRecord:
    rec = served("ask", backend)
    rec.decision = {"cascade": {"step": n, "route": "ask", "backend": backend,
                                "score": score, "answered": answered}}
    return rec


def test_a_cascade_saves_against_its_strongest_stage(savings: Savings) -> None:
    dear_price = (100 * 10 + 20 * 30) / 1e6
    accepted = _step(1, "cheap", 1, 0.9)
    savings.fill(accepted)
    assert accepted.baseline == "dear" and accepted.judge_score == 0.9
    assert accepted.cascade_step == 1 and accepted.saved_routing_usd == 0
    assert accepted.saved_cascade_usd == pytest.approx(dear_price - accepted.cost_usd)
    # an escalation: the rejected cheap call and the dear answer; together they saved
    # less than nothing (the cheap call was paid for on top of the strongest stage)
    rows = [_step(1, "cheap", 2, 0.1), _step(2, "dear", 2, None)]
    for r in rows:
        savings.fill(r)
    total = sum(r.saved_cascade_usd for r in rows)
    assert total == pytest.approx(dear_price - sum(r.cost_usd for r in rows))
    assert total < 0
