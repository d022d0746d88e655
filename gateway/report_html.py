"""The savings report as one self-contained HTML page (``switchyard report --html`` and the
gateway's ``/dashboard``): headline numbers as text, then charts drawn here as inline SVG
(no script, font or stylesheet from anywhere else, so the file works offline):

- cost over time per backend; savings by technique (dollars, joules, grams of CO2, tokens);
- energy over time (measured, and estimated with its band) and CO2 over time;
- latency and time-to-first-token percentiles per backend; cache hit rate over time;
- the groups as a table with a quality column (judge scores, cache similarity).

Every text that comes from the ledger (team, route and backend names) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
           "#65a30d", "#475569", "#ea580c")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 220, 64, 12, 14, 34

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#0f172a;
background:#f8fafc}
header{background:#0f172a;color:#f8fafc;padding:12px 20px}header h1{margin:0;font-size:18px}
header p{margin:2px 0 0;color:#cbd5e1;font-size:12px}main{padding:16px 20px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:18px}.card span{color:#475569;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:12px}
figure{background:#fff;border:1px solid #e2e8f0;border-radius:8px;margin:0;padding:8px}
figcaption{font-weight:600;margin:0 0 4px}svg{display:block;max-width:100%;height:auto}
.legend{font-size:12px;color:#334155}.legend i{display:inline-block;width:10px;height:10px;
margin:0 4px 0 10px;border-radius:2px}table{border-collapse:collapse;background:#fff;
margin-top:14px;font-size:13px}th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.est{color:#b45309}.meas{color:#15803d}
.note{color:#475569;font-size:12px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:,.6f}"


def joules(x: float) -> str:
    return f"{x / 3.6e6:,.3f} kWh" if abs(x) >= 3.6e5 else f"{x:,.1f} J"


def _num(x: float) -> str:
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.1f}M"
    if ax >= 1e3:
        return f"{x / 1e3:.1f}k"
    if ax >= 1 or ax == 0:
        return f"{x:.0f}" if ax >= 10 or ax == 0 else f"{x:.1f}"
    return f"{x:.2g}"


def _when(t: float, bucket_s: int) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%m-%d" if bucket_s >= 86400 else "%m-%d %H:%M")


def _frame(kind: str, body: str, ylo: float, yhi: float, unit: str, xlabels: Sequence[str],
           points: int) -> str:
    """An SVG with axes, four y ticks and a few x labels around ``body``."""
    out = [(f'<svg viewBox="0 0 {W} {H}" role="img" data-chart="{_e(kind)}" '
           f'data-points="{points}" xmlns="http://www.w3.org/2000/svg">')]
    for i in range(5):
        v = ylo + (yhi - ylo) * i / 4
        y = _y(v, ylo, yhi)
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#e2e8f0"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#475569">{_e(_num(v))}</text>')
    out.append(f'<text x="4" y="10" font-size="10" fill="#475569">{_e(unit)}</text>')
    n = len(xlabels)
    for i, label in enumerate(xlabels):
        if n > 6 and i % max(1, n // 6) and i != n - 1:
            continue
        x, anchor = _x(i, n), "middle"
        if n > 1 and i == n - 1:  # the last label ends at the plot's edge, never past it
            x, anchor = min(x + 20.0, float(W - PAD_R)), "end"
        out.append(f'<text x="{x:.1f}" y="{H - PAD_B + 14}" font-size="10" '
                   f'text-anchor="{anchor}" fill="#475569">{_e(label)}</text>')
    out.append(body)
    out.append("</svg>")
    return "".join(out)


def _x(i: int, n: int) -> float:
    return PAD_L + (W - PAD_L - PAD_R) * ((i + 0.5) / n if n else 0.5)


def _y(v: float, lo: float, hi: float) -> float:
    span = (hi - lo) or 1.0
    return PAD_T + (H - PAD_T - PAD_B) * (1 - (v - lo) / span)


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min([0.0, *values]), max([0.0, *values])
    return lo, hi if hi > lo else lo + 1.0


def line_chart(kind: str, xs: Sequence[str], series: Mapping[str, Sequence[float]], unit: str,
               band: tuple[Sequence[float], Sequence[float]] | None = None) -> str:
    """Lines over the same x labels (one per series); ``band``: a shaded low-high area."""
    values = [v for s in series.values() for v in s] + (list(band[1]) if band else [])
    lo, hi = _bounds(values)
    n, parts = len(xs), []
    if band is not None and n:
        upper = [f"{_x(i, n):.1f},{_y(v, lo, hi):.1f}" for i, v in enumerate(band[1])]
        lower = [f"{_x(i, n):.1f},{_y(v, lo, hi):.1f}" for i, v in reversed(list(
            enumerate(band[0])))]
        parts.append(f'<polygon class="band" points="{" ".join(upper + lower)}" '
                     'fill="#fde68a" fill-opacity="0.6" data-series="estimate band"/>')
    for k, (name, ys) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{_x(i, n):.1f},{_y(v, lo, hi):.1f}" for i, v in enumerate(ys))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                     f'points="{pts}" data-series="{_e(name)}"><title>{_e(name)}</title>'
                     '</polyline>')
        parts.extend(f'<circle cx="{_x(i, n):.1f}" cy="{_y(v, lo, hi):.1f}" r="2.5" '
                     f'fill="{color}"><title>{_e(name)} {_e(xs[i])}: {_e(_num(v))} {_e(unit)}'
                     '</title></circle>' for i, v in enumerate(ys))
    return _frame(kind, "".join(parts), lo, hi, unit, xs, n)


def bar_chart(kind: str, bars: Mapping[str, Mapping[str, float]], unit: str) -> str:
    """Grouped vertical bars: per x label, one bar per key (``bars[label][key]``)."""
    labels = list(bars)
    keys = list(dict.fromkeys(k for b in bars.values() for k in b))
    lo, hi = _bounds([v for b in bars.values() for v in b.values()])
    n, parts = len(labels), []
    slot = (W - PAD_L - PAD_R) / max(1, n)
    bw = slot * 0.8 / max(1, len(keys))
    zero = _y(0.0, lo, hi)
    for i, label in enumerate(labels):
        for j, key in enumerate(keys):
            v = bars[label].get(key)
            if v is None:
                continue
            x = PAD_L + slot * i + slot * 0.1 + bw * j
            y = _y(v, lo, hi)
            parts.append(f'<rect x="{x:.1f}" y="{min(y, zero):.1f}" width="{bw:.1f}" '
                         f'height="{max(0.5, abs(zero - y)):.1f}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}" data-series="{_e(key)}" '
                         f'data-value="{v:.6g}"><title>{_e(label)} {_e(key)}: '
                         f'{_e(_num(v))} {_e(unit)}</title></rect>')
    return _frame(kind, "".join(parts), lo, hi, unit, labels, n)


def _legend(names: Sequence[str]) -> str:
    return '<div class="legend">' + "".join(
        f'<i style="background:{PALETTE[k % len(PALETTE)]}"></i>{_e(n)}'
        for k, n in enumerate(names)) + "</div>"


def _figure(caption: str, svg: str, legend: Sequence[str] = (), note: str = "") -> str:
    extra = f'<p class="note">{note}</p>' if note else ""
    return (f"<figure><figcaption>{_e(caption)}</figcaption>{svg}"
            f"{_legend(legend) if legend else ''}{extra}</figure>")


def _by_time(report: Mapping[str, Any]) -> tuple[list[int], dict[str, dict[int, dict[str, Any]]]]:
    pts = report["series"]["points"]
    times = sorted({p["t"] for p in pts})
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for p in pts:
        by.setdefault(p["backend"] or "(none)", {})[p["t"]] = p
    return times, by


def _sum_at(by: Mapping[str, Mapping[int, Mapping[str, Any]]], t: int, key: str) -> float:
    return float(sum(s[t][key] for s in by.values() if t in s))


def charts(report: Mapping[str, Any]) -> str:
    """Every chart, in a grid."""
    b = int(report["series"]["bucket_s"])
    times, by = _by_time(report)
    xs = [_when(t, b) for t in times]
    cost = {name: [float(s[t]["cost_usd"]) if t in s else 0.0 for t in times]
            for name, s in sorted(by.items())}
    figs = [_figure(f"Cost over time per backend (USD per {_span(b)})",
                    line_chart("cost", xs, cost, "USD"), list(cost))]
    tot = report["totals"]
    saved = {tech: {"USD": float(tot["saved_usd"][tech])}
             for tech in ("routing", "cache", "compression", "cascade")}
    figs.append(_figure("Savings by technique (USD)", bar_chart("savings", saved, "USD"),
                        note=_saved_note(tot)))
    lo_f, hi_f = report["energy_band"]
    meas = [_sum_at(by, t, "energy_measured_j") for t in times]
    est = [_sum_at(by, t, "energy_j") - m for t, m in zip(times, meas, strict=True)]
    total = [m + e for m, e in zip(meas, est, strict=True)]
    band = ([m + lo_f * e for m, e in zip(meas, est, strict=True)],
            [m + hi_f * e for m, e in zip(meas, est, strict=True)])
    figs.append(_figure("Energy over time (J)", line_chart(
        "energy", xs, {"measured": meas, "measured + estimated": total}, "J", band=band),
        ["measured", "measured + estimated"],
        note=f"shaded: the estimate's band ({lo_f:g}x to {hi_f:g}x of what the energy "
             "profiles say; a profile is a guess). Measured energy (nvml, rapl) has no band."))
    co2 = [_sum_at(by, t, "co2_g") for t in times]
    figs.append(_figure("CO2 over time (g)", line_chart("co2", xs, {"CO2": co2}, "g")))
    for col, kind, caption in (("latency_ms", "latency", "Latency per backend (ms)"),
                               ("ttft_ms", "ttft", "Time to first token per backend (ms)")):
        figs.append(_figure(caption, bar_chart(kind, _percentile_bars(report, col), "ms"),
                            ["p50", "p95", "p99"]))
    rate = [(_sum_at(by, t, "cache_hits") / lk * 100.0) if (lk := _sum_at(
        by, t, "cache_lookups")) else 0.0 for t in times]
    figs.append(_figure("Cache hit rate over time (%)", line_chart(
        "cache", xs, {"hit rate": rate}, "%"),
        note="hits over lookups (requests on routes with the cache on)"))
    return '<div class="grid">' + "".join(figs) + "</div>"


def _span(b: int) -> str:
    return {60: "minute", 300: "5 min", 900: "15 min", 3600: "hour", 21600: "6 h",
            86400: "day", 604800: "week"}.get(b, f"{b} s")


def _percentile_bars(report: Mapping[str, Any], col: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for backend, p in report["latency"][col]["by_backend"].items():
        vals = {k: float(p[k]) for k in ("p50", "p95", "p99") if p.get(k) is not None}
        if vals:
            out[backend] = vals
    return out


def _saved_note(tot: Mapping[str, Any]) -> str:
    e, c, t = tot["saved_energy_j"], tot["saved_co2_g"], tot["saved_tokens"]
    return "; ".join(
        f"{_e(k)}: {money(tot['saved_usd'][k])}, {_e(joules(e[k]))}, {c[k]:,.2f} g CO2, "
        f"{t[k]:,.0f} tokens" for k in ("routing", "cache", "compression", "cascade"))


def headline(report: Mapping[str, Any]) -> str:
    t = report["totals"]
    saved = t["saved_usd"]["total"]
    base = t["cost_usd"] + saved
    pct = f" ({saved / base * 100:.1f} % of {money(base)})" if base > 0 else ""
    en = t["energy"]
    rate = t["cache_hit_rate"]
    cards = [
        ("requests", f"{t['requests']:,}"), ("cost", money(t["cost_usd"])),
        ("saved", money(saved) + pct),
        ("cache hit rate", "-" if rate is None else f"{rate * 100:.1f} %"),
        ("energy, measured", f'<span class="meas">{_e(joules(en["measured_j"]))}</span>'),
        ("energy, estimated", '<span class="est">' + _e(joules(en["estimated_j"])) + " ("
         + _e(joules(en["band_j"][0] - en["measured_j"])) + " to "
         + _e(joules(en["band_j"][1] - en["measured_j"])) + ")</span>"),
        ("CO2", f"{t['co2_g']:,.2f} g"),
        ("tokens", f"{t['prompt_tokens']:,} in, {t['completion_tokens']:,} out"),
    ]
    return '<div class="cards" id="headline">' + "".join(
        f"<div class=\"card\"><b>{v if k.startswith('energy') else _e(v)}</b>"
        f"<span>{_e(k)}</span></div>" for k, v in cards) + "</div>"


def _quality(q: Mapping[str, Any]) -> str:
    parts = []
    if q["judge_score_mean"] is not None:
        parts.append(f"judge {q['judge_score_mean']:.3f} (n={q['judged']})")
    if q["cache_similarity_mean"] is not None:
        parts.append(f"similarity {q['cache_similarity_mean']:.3f} (n={q['semantic_hits']})")
    return "; ".join(parts) or "-"


def groups_table(report: Mapping[str, Any]) -> str:
    g = report["group_by"]
    head = ["requests", "cost", "saved", "cache hits", "energy", "CO2 g", "quality"]
    rows = []
    for r in report["groups"]:
        cells = [f"{r['requests']:,}", money(r["cost_usd"]), money(r["saved_usd"]["total"]),
                 f"{r['cache_hits']:,}", joules(r["energy_j"]), f"{r['co2_g']:,.3f}",
                 _quality(r["quality"])]
        rows.append(f"<tr><td>{_e(r[g] if r[g] is not None else '(none)')}</td>"
                    + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return (f'<table id="groups"><tr><th>{_e(g)}</th>'
            + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def body(report: Mapping[str, Any]) -> str:
    """What the page shows under its header (the dashboard swaps it on refresh)."""
    return headline(report) + charts(report) + groups_table(report) + (
        f'<p class="note">Baseline: {_e(report["baseline"])}. Savings are estimates: the '
        "prices and energy profiles of calls that were not made.</p>")


def page(report: Mapping[str, Any], *, title: str = "Switchyard savings report",
         script: str = "") -> str:
    """The whole page; ``script``: the dashboard's refresh (none in a saved report)."""
    w = report["window"]
    scope = ", ".join(f"{k} {v}" for k, v in (("team", w["team"]), ("route", w["route"])) if v)
    since = _fmt_t(w["since"]) if w["since"] else "the first request"
    until = _fmt_t(w["until"]) if w["until"] else "now"
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\">"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(since)} to {_e(until)}"
        f"{' - ' + _e(scope) if scope else ''}; generated {_e(_fmt_t(None))}</p></header>"
        f"<main id=\"report\">{body(report)}</main>{script}</body></html>")


def _fmt_t(t: float | None) -> str:
    d = datetime.now(UTC) if t is None else datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%d %H:%M UTC")
