"""``switchyard report``: the savings report over a ledger (docs/report.md), read directly
from the database: the ledger of ``--config FILE`` (any kind: sqlite, postgres, a
plugin's), or the SQLite file ``--ledger PATH``. A table in the terminal, ``--json`` (the
JSON of ``GET /admin/report``), or ``--html OUT`` (one self-contained page)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, SwitchyardError
from gateway.hookspecs import LedgerStore
from gateway.report import GROUP_BY, TECHNIQUES, build, check_group, window_of


def add_report_command(sub: Any) -> None:
    p = sub.add_parser("report", help="what the traffic cost and what each technique saved",
                       description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", "-c", help="the gateway's YAML config: its ledger")
    src.add_argument("--ledger", help="a SQLite ledger file")
    p.add_argument("--since", help="Unix time or ISO date (UTC): from (inclusive)")
    p.add_argument("--until", help="Unix time or ISO date (UTC): to (exclusive)")
    p.add_argument("--team")
    p.add_argument("--route")
    p.add_argument("--group-by", choices=GROUP_BY, default="backend")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--html", metavar="OUT", help="write one self-contained HTML file")
    p.set_defaults(fn=cmd_report)


def _open(args: argparse.Namespace) -> LedgerStore:
    if args.ledger:
        from gateway.ledger import Ledger

        path = Path(args.ledger).expanduser()
        if not path.is_file():
            raise ConfigError([("--ledger", f"no ledger file at {path}")])
        return Ledger(path)
    from gateway.assembly import build_ledger, build_registry_for
    from gateway.config import load_settings

    settings = load_settings(args.config)
    ledger = build_ledger(settings, build_registry_for(settings))
    if ledger is None:
        raise ConfigError([("ledger.kind", "the ledger is off (kind: none): nothing to report")])
    asyncio.run(ledger.start())
    return ledger


def cmd_report(args: argparse.Namespace) -> int:
    try:
        window = window_of(vars(args))
        group = check_group(args.group_by)
        ledger = _open(args)
    except (ConfigError, SwitchyardError) as e:
        print(f"switchyard: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    try:
        report = build(ledger, window, group)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(report, indent=1))
    elif args.html:
        from gateway.report_html import page

        Path(args.html).write_text(page(report), encoding="utf-8")
        print(f"switchyard: wrote {args.html} ({report['totals']['requests']:,} requests)",
              file=sys.stderr)
    else:
        print(table(report))
    return 0


def _usd(x: float) -> str:
    return f"${x:,.4f}" if abs(x) < 100 else f"${x:,.2f}"


def table(report: dict[str, Any]) -> str:
    """The report as text: headline figures, savings by technique, then the groups."""
    t = report["totals"]
    en = t["energy"]
    rate = t["cache_hit_rate"]
    lines = [
        f"requests {t['requests']:,} ({t['calls']:,} backend calls)   cost {_usd(t['cost_usd'])}"
        f"   saved {_usd(t['saved_usd']['total'])}   cache hit rate "
        + ("-" if rate is None else f"{rate * 100:.1f} %"),
        (f"tokens {t['prompt_tokens']:,} in, {t['completion_tokens']:,} out   "
        f"bytes {t['bytes']:,}   CO2 {t['co2_g']:,.3f} g"),
        (f"energy: measured {en['measured_j']:,.1f} J, estimated {en['estimated_j']:,.1f} J "
        f"(band {en['band_j'][0]:,.1f} to {en['band_j'][1]:,.1f} J)"),
        "",
        f"{'saved by':<12}{'USD':>14}{'energy J':>14}{'CO2 g':>12}{'tokens':>14}",
    ]
    for k in (*TECHNIQUES, "total"):
        lines.append(f"{k:<12}{_usd(t['saved_usd'][k]):>14}{t['saved_energy_j'][k]:>14,.1f}"
                     f"{t['saved_co2_g'][k]:>12,.3f}{t['saved_tokens'][k]:>14,.0f}")
    g = report["group_by"]
    lines += ["", (f"{g:<24}{'requests':>10}{'cost':>14}{'saved':>14}{'hits':>8}"
                  f"{'energy J':>14}{'quality':>10}")]
    for r in report["groups"]:
        q = r["quality"]
        score = q["judge_score_mean"] if q["judge_score_mean"] is not None else q[
            "cache_similarity_mean"]
        lines.append(f"{str(r[g] if r[g] is not None else '(none)')[:23]:<24}"
                     f"{r['requests']:>10,}{_usd(r['cost_usd']):>14}"
                     f"{_usd(r['saved_usd']['total']):>14}{r['cache_hits']:>8,}"
                     f"{r['energy_j']:>14,.1f}{'-' if score is None else f'{score:.3f}':>10}")
    return "\n".join(lines)
