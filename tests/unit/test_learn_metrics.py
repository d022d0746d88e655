"""RouteLLM's APGR/CPT and RouterBench's AIQ on tables small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.learn import metrics

# four prompts: the weak model gets only the first right, the strong model all four; the
# router scores prompts 1 and 2 as needing the strong model
WEAK = np.array([1.0, 0.0, 0.0, 0.0])
STRONG = np.array([1.0, 1.0, 1.0, 1.0])
SCORES = np.array([0.1, 0.9, 0.8, 0.2])


def test_the_sweep_follows_routellm_cutoffs() -> None:
    # two bins: cutoffs at the min, the median and the max of the scores; ">=" except at
    # the last cutoff, where ">" sends nothing to the strong model
    pts = metrics.sweep(SCORES, WEAK, STRONG, deciles=2)
    assert [(p.share, p.quality) for p in pts] == [(1.0, 1.0), (0.5, 0.75), (0.0, 0.25)]
    # with RouteLLM's ten deciles the sweep still runs from all-strong to all-weak
    pts10 = metrics.sweep(SCORES, WEAK, STRONG)
    assert len(pts10) == 11 and pts10[0].share == 1.0 and pts10[-1].share == 0.0


def test_apgr_and_cpt_by_hand() -> None:
    pts = metrics.sweep(SCORES, WEAK, STRONG, deciles=2)
    # area: 0.5 * (0.25 + 0.75) / 2 + 0.5 * (0.75 + 1) / 2 = 0.6875; weak 0.25, strong 1.0
    assert metrics.apgr(pts, 0.25, 1.0) == pytest.approx((0.6875 - 0.25) / 0.75)
    # 50 % of the gap is quality 0.625: between (0, 0.25) and (0.5, 0.75), at share 0.375
    assert metrics.cpt(pts, 0.25, 1.0, 0.5) == pytest.approx(0.375)
    # 80 %: quality 0.85, 40 % of the way from (0.5, 0.75) to (1.0, 1.0)
    assert metrics.cpt(pts, 0.25, 1.0, 0.8) == pytest.approx(0.7)


def test_a_router_that_inverts_the_order_is_worse_than_random() -> None:
    bad = metrics.summary(metrics.sweep(-SCORES, WEAK, STRONG, deciles=2), 0.25, 1.0)
    assert bad["apgr"] < 0.5 < metrics.apgr(metrics.sweep(SCORES, WEAK, STRONG, deciles=2), 0.25, 1.0)


def test_random_and_perfect_references() -> None:
    rng = np.random.default_rng(3)
    weak = (rng.random(4000) < 0.6).astype(float)
    strong = np.maximum(weak, (rng.random(4000) < 0.5).astype(float))
    rnd = metrics.summary(metrics.random_points(weak, strong), weak.mean(), strong.mean())
    assert rnd["apgr"] == pytest.approx(0.5, abs=0.03)
    assert rnd["cpt50"] == pytest.approx(0.5, abs=0.05)
    perfect = metrics.perfect_points(weak, strong)
    gap_share = float(((strong - weak) > 0).mean())  # the prompts only the strong model gets
    # the oracle recovers half the gap with half of those prompts
    assert metrics.cpt(perfect, weak.mean(), strong.mean(), 0.5) == pytest.approx(gap_share / 2, abs=0.011)


def test_perfect_points_by_hand() -> None:
    pts = metrics.perfect_points(WEAK, STRONG, steps=4)
    assert [(p.share, p.quality) for p in pts] == [
        (0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 1.0)]


def test_a_cascade_pays_for_both_calls_when_it_escalates() -> None:
    pts = metrics.sweep(SCORES, WEAK, STRONG, np.full(4, 1.0), np.full(4, 10.0), deciles=2,
                        escalate_pays_both=True)
    assert [p.cost_usd for p in pts] == [11.0, 6.0, 1.0]
    routed = metrics.sweep(SCORES, WEAK, STRONG, np.full(4, 1.0), np.full(4, 10.0), deciles=2)
    assert [p.cost_usd for p in routed] == [10.0, 5.5, 1.0]


def test_aiq_of_the_zero_router_is_the_line_between_single_models() -> None:
    zero = metrics.hull([1.0, 3.0], [0.5, 0.9])
    assert metrics.aiq(zero, 1.0, 3.0) == pytest.approx(0.7)
    # a router point above that line raises the area: (0.5+0.85)/2 + (0.85+0.9)/2, over 2
    router = metrics.hull([1.0, 2.0, 3.0], [0.5, 0.85, 0.9])
    assert metrics.aiq(router, 1.0, 3.0) == pytest.approx(0.775)
    # a point below the hull changes nothing
    assert metrics.aiq(metrics.hull([1.0, 2.0, 3.0], [0.5, 0.6, 0.9]), 1.0, 3.0) == pytest.approx(0.7)


def test_the_hull_never_decreases() -> None:
    # paying more for less (3.0 -> 0.8) is never on the hull: flat at 0.9 past cost 2
    h = metrics.hull([1.0, 2.0, 3.0], [0.5, 0.9, 0.8])
    assert h.tolist() == [[1.0, 0.5], [2.0, 0.9]]
    assert metrics.aiq(h, 1.0, 3.0) == pytest.approx((0.7 + 0.9) / 2)
