"""The ``scorer`` judge through the HTTP API: a model file trained by ``plugins.learn``'s
``AnswerScorer`` (on answers whose quality follows their wording), loaded once at start-up,
judges the first stage (the ``echo`` backend, which answers with the prompt) in front of the
recording upstream; real uvicorn, the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cascade_helpers import ask, cascade_gateway
from http_helpers import ledger_row

GOOD = "The answer is 4."
BAD = "I am not sure, maybe it is 7 or 9?"


def _train(path: Path) -> None:
    from plugins.learn.judge import AnswerScorer

    prompts = [f"question {i}" for i in range(80)]
    answers = [GOOD if i % 2 == 0 else BAD for i in range(80)]
    weak = np.array([1.0 if i % 2 == 0 else 0.0 for i in range(80)])
    AnswerScorer.fit(prompts, answers, weak, np.ones(80)).save(path)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("scorer")
    _train(tmp / "judge.npz")
    cascade = {"stages": ["echo", "big"], "judge": "scorer",
               "judge_options": {"path": str(tmp / "judge.npz"), "logprobs": False}}
    echo = {"name": "echo", "plugin": "echo", "pricing": {"output_per_mtok": 1}}
    with cascade_gateway(tmp, echo, {"name": "ask", "cascade": cascade}, strong="big") as srv:
        yield srv


def test_the_scorer_accepts_a_good_answer_and_escalates_a_bad_one(gw: Any) -> None:
    good = ask(gw, GOOD)
    assert good.headers["x-switchyard-backend"] == "echo"
    assert good.parse().choices[0].message.content == GOOD
    assert gw.recording.requests == []
    bad = ask(gw, BAD)
    assert bad.headers["x-switchyard-backend"] == "big"
    assert len(gw.recording.requests) == 1
    scores = [float(h["x-switchyard-cascade"].split(";")[1].removeprefix("score="))
              for h in (good.headers, bad.headers)]
    assert 0.0 <= scores[1] < scores[0] <= 1.0
    row = ledger_row(gw.app, good.headers["x-switchyard-request-id"])
    c = json.loads(row["decision"])["cascade"]
    assert c["judge"] == "scorer" and c["accepted"] is True
    assert c["score"] == pytest.approx(scores[0], abs=1e-4) and 0 < c["threshold"] <= 1
