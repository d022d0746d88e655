"""Budget arithmetic: periods, money in integer nano-dollars, worst-case cost.

Pure functions, no I/O. Money is kept in the state store as integer nano-dollars
(1e-9 USD), so sums never drift. Redis keeps them exact up to 2**63 - 1 (about nine billion
dollars per team and period): its scripts pass amounts as integer strings, never through
Lua's doubles (see plugins/state_redis.py).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")
NANO = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_nano(usd: float) -> int:
    """Dollars to nano-dollars, rounded to the nearest (a settled cost)."""
    return round(usd * NANO)


def to_nano_ceil(usd: float) -> int:
    """Dollars to nano-dollars, rounded up (a reservation never under-reserves)."""
    return math.ceil(usd * NANO - 1e-6)


def to_usd(nano: int) -> float:
    return nano / NANO


def period_start(period: Period, now: float) -> datetime:
    """The UTC instant the period holding ``now`` (a Unix time) began."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "total":
        return _EPOCH
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":  # ISO weeks start on Monday
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(period: Period, now: float) -> datetime | None:
    """The UTC instant the period holding ``now`` ends; None for ``total``."""
    start = period_start(period, now)
    if period == "total":
        return None
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def period_id(period: Period, now: float) -> str:
    """A stable name for the period holding ``now``: ``d2026-11-05``, ``w2026-11-02``,
    ``m2026-11`` or ``total``. Spend is kept per period id, so a new period starts at
    zero at its boundary with no restart and no job."""
    if period == "total":
        return "total"
    start = period_start(period, now)
    if period == "month":
        return "m" + start.strftime("%Y-%m")
    return period[0] + start.strftime("%Y-%m-%d")


def period_ttl_s(period: Period, now: float, keep_s: int = 35 * 86400) -> int:
    """How long a period's counters are kept in the store: to its end plus ``keep_s``
    (so last period's spend can still be read); 0 (forever) for ``total``."""
    end = period_end(period, now)
    if end is None:
        return 0
    return int(end.timestamp() - now) + keep_s


def completion_bound(max_tokens: int | None, context_window: int | None,
                     default_max_tokens: int) -> int:
    """The most tokens one completion can write: ``max_tokens``; without it the backend's
    context window (prompt and completion share it); without either, the configured cap."""
    if max_tokens is not None and max_tokens > 0:
        out = max_tokens
    else:
        out = context_window or default_max_tokens
    return min(out, context_window) if context_window else out


def worst_case_usd(price_in: float, price_out: float, prompt_tokens: int,
                   max_tokens: int | None, default_max_tokens: int, *,
                   context_window: int | None = None, choices: int = 1) -> float:
    """The most a call can cost at the backend's per-token prices: ``prompt_tokens`` (an
    upper bound of them, at most the context window) plus ``choices`` completions of
    ``completion_bound`` tokens each (no completion for an embedding: ``choices=0``)."""
    prompt = max(0, prompt_tokens)
    if context_window:
        prompt = min(prompt, context_window)
    out = completion_bound(max_tokens, context_window, default_max_tokens) if choices > 0 else 0
    return price_in * prompt + price_out * out * choices
