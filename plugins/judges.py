"""The built-in judges of a route's cascade (docs/cascades.md).

- ``logprob``: the answer's confidence from its tokens' log-probabilities. The score is the
  geometric mean of the tokens' probabilities, ``exp(mean(logprob))`` (``statistic: mean``),
  or the least likely token's probability, ``exp(min(logprob))`` (``statistic: min``); the
  answer is accepted when the score reaches ``threshold``. The gateway asks each judged
  call for logprobs (llama.cpp in-process, llama.cpp's server, vLLM and OpenAI-compatible
  servers return them) and strips them from the answer when the client did not ask. An
  answer without logprobs scores 0: it escalates.
- ``scorer``: a trained ``AnswerScorer`` (``switchyard train judge``, ``plugins.learn``):
  P(the answer is good enough) from the prompt, the answer and its logprobs, against the
  threshold calibrated into the file (or ``threshold``). Loaded once, at start-up; scored
  in a worker thread (it may embed the text with MiniLM).
"""

from __future__ import annotations

import asyncio
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway import RegisterJudge, RequestFeatures, Verdict, hookimpl


def answer_logprobs(answer: Mapping[str, Any]) -> list[float] | None:
    """Every generated token's log-probability, over all choices (None: the backend
    returned none). Chat: ``choices[].logprobs.content[].logprob``; legacy completions:
    ``choices[].logprobs.token_logprobs``."""
    out: list[float] = []
    found = False
    for choice in answer.get("choices") or ():
        lp = choice.get("logprobs") if isinstance(choice, Mapping) else None
        if not isinstance(lp, Mapping):
            continue
        if isinstance(lp.get("content"), list):
            found = True
            out += [float(t["logprob"]) for t in lp["content"]
                    if isinstance(t, Mapping) and _number(t.get("logprob"))]
        elif isinstance(lp.get("token_logprobs"), list):
            found = True
            out += [float(v) for v in lp["token_logprobs"] if _number(v)]
    return out if found else None


def _number(v: Any) -> bool:
    """A real number: llama-cpp-python's in-process logprobs are numpy float32s."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def answer_text(answer: Mapping[str, Any]) -> str:
    """The first choice's text (chat message content, or a completion's text)."""
    choices = answer.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], Mapping) else {}
    msg = first.get("message")
    text = msg.get("content") if isinstance(msg, Mapping) else first.get("text")
    return text if isinstance(text, str) else ""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogprobOptions(_Options):
    threshold: float = Field(0.5, gt=0, le=1, description="accept when the score reaches it")
    statistic: Literal["mean", "min"] = "mean"


class LogprobJudge:
    logprobs = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = LogprobOptions.model_validate(dict(options))

    def score(self, logprobs: Sequence[float] | None) -> float:
        if not logprobs:
            return 0.0
        stat = (sum(logprobs) / len(logprobs) if self.options.statistic == "mean"
                else min(logprobs))
        return math.exp(stat)

    async def verdict(self, request: RequestFeatures, answer: Mapping[str, Any],
                      step: int) -> Verdict:
        s = self.score(answer_logprobs(answer))
        t = self.options.threshold
        return Verdict(s, s >= t, t)


class ScorerOptions(_Options):
    path: str = Field(min_length=1, description="a model file from `switchyard train judge`")
    threshold: float | None = Field(None, ge=0, le=1, description="default: the file's own")
    logprobs: bool = Field(True, description="ask the judged calls for logprobs (features)")


class Scorer(Protocol):  # plugins.learn.AnswerScorer, as the judge uses it
    threshold: float

    def score(self, prompt: str, answer: str, logprobs: Sequence[float] | None) -> float: ...


class ScorerJudge:
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = ScorerOptions.model_validate(dict(options))
        path = Path(self.options.path).expanduser()
        if not path.is_file():
            raise ValueError(f"path: no model file at {path} (train one with "
                             "`switchyard train judge`)")
        from plugins.learn.judge import AnswerScorer  # numpy and the rest: only when used

        self.model: Scorer = AnswerScorer.load(path)
        self.threshold = (self.options.threshold if self.options.threshold is not None
                          else self.model.threshold)
        self.logprobs = self.options.logprobs

    async def verdict(self, request: RequestFeatures, answer: Mapping[str, Any],
                      step: int) -> Verdict:
        lps = answer_logprobs(answer) if self.logprobs else None
        s = await asyncio.to_thread(self.model.score, request.text, answer_text(answer), lps)
        return Verdict(s, s >= self.threshold, self.threshold)


@hookimpl(trylast=True)
def switchyard_register_judges(register: RegisterJudge) -> None:
    register("logprob", LogprobJudge)
    register("scorer", ScorerJudge)
