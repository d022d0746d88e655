"""``switchyard eval cache``: the command a user runs on labelled pairs. Decisions come back
in input order, the report sweeps the threshold, and the curve is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

PAIRS = [
    {"a": "How do I reset my password?", "b": "I forgot my password, how can I reset it?",
     "duplicate": True},
    {"a": "Flights from Boston to Denver", "b": "Flights from Denver to Boston",
     "duplicate": False},
    {"a": "Who wrote Pride and Prejudice?", "b": "Who is the author of Pride and Prejudice?",
     "duplicate": True},
    {"a": "Is 10 mg of melatonin safe?", "b": "Is 100 mg of melatonin safe?",
     "duplicate": False},
]


def test_eval_cache_decides_each_pair_and_reports_a_sweep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out, png = tmp_path / "decisions.jsonl", tmp_path / "curve.png"
    rc = main(["eval", "cache", "--data", str(data), "--out", str(out), "--plot", str(png),
               "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["hit"] for d in decisions] == [True, False, True, False]
    assert all(0.0 <= d["score"] <= 1.0 for d in decisions)
    assert decisions[0]["score"] > report["default_threshold"] > decisions[1]["score"]
    assert report["at_default"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "hit_rate": 0.5}
    assert {"threshold", "precision", "recall", "f1", "hit_rate"} == set(report["thresholds"][0])
    assert report["lookup_ms_p50"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_malformed_line_is_named(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(PAIRS[0]) + "\n" + '{"a": "only a"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:2: not a cache pair"):
        main(["eval", "cache", "--data", str(data)])
