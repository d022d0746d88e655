"""``train router --from-ledger``'s reading of the cascade rows (docs/cascades.md): a judged
stage's quality is its judge's score, stages after an accepted one and the unjudged last one
count as good enough, a failed request and rows without a prompt are left out."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from plugins.learn.data import DataError
from plugins.learn.ledger import from_ledger


def _ledger(path: Path, rows: list[tuple[str, float, int, dict | None]]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE requests (request_id TEXT, cost_usd REAL, status INTEGER, "
                 "decision TEXT, started_at REAL)")
    for i, (rid, cost, status, cascade) in enumerate(rows):
        decision = json.dumps({"policy": "first_healthy", "cascade": cascade}) if cascade else None
        conn.execute("INSERT INTO requests VALUES (?, ?, ?, ?, ?)", (rid, cost, status, decision, i))
    conn.commit()
    conn.close()
    return path


def _step(step: int, backend: str, prompt: str | None, score: float | None = None,
          accepted: bool | None = None) -> dict:
    return {"step": step, "steps": 3, "route": "ask", "backend": backend,
            "judge": "logprob" if accepted is not None else None, "score": score,
            "threshold": 0.5 if accepted is not None else None, "accepted": accepted,
            **({"prompt": prompt} if prompt else {})}


def test_cascade_rows_become_a_routing_table(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "ledger.sqlite3", [
        ("r1", 0.001, 200, _step(1, "small", "easy one", 0.9, True)),
        ("r2", 0.001, 200, _step(1, "small", "hard one", 0.1, False)),
        ("r2", 0.010, 200, _step(2, "mid", "hard one", 0.3, False)),
        ("r2", 0.100, 200, _step(3, "big", "hard one")),
        ("r3", 0.001, 200, _step(1, "small", "medium", 0.2, False)),
        ("r3", 0.012, 200, _step(2, "mid", "medium", 0.8, True)),
        ("r4", 0.001, 502, _step(1, "small", "failed")),  # a failed call: left out
        ("r5", 0.001, 200, _step(1, "small", None, 0.9, True)),  # learn: false, no prompt
        ("r6", 0.002, 200, None),  # not a cascade
    ])
    t = from_ledger(path)
    assert t.models == ["big", "mid", "small"] and t.prompts == ["easy one", "hard one", "medium"]
    q = {p: dict(zip(t.models, row, strict=True)) for p, row in zip(t.prompts, t.quality.tolist(), strict=True)}
    assert q["easy one"] == {"small": 0.9, "mid": 1.0, "big": 1.0}  # later stages: not needed
    assert q["hard one"] == {"small": 0.1, "mid": 0.3, "big": 1.0}  # the last stage: unjudged
    assert q["medium"] == {"small": 0.2, "mid": 0.8, "big": 1.0}
    costs = dict(zip(t.models, t.cost[t.prompts.index("medium")].tolist(), strict=True))
    assert costs == {"small": 0.001, "mid": 0.012, "big": 0.1}  # big never ran: its mean cost


def test_a_ledger_without_learned_cascades_is_a_clear_error(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "l.sqlite3", [("r1", 0.001, 200, _step(1, "small", None, 0.9, True))])
    with pytest.raises(DataError, match="learn: true"):
        from_ledger(path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("not sqlite")
    with pytest.raises(DataError, match="not a Switchyard ledger"):
        from_ledger(junk)
    with pytest.raises(DataError, match="no such ledger"):
        from_ledger(tmp_path / "missing.sqlite3")
