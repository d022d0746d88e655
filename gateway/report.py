"""The savings report (docs/report.md): what the traffic cost and what each technique
(routing, the cache, compression, cascades) saved, in dollars, joules, grams of CO2,
tokens and bytes, per group and over time, with latency percentiles and quality.

``build(ledger, window, group_by)`` returns the JSON that ``switchyard report --json``,
``GET /admin/report`` and the dashboard share. Its queries run at once, each on its own
connection, in the SQL SQLite and PostgreSQL both speak (``?`` placeholders; the few
expressions that differ come from ``gateway.ledger_queries``' dialect shim or ``_BUCKET``):

- the cube: plain sums per (time bucket, group, backend[, cache outcome]), from which the
  totals, the groups and the series are added up here: the whole UTC days of the window
  from the ledger's daily sums (``requests_daily``) when the series is by day or week, the
  part-days and finer series from the rows;
- the latency and time-to-first-token histograms (bins of at most 1 %, ``_bin``) and the
  quality sums, over the window's latest ``RECENT`` calls (all of them in a smaller window).

The savings are columns the gateway wrote with each row (``gateway.savings``), so no row's
JSON is parsed.

``requests`` counts what clients sent: a cascade's later stages are ``calls``, not
requests (docs/cascades.md). Estimated energy (an energy profile) comes with a band
(``ESTIMATE_BAND``: a profile is a guess); measured energy (nvml, rapl) is given as is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from gateway.errors import InvalidRequest
from gateway.hookspecs import LedgerStore
from gateway.ledger import DAILY_SUMS
from gateway.ledger_queries import DAY_EXPR, DAY_S, Window, daily_sql

TECHNIQUES = ("routing", "cache", "compression", "cascade")
GROUP_BY = ("team", "route", "backend", "day")
# an energy profile's joules are a guess: shown between these multiples of the estimate
ESTIMATE_BAND = (0.5, 1.5)
PERCENTILES = (50, 90, 95, 99)
_HIT = "cache LIKE 'hit%'"
_MEASURED = "energy_source NOT IN ('profile', 'none')"

# the sums one scan takes per cube cell (plain sums: NULLs of rows written before a column
# existed add nothing); every other figure is derived from them in Python (``_derive``)
SUMS: dict[str, str] = {
    "calls": "COUNT(*)",
    "requests": "SUM(CASE WHEN cascade_step > 1 THEN 0 ELSE 1 END)",
    "succeeded": "SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END)",
    "energy_measured_j": "SUM(CASE WHEN energy_source IN ('profile', 'none') THEN 0 "
                         "ELSE energy_j END)",
    "prompt_tokens": "SUM(prompt_tokens)",
    "completion_tokens": "SUM(completion_tokens)", "cost_usd": "SUM(cost_usd)",
    "energy_j": "SUM(energy_j)", "co2_g": "SUM(co2_g)",
    "bytes": "SUM(bytes_sent + bytes_received)",
    "hit_usd": "SUM(saved_cost_usd)", "hit_energy_j": "SUM(saved_energy_j)",
    "hit_co2_g": "SUM(saved_co2_g)", "hit_bytes": "SUM(saved_bytes)",
    "routing_usd": "SUM(saved_routing_usd)", "routing_energy_j": "SUM(saved_routing_energy_j)",
    "routing_co2_g": "SUM(saved_routing_co2_g)",
    "compression_usd": "SUM(saved_compress_usd)",
    "compression_energy_j": "SUM(saved_compress_energy_j)",
    "compression_co2_g": "SUM(saved_compress_co2_g)",
    "compression_tokens": "SUM(compress_saved_tokens)",
    "compression_bytes": "SUM(compress_saved_bytes)",
    "cascade_usd": "SUM(saved_cascade_usd)", "cascade_energy_j": "SUM(saved_cascade_energy_j)",
    "cascade_co2_g": "SUM(saved_cascade_co2_g)",
}
MEASURES = ("requests", "calls", "succeeded", "cache_hits", "cache_lookups", "prompt_tokens",
            "completion_tokens", "cost_usd", "energy_j", "energy_measured_j", "co2_g", "bytes",
            "routing_usd", "routing_energy_j", "routing_co2_g", "cache_usd", "cache_energy_j",
            "cache_co2_g", "cache_tokens", "cache_bytes", "compression_usd",
            "compression_energy_j", "compression_co2_g", "compression_tokens",
            "compression_bytes", "cascade_usd", "cascade_energy_j", "cascade_co2_g")
QUALITY = ("judged", "judge_score_sum", "semantic_hits", "similarity_sum")
RECENT = 100_000  # latency percentiles and quality: over the window's latest calls
_INTS = {"requests", "calls", "succeeded", "cache_hits", "cache_lookups", "prompt_tokens",
         "completion_tokens", "bytes", "cache_tokens", "cache_bytes", "compression_tokens",
         "compression_bytes", "judged", "semantic_hits"}
_SERIES = ("requests", "cache_hits", "cache_lookups", "cost_usd", "energy_j",
           "energy_measured_j", "co2_g", "saved_usd")
# the time bucket a row falls in (``started_at`` divided by a whole number of seconds,
# rounded down: PostgreSQL's CAST rounds to nearest, so FLOOR there)
_BUCKET = {"sqlite": "CAST(started_at / {b} AS INTEGER)", "postgres": "FLOOR(started_at / {b})"}
_BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def parse_time(value: str | None, param: str) -> float | None:
    """A Unix time or an ISO date/time (UTC unless it says otherwise); 400 otherwise."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param} takes a Unix time or an ISO date, not {value!r}.",
                             param=param) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def window_of(params: Mapping[str, str | None]) -> Window:
    """``since``, ``until``, ``team`` and ``route`` from query parameters or options."""
    return Window(since=parse_time(params.get("since"), "since"),
                  until=parse_time(params.get("until"), "until"),
                  team=params.get("team") or None, route=params.get("route") or None)


