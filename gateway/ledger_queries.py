"""The report's queries over the ledger: one module below the HTTP layer, the same SQL on
every ledger kind (``switchyard report``, ``GET /admin/report`` and the dashboard call it).

Queries are written once in the SQL both SQLite and PostgreSQL speak, with ``?``
placeholders (a ledger's ``query`` translates them); the few expressions that differ sit in
the dialect shims (``DAY_EXPR`` here, ``gateway.ledger.DAY_NUMBER``). Sums of integers come
back as ``int``, of reals as ``float``, and an empty window sums to 0, never ``None``.

- ``totals(ledger, window)``: one dict of ``MEASURES`` over the window;
- ``grouped(ledger, ["team"], window)``: the same per group (``GROUPS``), ordered by it;
- ``Window``: ``since``/``until`` (Unix seconds, ``until`` exclusive), ``team``, ``route``.

Speed: the whole UTC days of a window are read from ``requests_daily`` (the writer keeps
it: ``gateway.ledger.DAILY_SUMS``), only the part-days at its two ends from ``requests``
(by the ``started_at`` index); a group-by on ``key`` or ``cache``, which the daily table
does not keep, reads ``requests``. Both give the same figures (tests/plugins/
test_ledger_queries.py). ``requests`` counts what clients sent (a cascade's later stages
are ``calls``, not requests: docs/cascades.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gateway.hookspecs import LedgerStore
from gateway.ledger import DAILY_INTEGERS, DAILY_KEYS, DAILY_SUMS, DAY_NUMBER

DAY_S = 86_400
# name -> aggregate over ``requests`` (a daily sum of the same name adds up to it)
MEASURES: dict[str, str] = {name: f"SUM({expr})" for name, expr in DAILY_SUMS.items()}

# the dialect shim: the UTC day of ``started_at`` as 'YYYY-MM-DD'
DAY_EXPR = {
    "sqlite": "date(started_at, 'unixepoch')",
    "postgres": "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
GROUPS: dict[str, str] = {
    "team": "team", "route": "route", "backend": "backend", "model": "model",
    "key": "key_id", "endpoint": "endpoint", "energy_source": "energy_source",
    "cache": "cache", "day": "day",  # day: 'YYYY-MM-DD' (UTC)
}
_DAILY = {k for k, _ in DAILY_KEYS}  # groups the daily table keeps


@dataclass(frozen=True, slots=True)
class Window:
    """Which rows a query covers: ``since <= started_at < until``, one team, one route
    (None: no bound)."""

    since: float | None = None
    until: float | None = None
    team: str | None = None
    route: str | None = None

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """The ``WHERE`` clause over ``requests`` (``?`` placeholders) and its values."""
        conds, params = [], []
        for cond, value in (("started_at >= ?", self.since), ("started_at < ?", self.until),
                            ("team = ?", self.team), ("route = ?", self.route)):
            if value is not None:
                conds.append(cond)
                params.append(value)
        return (" WHERE " + " AND ".join(conds)) if conds else "", tuple(params)

    def split(self) -> tuple[tuple[int | None, int | None] | None, list[Window]]:
        """The whole UTC days inside (``[first, end)`` day numbers; None: none) and the
        part-days left at the ends, as windows over ``requests``."""
        first = None if self.since is None else math.ceil(self.since / DAY_S)
        end = None if self.until is None else math.floor(self.until / DAY_S)
        if first is not None and end is not None and first >= end:
            return None, [self]
        edges = []
        if self.since is not None and first is not None and self.since < first * DAY_S:
            edges.append(replace(self, until=first * DAY_S))
        if self.until is not None and end is not None and end * DAY_S < self.until:
            edges.append(replace(self, since=end * DAY_S))
        return (first, end), edges


def _dialect(dialect: str) -> str:
    if dialect not in DAY_EXPR:
        raise ValueError(f"no report SQL for ledger dialect {dialect!r} (known: {', '.join(DAY_EXPR)})")
    return dialect


def _check(by: Sequence[str]) -> None:
    bad = [g for g in by if g not in GROUPS]
    if bad:
        raise ValueError(f"group by one or more of {', '.join(GROUPS)}; got {bad}")


def raw_sql(dialect: str, by: Sequence[str], window: Window) -> tuple[str, tuple[Any, ...]]:
    """``MEASURES`` per group of ``by`` (none: one row) over ``requests``; ``day`` as a
    day number."""
    _check(by)
    day = DAY_NUMBER[_dialect(dialect)]
    cols = [f"{day if g == 'day' else GROUPS[g]} AS {g}" for g in by]
    sums = [f"COALESCE({sql}, 0) AS {name}" for name, sql in MEASURES.items()]
    where, params = window.where()
    group = f" GROUP BY {', '.join(by)}" if by else ""
    return f"SELECT {', '.join([*cols, *sums])} FROM requests{where}{group}", params


def daily_sql(by: Sequence[str], window: Window, days: tuple[int | None, int | None]
              ) -> tuple[str, tuple[Any, ...]]:
    """The same over ``requests_daily`` for the whole days ``[first, end)``."""
    cols = [f"{g} AS {g}" for g in by]
    sums = [f"COALESCE(SUM({name}), 0) AS {name}" for name in MEASURES]
    conds, params = [], []
    for cond, value in (("day >= ?", days[0]), ("day < ?", days[1]),
                        ("team = ?", window.team), ("route = ?", window.route)):
        if value is not None:
            conds.append(cond)
            params.append(value)
    where = (" WHERE " + " AND ".join(conds)) if conds else ""
    group = f" GROUP BY {', '.join(by)}" if by else ""
    return f"SELECT {', '.join([*cols, *sums])} FROM requests_daily{where}{group}", tuple(params)


def _key(row: dict[str, Any], by: Sequence[str]) -> tuple[Any, ...]:
    out = []
    for g in by:
        v = row[g]
        if g == "day":
            v = datetime.fromtimestamp(int(v) * DAY_S, UTC).strftime("%Y-%m-%d")
        elif v == "" and g in _DAILY:
            v = None  # the daily table keeps a missing team, route... as ''
        out.append(v)
    return tuple(out)


def _merge(parts: Iterable[list[dict[str, Any]]], by: Sequence[str]) -> list[dict[str, Any]]:
    acc: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            key = _key(row, by)
            into = acc.setdefault(key, {**dict(zip(by, key, strict=True)),
                                        **{m: 0 for m in MEASURES}})
            for m in MEASURES:
                into[m] += row[m]
    for row in acc.values():
        for m in MEASURES:
            row[m] = int(row[m]) if m in DAILY_INTEGERS else float(row[m])
    return [acc[k] for k in sorted(acc, key=lambda k: [(v is not None, v) for v in k])]


def _run(ledger: LedgerStore, by: Sequence[str], window: Window) -> list[dict[str, Any]]:
    _check(by)
    days, edges = window.split()
    if days is None or not set(by) <= _DAILY:
        return _merge([ledger.query(*raw_sql(ledger.dialect, by, window))], by)
    parts = [ledger.query(*daily_sql(by, window, days))]
    parts += [ledger.query(*raw_sql(ledger.dialect, by, edge)) for edge in edges]
    return _merge(parts, by)


def totals(ledger: LedgerStore, window: Window = Window()) -> dict[str, Any]:
    """``MEASURES`` summed over the window (blocking: call it off the event loop)."""
    rows = _run(ledger, [], window)
    return rows[0] if rows else {m: 0 if m in DAILY_INTEGERS else 0.0 for m in MEASURES}


def grouped(ledger: LedgerStore, by: Sequence[str], window: Window = Window()
            ) -> list[dict[str, Any]]:
    """``MEASURES`` per group of ``by`` (``GROUPS`` names), ordered by the group."""
    if not by:
        raise ValueError(f"group by one or more of {', '.join(GROUPS)}; got nothing")
    return _run(ledger, by, window)
