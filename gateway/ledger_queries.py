"""The report's queries over the ledger: one module below the HTTP layer, the same SQL on
every ledger kind (``switchyard report``, ``GET /admin/report`` and the dashboard call it).

Queries are written once in the SQL both SQLite and PostgreSQL speak, with ``?``
placeholders (a ledger's ``query`` translates them); the few expressions that differ sit in
the dialect shim below (``_DAY``). Sums of integers come back as ``int``, of reals as
``float``, and an empty window sums to 0, never ``None``.

- ``totals(ledger, window)``: one dict of ``MEASURES`` over the window;
- ``grouped(ledger, ["team"], window)``: the same per group (``GROUPS``: team, route,
  backend, day, model, key, endpoint, energy_source, cache), ordered by the group;
- ``Window``: ``since``/``until`` (Unix seconds, ``until`` exclusive), ``team``, ``route``.

``requests`` counts ledger rows: a request refused before any backend is one row, and a
cascade writes one row per stage it ran (docs/cascades.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.hookspecs import LedgerStore

# name -> aggregate; every one is COALESCEd to 0 over an empty window
MEASURES: dict[str, str] = {
    "requests": "COUNT(*)",
    "succeeded": "SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END)",
    "cache_hits": "SUM(CASE WHEN cache LIKE 'hit%' THEN 1 ELSE 0 END)",
    "prompt_tokens": "SUM(prompt_tokens)",
    "completion_tokens": "SUM(completion_tokens)",
    "cost_usd": "SUM(cost_usd)",
    "energy_j": "SUM(energy_j)",
    "co2_g": "SUM(co2_g)",
    "bytes": "SUM(bytes_sent + bytes_received)",
    "saved_cost_usd": "SUM(saved_cost_usd)",
    "saved_energy_j": "SUM(saved_energy_j)",
    "saved_co2_g": "SUM(saved_co2_g)",
    "saved_bytes": "SUM(saved_bytes)",
    "compress_saved_tokens": "SUM(compress_saved_tokens)",
    "compress_saved_bytes": "SUM(compress_saved_bytes)",
}
_FLOATS = {"cost_usd", "energy_j", "co2_g", "saved_cost_usd", "saved_energy_j", "saved_co2_g"}

# the dialect shim: the UTC day of ``started_at`` as 'YYYY-MM-DD'
_DAY = {
    "sqlite": "date(started_at, 'unixepoch')",
    "postgres": "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
GROUPS: dict[str, str] = {
    "team": "team", "route": "route", "backend": "backend", "model": "model",
    "key": "key_id", "endpoint": "endpoint", "energy_source": "energy_source",
    "cache": "cache", "day": "day",  # "day": ``_DAY`` of the ledger's dialect
}


@dataclass(frozen=True, slots=True)
class Window:
    """Which rows a query covers: ``since <= started_at < until``, one team, one route
    (None: no bound)."""

    since: float | None = None
    until: float | None = None
    team: str | None = None
    route: str | None = None

    def where(self) -> tuple[str, tuple[Any, ...]]:
        conds, params = [], []
        for cond, value in (("started_at >= ?", self.since), ("started_at < ?", self.until),
                            ("team = ?", self.team), ("route = ?", self.route)):
            if value is not None:
                conds.append(cond)
                params.append(value)
        return (" WHERE " + " AND ".join(conds)) if conds else "", tuple(params)


def _dialect(dialect: str) -> str:
    if dialect not in _DAY:
        raise ValueError(f"no report SQL for ledger dialect {dialect!r} (known: {', '.join(_DAY)})")
    return dialect


def _measures() -> str:
    return ", ".join(f"COALESCE({sql}, 0) AS {name}" for name, sql in MEASURES.items())


def totals_sql(dialect: str, window: Window) -> tuple[str, tuple[Any, ...]]:
    _dialect(dialect)
    where, params = window.where()
    return f"SELECT {_measures()} FROM requests{where}", params


def grouped_sql(dialect: str, by: Sequence[str], window: Window) -> tuple[str, tuple[Any, ...]]:
    bad = [g for g in by if g not in GROUPS]
    if bad or not by:
        raise ValueError(f"group by one or more of {', '.join(GROUPS)}; got {bad or 'nothing'}")
    cols = [f"{_DAY[_dialect(dialect)] if g == 'day' else GROUPS[g]} AS {g}" for g in by]
    where, params = window.where()
    names = ", ".join(by)
    return (f"SELECT {', '.join(cols)}, {_measures()} FROM requests{where} "
            f"GROUP BY {names} ORDER BY {names}"), params


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    for name in MEASURES:
        if name in row:
            row[name] = float(row[name]) if name in _FLOATS else int(row[name])
    return row


def totals(ledger: LedgerStore, window: Window = Window()) -> dict[str, Any]:
    """``MEASURES`` summed over the window (blocking: call it off the event loop)."""
    sql, params = totals_sql(ledger.dialect, window)
    return _typed(ledger.query(sql, params)[0])


def grouped(ledger: LedgerStore, by: Sequence[str], window: Window = Window()) -> list[dict[str, Any]]:
    """``MEASURES`` per group of ``by`` (``GROUPS`` names), ordered by the group."""
    sql, params = grouped_sql(ledger.dialect, by, window)
    return [_typed(r) for r in ledger.query(sql, params)]