def check_group(group_by: str | None) -> str:
    group = group_by or "backend"
    if group not in GROUP_BY:
        raise InvalidRequest(f"group_by takes {', '.join(GROUP_BY)}; got {group!r}.",
                             param="group_by")
    return group


def _where(window: Window, extra: str = "") -> tuple[str, tuple[Any, ...]]:
    where, params = window.where()
    if extra:
        where = f"{where} AND {extra}" if where else f" WHERE {extra}"
    return where, params


def _group_expr(dialect: str, group: str) -> str:
    if group not in GROUP_BY:
        raise ValueError(f"group_by takes {', '.join(GROUP_BY)}; got {group!r}")
    return DAY_EXPR[dialect] if group == "day" else group


def cube_sql(dialect: str, group: str, bucket_s: int, window: Window,
             ) -> tuple[str, tuple[Any, ...]]:
    """One scan: ``SUMS`` per (time bucket, group, backend, cache outcome)."""
    keys = (_BUCKET[dialect].format(b=int(bucket_s)), _group_expr(dialect, group), "backend",
            "cache")
    names = ("bucket", "grp", "backend", "cache")
    cols = ", ".join(f"{k} AS {n}" for k, n in zip(keys, names, strict=True))
    sums = ", ".join(f"{sql} AS {name}" for name, sql in SUMS.items())
    where, params = _where(window)
    return (f"SELECT {cols}, {sums} FROM requests{where} "
            f"GROUP BY {', '.join(keys)}"), params


def _bin(dialect: str, column: str) -> str:
    """``column`` (milliseconds) rounded down to a bin of at most 1 % of its value past
    100 ms: 1 ms below 100 ms, 10 ms below 1 s, 100 ms below 10 s, 1 s above."""
    def down(step: int) -> str:
        return _BUCKET[dialect].format(b=step).replace("started_at", column) + f" * {step}"
    return (f"CASE WHEN {column} < 100 THEN {down(1)} WHEN {column} < 1000 THEN {down(10)} "
            f"WHEN {column} < 10000 THEN {down(100)} ELSE {down(1000)} END")


def _recent(window: Window, columns: str, extra: str = "") -> tuple[str, tuple[Any, ...]]:
    """The window's latest ``RECENT`` rows (walked back on a time index), as a subquery."""
    where, params = _where(window, extra)
    return (f"(SELECT {columns} FROM requests{where} ORDER BY started_at DESC "
            f"LIMIT {RECENT}) AS recent"), params


