"""Training data from the gateway's own ledger: the cascade rows (docs/cascades.md).

A route with ``cascade: {learn: true}`` keeps, in each call's ledger row, the prompt's
first 2,000 characters and the judge's verdict (``decision["cascade"]``: ``step``,
``backend``, ``judge``, ``score``, ``accepted``, ``prompt``). Per request (``request_id``):

- a judged stage's quality is its judge's ``score`` (``accepted`` as 1/0 when the judge gave
  no score): what the judge thought of that backend's answer;
- a stage the cascade did not need to reach (an earlier one was accepted), or the last stage
  (never judged), is taken as good enough (quality 1): the cascade treats the strongest stage
  as the reference; a stage that failed leaves the request out;
- each backend's cost is its own row's ``cost_usd``; a backend not called for a request is
  given its mean cost over the ledger.

The result is a ``Table`` in the canonical format, one model per backend, on which
``switchyard train router --from-ledger`` fits the pre-router as on any data file. The
ledger is read read-only (``mode=ro``) while the gateway may be writing it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from plugins.learn.data import DataError, Table


def _rows(path: Path) -> list[tuple[str, float | None, int | None, dict[str, Any]]]:
    if not path.exists():
        raise DataError(f"{path}: no such ledger")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            cur = conn.execute("SELECT request_id, cost_usd, status, decision FROM requests "
                               "WHERE decision LIKE '%\"cascade\"%' ORDER BY started_at")
            raw = cur.fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise DataError(f"{path}: not a Switchyard ledger ({e})") from None
    out = []
    for rid, cost, status, decision in raw:
        try:
            c = json.loads(decision)["cascade"]
        except (TypeError, ValueError, KeyError):
            continue
        if isinstance(c, dict):
            out.append((str(rid), cost, status, c))
    return out


def _quality(step: dict[str, Any]) -> float | None:
    score, accepted = step.get("score"), step.get("accepted")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return float(min(max(score, 0.0), 1.0))
    if isinstance(accepted, bool):
        return 1.0 if accepted else 0.0
    return None


def from_ledger(path: str | Path) -> Table:
    """The cascade requests of a ledger that kept their prompts, as a routing table."""
    path = Path(path)
    requests: dict[str, dict[str, Any]] = {}
    for rid, cost, status, c in _rows(path):
        req = requests.setdefault(rid, {"steps": {}, "prompt": None, "failed": False})
        if isinstance(c.get("prompt"), str) and c["prompt"]:
            req["prompt"] = c["prompt"]
        backend = c.get("backend")
        if not isinstance(backend, str):
            continue
        if status is not None and int(status) >= 400:
            req["failed"] = True
        req["steps"][backend] = {"step": c.get("step"), "q": _quality(c), "cost": cost,
                                 "judged": c.get("judge") is not None}
    backends = sorted({b for r in requests.values() for b in r["steps"]})
    usable = [r for r in requests.values() if r["prompt"] and not r["failed"] and r["steps"]]
    if not usable or len(backends) < 2:
        raise DataError(f"{path}: no cascade requests with their prompts (set the route's "
                        "`cascade: {learn: true}` and let it serve traffic)")
    mean_cost = {b: float(np.mean([r["steps"][b]["cost"] or 0.0 for r in usable if b in r["steps"]]
                                  or [0.0])) for b in backends}
    quality: list[list[float]] = []
    costs: list[list[float]] = []
    for r in usable:
        quality.append([r["steps"][b]["q"] if b in r["steps"] and r["steps"][b]["judged"]
                        and r["steps"][b]["q"] is not None else 1.0 for b in backends])
        costs.append([float(r["steps"][b]["cost"] or 0.0) if b in r["steps"] else mean_cost[b]
                      for b in backends])
    return Table([r["prompt"] for r in usable], backends, np.array(quality), np.array(costs))


def to_jsonl(table: Table, path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": p, "outcomes": {
            m: {"quality": float(table.quality[i, j]), "cost_usd": float(table.cost[i, j])}
            for j, m in enumerate(table.models)}}) + "\n" for i, p in enumerate(table.prompts))
