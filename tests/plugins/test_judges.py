"""The built-in judges (``plugins.judges``): ``logprob`` scores an answer by its tokens'
log-probabilities (chat and legacy completion shapes; no logprobs: it escalates); ``scorer``
loads a model file written by ``plugins.learn``'s ``AnswerScorer`` once and scores answers
with it, off the event loop, against the file's calibrated threshold or the route's."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from gateway import RequestFeatures, Verdict
from plugins.judges import LogprobJudge, ScorerJudge, answer_logprobs, answer_text

REQ = RequestFeatures(endpoint="chat", requested="ask", prompt_tokens=5, max_tokens=16,
                      text="What is 2 + 2?")


def chat(text: str, logprobs: list[float] | None) -> dict[str, Any]:
    lp = None if logprobs is None else {"content": [{"token": "t", "logprob": v,
                                                     "top_logprobs": []} for v in logprobs]}
    return {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": lp}]}


def verdict(judge: Any, answer: dict[str, Any]) -> Verdict:
    result: Verdict = asyncio.run(judge.verdict(REQ, answer, 1))
    return result


def test_logprob_scores_the_geometric_mean_probability_against_its_threshold() -> None:
    judge = LogprobJudge({"threshold": 0.5})
    sure = verdict(judge, chat("4", [-0.1, -0.2, -0.3]))
    assert sure.score == pytest.approx(math.exp(-0.2)) and sure.accept and sure.threshold == 0.5
    unsure = verdict(judge, chat("maybe 5", [-0.1, -3.0]))
    assert unsure.score == pytest.approx(math.exp(-1.55)) and not unsure.accept
    strict = LogprobJudge({"threshold": 0.5, "statistic": "min"})
    assert verdict(strict, chat("4", [-0.1, -0.9])).score == pytest.approx(math.exp(-0.9))


def test_logprob_reads_legacy_completions_and_escalates_without_logprobs() -> None:
    completion = {"object": "text_completion", "choices": [{"index": 0, "text": " 4",
                  "logprobs": {"tokens": [" 4"], "token_logprobs": [-0.05]}}]}
    assert answer_logprobs(completion) == [-0.05]
    in_process = chat("4", [])  # llama-cpp-python in process: numpy float32 logprobs
    in_process["choices"][0]["logprobs"]["content"] = [{"logprob": np.float32(-0.25)}]
    assert answer_logprobs(in_process) == [-0.25]
    assert verdict(LogprobJudge({}), completion).accept
    none = verdict(LogprobJudge({}), chat("4", None))
    assert none.score == 0.0 and not none.accept
    assert LogprobJudge({}).logprobs is True


def test_logprob_refuses_bad_options() -> None:
    with pytest.raises(ValidationError):
        LogprobJudge({"threshold": 0})
    with pytest.raises(ValidationError):
        LogprobJudge({"treshold": 0.5})


def test_answer_text_reads_both_shapes() -> None:
    assert answer_text(chat("four", None)) == "four"
    assert answer_text({"choices": [{"text": " four"}]}) == " four"
    assert answer_text({"choices": []}) == ""


def _trained_file(tmp_path: Path) -> Path:
    """A real ``AnswerScorer`` fitted on answers whose quality follows their confidence."""
    from plugins.learn.judge import AnswerScorer

    rng = np.random.default_rng(1)
    prompts, answers, lps, weak = [], [], [], []
    for i in range(120):
        good = i % 2 == 0
        prompts.append(f"question {i}")
        answers.append("The answer is 4." if good else "I am not sure, maybe it is 7 or 9?")
        lps.append(list(rng.normal(-0.1 if good else -2.5, 0.05, 8)))
        weak.append(1.0 if good else 0.0)
    scorer = AnswerScorer.fit(prompts, answers, np.array(weak), np.ones(120), logprobs=lps)
    path = tmp_path / "judge.npz"
    scorer.save(path)
    return path


def test_scorer_loads_a_trained_file_and_scores_with_its_threshold(tmp_path: Path) -> None:
    path = _trained_file(tmp_path)
    judge = ScorerJudge({"path": str(path)})
    good = verdict(judge, chat("The answer is 4.", [-0.1] * 8))
    bad = verdict(judge, chat("I am not sure, maybe it is 7 or 9?", [-2.5] * 8))
    assert 0.0 <= bad.score < good.score <= 1.0
    assert good.threshold == bad.threshold == judge.model.threshold
    assert good.accept and not bad.accept
    pinned = ScorerJudge({"path": str(path), "threshold": 1.0})
    assert verdict(pinned, chat("The answer is 4.", [-0.1] * 8)).threshold == 1.0


def test_scorer_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model file"):
        ScorerJudge({"path": str(tmp_path / "missing.npz")})
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError):
        ScorerJudge({"path": str(junk)})