def histogram_sql(dialect: str, column: str, window: Window) -> tuple[str, tuple[Any, ...]]:
    """Calls per (backend, bin of ``column``: ``_bin``) among the window's latest ``RECENT``
    answered calls."""
    if column not in ("latency_ms", "ttft_ms"):
        raise ValueError(column)
    sub, params = _recent(window, f"backend, {column}", f"status = 200 AND {column} IS NOT NULL")
    ms = _bin(dialect, column)
    return (f"SELECT backend, {ms} AS ms, COUNT(*) AS n FROM {sub} "
            f"GROUP BY backend, {ms}"), params


def quality_sql(dialect: str, group: str, window: Window) -> tuple[str, tuple[Any, ...]]:
    """Judge scores and semantic hits' similarity per group, among the window's latest
    ``RECENT`` calls."""
    sub, params = _recent(window, f"{_group_expr(dialect, group)} AS grp, judge_score, cache, "
                                  "cache_similarity")
    sem = "cache = 'hit-semantic'"
    return (f"SELECT grp, COUNT(judge_score) AS judged, SUM(judge_score) AS judge_score_sum, "
            f"SUM(CASE WHEN {sem} THEN 1 ELSE 0 END) AS semantic_hits, "
            f"SUM(CASE WHEN {sem} THEN cache_similarity ELSE 0 END) AS similarity_sum "
            f"FROM {sub} GROUP BY grp"), params


def span_sql(window: Window) -> tuple[str, tuple[Any, ...]]:
    where, params = _where(window)
    return f"SELECT MIN(started_at) AS lo, MAX(started_at) AS hi FROM requests{where}", params


def _derive(cell: Mapping[str, Any]) -> dict[str, float]:
    """``MEASURES`` of one cube cell."""
    v = {k: float(cell[k] or 0) for k in SUMS}
    n, cache = v["calls"], cell["cache"] or ""
    hit = cache.startswith("hit")
    v["cache_hits"] = n if hit else 0.0
    v["cache_lookups"] = n if cache not in ("", "bypass") else 0.0
    for part in ("usd", "energy_j", "co2_g"):  # a hit saves the stored call, less its charge
        spent = v["cost_usd" if part == "usd" else part]
        v[f"cache_{part}"] = v[f"hit_{part}"] - spent if hit else 0.0
    v["cache_tokens"] = v["prompt_tokens"] + v["completion_tokens"] if hit else 0.0
    v["cache_bytes"] = v["hit_bytes"] if hit else 0.0
    return v


def _add(into: dict[str, float], v: Mapping[str, float]) -> None:
    for k in MEASURES:
        into[k] = into.get(k, 0.0) + v[k]


def _typed(v: Mapping[str, float]) -> dict[str, Any]:
    return {k: round(x) if k in _INTS else x for k, x in v.items()}


def bucket_for(lo: float | None, hi: float | None, points: int = 60) -> int:
    """The smallest bucket that puts the window in at most ``points`` buckets."""
    span = (hi or 0.0) - (lo or 0.0)
    return next((b for b in _BUCKETS_S if span / b <= points), _BUCKETS_S[-1])


