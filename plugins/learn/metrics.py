"""Router and cascade metrics: RouteLLM's APGR and CPT, RouterBench's AIQ.

- ``sweep`` is RouteLLM's ``evaluate.py``/``benchmarks.py`` loop: cutoffs at the deciles of
  the router's scores (``pd.qcut(scores, 10, retbins=True)``: 11 edges, linear
  interpolation); at each edge but the last a prompt goes to the strong model when its
  score is ``>=`` the edge, at the last when ``>`` it (so the sweep runs from 100 % to 0 %
  strong calls); the point is (strong-call share, mean quality).
- ``apgr``: RouteLLM's ``apgr_metric``: trapezoid area under the points sorted by share,
  minus the weak model's, over the strong model's minus the weak model's (both flat lines
  over the same share range).
- ``cpt``: RouteLLM's ``pct_call_metric``: ``np.interp`` of the target quality
  (weak + x * (strong - weak)) over the points' qualities, to their shares; like RouteLLM's,
  it reads the points in order of share (their qualities are nearly always increasing).
- ``aiq``: RouterBench's Average Improvement in Quality: the area under the router's
  non-decreasing convex hull in the (cost, quality) plane, over the cost range of the single
  models, divided by that range; the zero router is the same over the single models' own
  points (any mix of single models, chosen at random per request).

Shares and CPTs are fractions in [0, 1] (RouteLLM prints percent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Point:
    share: float  # of requests sent to (or escalated to) the strong model
    quality: float  # mean quality over all requests
    cost_usd: float  # mean cost per request
    threshold: float | None = None


def sweep(scores: Array, weak: Array, strong: Array, weak_cost: Array | None = None,
          strong_cost: Array | None = None, deciles: int = 10,
          escalate_pays_both: bool = False) -> list[Point]:
    """RouteLLM's threshold sweep over ``scores`` (higher: strong). ``weak``/``strong``: each
    prompt's quality under each model. With ``escalate_pays_both`` (a cascade) a prompt sent
    to the strong model also paid for the weak call."""
    s = np.asarray(scores, dtype=np.float64)
    cutoffs = np.quantile(s, np.linspace(0.0, 1.0, deciles + 1))
    wc = np.zeros_like(s) if weak_cost is None else np.asarray(weak_cost, dtype=np.float64)
    sc = np.zeros_like(s) if strong_cost is None else np.asarray(strong_cost, dtype=np.float64)
    out = []
    for i, cut in enumerate(cutoffs):
        sel = s >= cut if i != len(cutoffs) - 1 else s > cut
        q = np.where(sel, strong, weak)
        c = np.where(sel, sc + (wc if escalate_pays_both else 0.0), wc)
        out.append(Point(float(sel.mean()), float(q.mean()), float(c.mean()), float(cut)))
    return out


def _sorted(points: Sequence[Point]) -> tuple[Array, Array]:
    pts = sorted(points, key=lambda p: p.share)
    return (np.array([p.share for p in pts]), np.array([p.quality for p in pts]))


def _trapz(y: Array, x: Array) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def apgr(points: Sequence[Point], weak_quality: float, strong_quality: float) -> float:
    x, y = _sorted(points)
    auc = _trapz(y, x)
    span = float(x[-1] - x[0])
    weak_auc, strong_auc = weak_quality * span, strong_quality * span
    return (auc - weak_auc) / (strong_auc - weak_auc)


def cpt(points: Sequence[Point], weak_quality: float, strong_quality: float,
        fraction: float) -> float:
    x, y = _sorted(points)
    target = fraction * (strong_quality - weak_quality) + weak_quality
    return float(np.interp(target, y, x))


def random_points(weak: Array, strong: Array, weak_cost: Array | None = None,
                  strong_cost: Array | None = None, iters: int = 10, seed: int = 0,
                  escalate_pays_both: bool = False) -> list[Point]:
    """RouteLLM's random router: uniform scores, ``iters`` runs averaged per share."""
    rng = np.random.default_rng(seed)
    runs: dict[float, list[Point]] = {}
    for _ in range(iters):
        for p in sweep(rng.random(len(weak)), weak, strong, weak_cost, strong_cost,
                       escalate_pays_both=escalate_pays_both):
            runs.setdefault(round(p.share, 12), []).append(p)
    return [Point(share, float(np.mean([p.quality for p in ps])),
                  float(np.mean([p.cost_usd for p in ps])))
            for share, ps in sorted(runs.items())]


def perfect_points(weak: Array, strong: Array, weak_cost: Array | None = None,
                   strong_cost: Array | None = None, steps: int = 100,
                   escalate_pays_both: bool = False) -> list[Point]:
    """The oracle (RouteLLM's ``get_optimal_accuracy``): at each share, the strong model
    goes to the prompts where it gains the most; past the prompts it helps, to the rest."""
    gain = np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64)
    order = np.argsort(-gain, kind="stable")
    n = len(gain)
    wc = np.zeros(n) if weak_cost is None else np.asarray(weak_cost, dtype=np.float64)
    sc = np.zeros(n) if strong_cost is None else np.asarray(strong_cost, dtype=np.float64)
    cum_gain = np.concatenate([[0.0], np.cumsum(np.maximum(gain[order], 0.0))])
    extra = sc + (wc if escalate_pays_both else 0.0) - wc
    cum_cost = np.concatenate([[0.0], np.cumsum(extra[order])])
    out = []
    for k in range(steps + 1):
        m = round(k / steps * n)
        out.append(Point(m / n, float((np.sum(weak) + cum_gain[m]) / n),
                         float((np.sum(wc) + cum_cost[m]) / n)))
    return out


def summary(points: Sequence[Point], weak_quality: float, strong_quality: float) -> dict[str, float]:
    return {"apgr": apgr(points, weak_quality, strong_quality),
            "cpt50": cpt(points, weak_quality, strong_quality, 0.5),
            "cpt80": cpt(points, weak_quality, strong_quality, 0.8)}


# ---- RouterBench's AIQ ---------------------------------------------------------------------


def hull(costs: Sequence[float], qualities: Sequence[float]) -> Array:
    """The non-decreasing upper convex hull of (cost, quality) points, as (k, 2) vertices
    sorted by cost: what a router reaches by mixing its operating points at random, never
    paying more for less."""
    pts = sorted(set(zip((float(c) for c in costs), (float(q) for q in qualities), strict=True)))
    upper: list[tuple[float, float]] = []
    for p in pts:
        while len(upper) >= 2:
            (x1, y1), (x2, y2) = upper[-2], upper[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # upper[-1] not above
                upper.pop()
            else:
                break
        upper.append(p)
    best = int(np.argmax([y for _, y in upper]))
    return np.array(upper[: best + 1])  # past the best quality: flat (more cost, no gain)


def aiq(vertices: Array, lo: float, hi: float) -> float:
    """Mean quality of a hull over the cost range [lo, hi], flat past its ends."""
    if hi <= lo:
        return float(vertices[:, 1].max())
    xs = vertices[:, 0]
    grid = np.unique(np.concatenate([[lo, hi], xs[(xs > lo) & (xs < hi)]]))
    ys = np.interp(grid, xs, vertices[:, 1])
    return _trapz(ys, grid) / (hi - lo)
