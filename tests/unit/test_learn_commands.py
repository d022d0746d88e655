"""``switchyard eval router|cascade`` and ``train router|judge`` as a user runs them: JSON with
the figures the issue names, a PNG, model files the policy and the ``scorer`` judge load; a
bad data file is a clear error (exit 2), never a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from plugins.judges import ScorerJudge
from plugins.learn.router import RouterModel

CHEAP, STRONG = "cheap-model", "strong-model"


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Word problems the cheap model gets wrong (its answer has no final line), small talk it
    gets right; the strong model gets both right."""
    rng = random.Random(seed)
    names = ["Ana", "Tom", "Lisa", "Omar", "Mei", "Raj", "Zoe", "Ivan"]
    out = []
    for i in range(n):
        a, b = rng.randint(2, 90), rng.randint(2, 30)
        who = rng.choice(names)
        if i % 2:
            prompt = f"{who} has {a} apples and buys {b} bags of {b} more. How many apples now?"
            answer = f"{who} buys some apples. The total depends on the bags, roughly {a} or so."
            q = 0.0
        else:
            prompt = f"Say hello to {who} and wish them a nice day number {i}."
            answer = f"Hello {who}! Have a nice day.\n#### {a}"
            q = 1.0
        out.append({"prompt": prompt, "outcomes": {
            CHEAP: {"quality": q, "cost_usd": 0.0001, "response": answer},
            STRONG: {"quality": 1.0, "cost_usd": 0.01, "response": f"#### {a + b * b}"}}})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("learn-cmd")
    paths = {"train": d / "train.jsonl", "data": d / "data.jsonl", "dir": d}
    for name, seed, n in (("train", 1, 80), ("data", 2, 40)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in _rows(n, seed)))
    return paths


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_router_reports_routellm_and_routerbench_figures(files: dict[str, Path], capsys: Any) -> None:
    png = files["dir"] / "router.png"
    code, out, _ = _run(capsys, "eval", "router", "--train", str(files["train"]), "--data",
                        str(files["data"]), "--json", "--plot", str(png), "--cache", str(files["dir"]))
    assert code == 0
    r = json.loads(out)
    assert {"apgr", "cpt50", "cpt80", "aiq", "points"} <= set(r)
    assert set(r["aiq"]) >= {"router", "zero_router"}
    # the prompts say which model is needed: the router is near the perfect one (APGR 0.75,
    # CPT50 25 % when half the prompts need the strong model), far from random (0.5, 50 %)
    assert r["apgr"] > 0.7 and r["cpt50"] < 0.3 and r["aiq"]["router"] > r["aiq"]["zero_router"]
    assert r["references"]["perfect"]["apgr"] == pytest.approx(0.75, abs=0.01)
    assert len(r["points"]) == 11 and png.read_bytes()[:4] == b"\x89PNG"


def test_eval_cascade_reads_the_cheap_answer(files: dict[str, Path], capsys: Any) -> None:
    code, out, _ = _run(capsys, "eval", "cascade", "--train", str(files["train"]), "--data",
                        str(files["data"]), "--json", "--embedding", "no")
    assert code == 0
    r = json.loads(out)
    assert r["apgr"] > 0.7 and r["cpt50"] < 0.3 and r["weak"] == CHEAP
    assert r["references"]["random"]["apgr"] == pytest.approx(0.5, abs=0.15)


def test_train_judge_writes_the_file_the_scorer_judge_loads(files: dict[str, Path], capsys: Any) -> None:
    path = files["dir"] / "judge.npz"
    code, _, err = _run(capsys, "train", "judge", "--data", str(files["train"]), "--out",
                        str(path), "--embedding", "no", "--max-escalation", "0.6")
    assert code == 0 and "threshold" in err
    judge = ScorerJudge({"path": str(path)})
    good = judge.model.score("Say hello to Ana.", "Hello Ana! Have a nice day.\n#### 7", None)
    bad = judge.model.score("Ana has 3 apples...", "The total depends on the bags, roughly.", None)
    assert good >= judge.threshold > bad


def test_train_router_writes_the_file_the_policy_loads(files: dict[str, Path], capsys: Any) -> None:
    path = files["dir"] / "router.npz"
    code, _, _ = _run(capsys, "train", "router", "--data", str(files["train"]), "--out",
                      str(path), "--model", "knn", "--cache", str(files["dir"]))
    assert code == 0
    model = RouterModel.load(path)
    assert model.models == [CHEAP, STRONG] and model.predictor.kind == "knn"
    assert model.encoder.kind == "distilled" and model.predictor.state()[1]["k"] == 16  # a fifth of 80


def test_train_router_knn_words_writes_the_ridge_beside_the_knn(files: dict[str, Path],
                                                               capsys: Any) -> None:
    path = files["dir"] / "router-words.npz"
    code, _, _ = _run(capsys, "train", "router", "--data", str(files["train"]), "--out",
                      str(path), "--model", "knn+words", "--cache", str(files["dir"]))
    assert code == 0
    model = RouterModel.load(path)
    assert model.predictor.kind == "knn" and model.words is not None
    assert model.meta["model"]["params"]["words"]["share"] == 0.2
    q = model.predict(model.encoder.encode(["Omar has 7 apples and buys 3 bags of 3 more."]),
                      ["Omar has 7 apples and buys 3 bags of 3 more."])
    assert q[0, 0] < 0.5 < q[0, 1]  # the cheap model predicted to fail a word problem


def test_with_three_models_the_router_beats_the_zero_router(files: dict[str, Path],
                                                            capsys: Any) -> None:
    """RouterBench's setting: each kind of prompt has its own cheapest good-enough model."""
    rng = random.Random(5)
    kinds = [("Translate to French: good {} morning", (1.0, 1.0, 1.0)),
             ("Prove that {} is irrational, step by step.", (0.0, 0.0, 1.0)),
             ("Write a haiku about the number {}.", (0.0, 1.0, 1.0))]
    costs = {"tiny": 0.0001, "mid": 0.001, "big": 0.01}
    for name, n in (("train3", 90), ("data3", 45)):
        rows = []
        for i in range(n):
            text, q = kinds[i % 3]
            rows.append({"prompt": text.format(rng.randint(2, 999)), "outcomes": {
                m: {"quality": q[j], "cost_usd": costs[m]} for j, m in enumerate(costs)}})
        (files["dir"] / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _run(capsys, "eval", "router", "--train", str(files["dir"] / "train3.jsonl"),
                        "--data", str(files["dir"] / "data3.jsonl"), "--json", "--model", "logreg")
    assert code == 0
    r = json.loads(out)
    assert r["apgr"] is None  # APGR and CPT are defined for one weak and one strong model
    # the zero router mixes tiny/mid/big; the router picks per prompt and gains area
    assert r["aiq"]["router"] > r["aiq"]["zero_router"] + 0.1


def test_a_bad_data_file_is_a_clear_error(files: dict[str, Path], capsys: Any) -> None:
    bad = files["dir"] / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "outcomes": {CHEAP: {"quality": 2, "cost_usd": 0}}}) + "\n")
    code, _, err = _run(capsys, "eval", "router", "--train", str(bad), "--data", str(files["data"]))
    assert code == 2 and f"{bad}:1" in err and "quality must be in [0, 1]" in err
    code, _, err = _run(capsys, "eval", "cascade", "--train", str(files["train"]), "--data",
                        str(files["dir"] / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err