def percentiles(hist: Iterable[tuple[int, int]]) -> dict[str, float | None]:
    """p50..p99 of a histogram of (value, count), by the nearest-rank rule."""
    pairs = sorted(hist)
    n = sum(c for _, c in pairs)
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        rank, seen, value = max(1, -(-p * n // 100)), 0, None
        for v, c in pairs:
            seen += c
            if seen >= rank:
                value = float(v)
                break
        out[f"p{p}"] = value
    out["count"] = float(n)
    return out


def _saved(row: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The ``saved_*`` breakdowns of one row of ``MEASURES``."""
    out: dict[str, dict[str, float]] = {}
    for key, suffix in (("saved_usd", "usd"), ("saved_energy_j", "energy_j"),
                        ("saved_co2_g", "co2_g"), ("saved_tokens", "tokens")):
        by = {t: float(row.get(f"{t}_{suffix}", 0) or 0) for t in TECHNIQUES}
        by["total"] = sum(by.values())
        out[key] = by
    return out


def _energy(row: Mapping[str, Any]) -> dict[str, Any]:
    measured = float(row["energy_measured_j"])
    estimated = float(row["energy_j"]) - measured
    lo, hi = ESTIMATE_BAND
    return {"measured_j": measured, "estimated_j": estimated,
            "band_j": [measured + lo * estimated, measured + hi * estimated]}


def _quality(row: Mapping[str, Any]) -> dict[str, Any]:
    judged, hits = int(row["judged"]), int(row["semantic_hits"])
    return {"judged": judged,
            "judge_score_mean": float(row["judge_score_sum"]) / judged if judged else None,
            "semantic_hits": hits,
            "cache_similarity_mean": float(row["similarity_sum"]) / hits if hits else None}


def summarise(row: Mapping[str, Any]) -> dict[str, Any]:
    """One group's (or the totals') figures from its row of ``MEASURES``."""
    out: dict[str, Any] = {k: row[k] for k in (
        "requests", "calls", "succeeded", "cost_usd", "cache_hits", "prompt_tokens",
        "completion_tokens", "energy_j", "co2_g", "bytes")}
    lookups = int(row["cache_lookups"])
    out["cache_hit_rate"] = int(row["cache_hits"]) / lookups if lookups else None
    out["energy"] = _energy(row)
    out.update(_saved(row))
    out["saved_bytes"] = {"cache": row["cache_bytes"], "compression": row["compression_bytes"]}
    out["quality"] = _quality(row)
    return out


def _latency(ledger: LedgerStore, window: Window, column: str) -> dict[str, Any]:
    sql, params = histogram_sql(ledger.dialect, column, window)
    by: dict[str, list[tuple[int, int]]] = {}
    for r in ledger.query(sql, params):
        by.setdefault(r["backend"] or "", []).append((int(r["ms"]), int(r["n"])))
    every = [pair for pairs in by.values() for pair in pairs]
    return {"all": percentiles(every),
            "by_backend": {b: percentiles(p) for b, p in sorted(by.items())}}


HIT_BACKEND = "cache"  # the backend the cache's hits are recorded under
# requests_daily's sums -> this report's measures (the cache's, by the hit backend's rows)
_FROM_DAILY = {"routing_usd": "saved_routing_usd", "routing_energy_j": "saved_routing_energy_j",
               "routing_co2_g": "saved_routing_co2_g", "compression_usd": "saved_compress_usd",
               "compression_energy_j": "saved_compress_energy_j",
               "compression_co2_g": "saved_compress_co2_g",
               "compression_tokens": "compress_saved_tokens",
               "compression_bytes": "compress_saved_bytes", "cascade_usd": "saved_cascade_usd",
               "cascade_energy_j": "saved_cascade_energy_j",
               "cascade_co2_g": "saved_cascade_co2_g"}


def _derive_daily(row: Mapping[str, Any]) -> dict[str, float]:
    """``MEASURES`` of one ``requests_daily`` cell."""
    v = {k: float(row[k] or 0) for k in DAILY_SUMS}
    out = {k: v[k] for k in ("requests", "calls", "succeeded", "cache_hits", "cache_lookups",
                             "prompt_tokens", "completion_tokens", "cost_usd", "energy_j",
                             "energy_measured_j", "co2_g", "bytes")}
    out.update({k: v[c] for k, c in _FROM_DAILY.items()})
    hit = row["backend"] == HIT_BACKEND
    for part, saved in (("usd", "saved_cost_usd"), ("energy_j", "saved_energy_j"),
                        ("co2_g", "saved_co2_g")):
        out[f"cache_{part}"] = v[saved] - (v["cost_usd" if part == "usd" else part]
                                           if hit else 0.0)
    out["cache_tokens"] = v["prompt_tokens"] + v["completion_tokens"] if hit else 0.0
    out["cache_bytes"] = v["saved_bytes"]
    return out


class _Cube:
    """Totals, groups and series, added up from cells."""

    def __init__(self, bucket_s: int) -> None:
        self.b = bucket_s
        self.totals: dict[str, float] = dict.fromkeys(MEASURES, 0.0)
        self.groups: dict[Any, dict[str, float]] = {}
        self.series: dict[tuple[int, str], dict[str, float]] = {}

    def add(self, t: float, grp: Any, backend: str, v: Mapping[str, float]) -> None:
        _add(self.totals, v)
        _add(self.groups.setdefault(grp, {}), v)
        _add(self.series.setdefault((int(t // self.b) * self.b, backend), {}), v)


def _cube(ledger: LedgerStore, window: Window, group_by: str) -> _Cube:
    """The cube: whole UTC days from ``requests_daily`` when the buckets are days or
    weeks, the rest (part-days, finer buckets) from ``requests``."""
    sql, params = span_sql(window)
    span = ledger.query(sql, params)[0]
    cube = _Cube(bucket_for(span["lo"], span["hi"]))  # the data's span within the window
    days, raw = window.split()
    if cube.b < DAY_S or days is None or not ledger_has_daily(ledger):
        days, raw = None, [window]
    if days is not None:
        keys = ["day", "backend", *([group_by] if group_by not in ("day", "backend") else [])]
        for r in ledger.query(*daily_sql(keys, window, days)):
            grp = r[group_by]
            if group_by == "day":
                grp = datetime.fromtimestamp(int(grp) * DAY_S, UTC).strftime("%Y-%m-%d")
            cube.add(int(r["day"]) * DAY_S, grp if grp != "" else None, r["backend"] or "",
                     _derive_daily(r))
    for part in raw:
        for cell in ledger.query(*cube_sql(ledger.dialect, group_by, cube.b, part)):
            cube.add(int(cell["bucket"]) * cube.b, cell["grp"], cell["backend"] or "",
                     _derive(cell))
    return cube


def ledger_has_daily(ledger: LedgerStore) -> bool:
    """Whether the ledger keeps ``requests_daily`` (schema version 5 and later)."""
    try:
        ledger.query("SELECT day FROM requests_daily WHERE 1 = 0")
    except Exception:  # noqa: BLE001 - an older schema (or another kind's): read the rows
        return False
    return True


def _qualities(ledger: LedgerStore, window: Window, group_by: str) -> dict[Any, dict[str, Any]]:
    out = {}
    for r in ledger.query(*quality_sql(ledger.dialect, group_by, window)):
        out[r["grp"]] = {k: float(r[k] or 0) for k in QUALITY}
    return out


def _add_quality(into: dict[str, float], q: Mapping[str, float]) -> None:
    for k in QUALITY:
        into[k] = into.get(k, 0.0) + q[k]


def _point(t: int, backend: str, v: Mapping[str, float]) -> dict[str, Any]:
    saved = sum(v[f"{k}_usd"] for k in TECHNIQUES)
    return {"t": t, "backend": backend, **_typed({k: v[k] for k in _SERIES if k in v}),
            "saved_usd": saved}


def build(ledger: LedgerStore, window: Window | None = None, group_by: str = "backend",
          ) -> dict[str, Any]:
    """The report over ``window`` (blocking: call it off the event loop)."""
    if ledger.dialect not in _BUCKET:
        raise ValueError(f"no report SQL for ledger dialect {ledger.dialect!r}")
    _group_expr(ledger.dialect, group_by)
    window = window or Window()
    t0 = time.perf_counter()
    # the three scans at once, each on its own connection (a ledger's ``query`` opens one;
    # SQLite and psycopg let go of the GIL while the database works)
    with ThreadPoolExecutor(3, thread_name_prefix="switchyard-report") as pool:
        hist = {c: pool.submit(_latency, ledger, window, c) for c in ("latency_ms", "ttft_ms")}
        quality = pool.submit(_qualities, ledger, window, group_by)
        cube = _cube(ledger, window, group_by)
        latency = {c: f.result() for c, f in hist.items()}
        by_group = quality.result()
    zero = dict.fromkeys(QUALITY, 0.0)
    for g, q in by_group.items():
        cube.groups.setdefault(g, dict.fromkeys(MEASURES, 0.0))
        _add_quality(cube.totals, q)
    b, totals, series = cube.b, cube.totals, cube.series
    groups = {g: {**v, **by_group.get(g, zero)} for g, v in cube.groups.items()}
    totals = {**zero, **totals}
    report: dict[str, Any] = {
        "object": "report",
        "window": {"since": window.since, "until": window.until, "team": window.team,
                   "route": window.route},
        "baseline": "a route's baseline: backend, else its first backend; a cascade's: "
                    "its strongest (last) stage",
        "energy_band": list(ESTIMATE_BAND),
        "totals": summarise(_typed(totals)),
        "group_by": group_by,
        "groups": [{group_by: g, **summarise(_typed(v))}
                   for g, v in sorted(groups.items(), key=lambda kv: str(kv[0]))],
        "series": {"bucket_s": b, "points": [_point(t, be, v)
                                             for (t, be), v in sorted(series.items())]},
        "latency": latency,
    }
    for key in ("saved_usd", "saved_energy_j", "saved_co2_g", "saved_tokens"):
        report[key] = report["totals"][key]
    report["elapsed_ms"] = (time.perf_counter() - t0) * 1000.0
    return report
