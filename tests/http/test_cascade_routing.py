"""Cascade routing through the HTTP API: the ``learned`` pre-router plans a cascade route, and
the cascade starts at the router's first choice. A kNN router (real MiniLM embeddings)
trained where the small model fails arithmetic word problems and handles small talk: small
talk starts at the cheap stage and its judge accepts it there; a word problem skips the
cheap stage and goes straight to the strong one. Real uvicorn, the official openai SDK; the
cheap stage is the ``echo`` backend, the strong one the recording upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cascade_helpers import ask, cascade_gateway
from http_helpers import ledger_row

from gateway import RegisterJudge, RequestFeatures, Verdict, hookimpl

MATH = [f"A farmer has {a} sheep and buys {b} more each week for {c} weeks. How many sheep "
        f"does he have at the end?" for a, b, c in ((12, 3, 4), (40, 7, 2), (5, 11, 6), (9, 2, 8))]
MATH += ["Solve for x: 3x + 7 = 25, then compute x squared minus 4.",
         "A train leaves at 3 pm going 60 mph; another at 4 pm going 80 mph. When does it meet?"]
CHAT = ["Hi there, how are you today?", "Say hello to my friend Ana.",
        "Thanks, that was helpful!", "Good morning! Have a nice day.",
        "What a lovely weather, isn't it?", "Tell me something nice."]


class Accepting:
    """A judge that accepts every answer (the router decides here)."""

    logprobs = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options

    async def verdict(self, request: RequestFeatures, answer: Mapping[str, Any],
                      step: int) -> Verdict:
        return Verdict(1.0, True, 0.5)


class Judges:
    @hookimpl
    def switchyard_register_judges(self, register: RegisterJudge) -> None:
        register("accepting", Accepting)


def _router_file(path: Path) -> None:
    from plugins.learn.embed import encode
    from plugins.learn.features import route_text
    from plugins.learn.router import RouterModel

    prompts = MATH + CHAT
    X = encode([route_text(p) for p in prompts])
    small_ok = np.array([0.0] * len(MATH) + [1.0] * len(CHAT))
    Y = np.stack([small_ok, np.ones(len(prompts))], axis=1)
    C = np.tile([0.0001, 0.01], (len(prompts), 1))
    RouterModel.fit(X, Y, C, ["small-model", "big-model"], "knn", {"k": 3}, folds=3).save(path)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("cascade-routing")
    _router_file(tmp / "router.npz")
    cheap = {"name": "cheap", "plugin": "echo", "model": "small-model",
             "pricing": {"output_per_mtok": 0.2}}
    route = {"name": "ask", "policy": "learned",
             "policy_options": {"model": str(tmp / "router.npz"), "quality_target": 0.7},
             "cascade": {"stages": ["cheap", "strong"], "judge": "accepting"}}
    with cascade_gateway(tmp, cheap, route, extra_plugins=[Judges()]) as srv:
        yield srv


def test_small_talk_starts_at_the_cheap_stage(gw: Any) -> None:
    gw.recording.reset()
    raw = ask(gw, "Hello! How are you doing this morning?")
    assert raw.headers["x-switchyard-backend"] == "cheap"
    assert raw.headers["x-switchyard-cascade"] == "cheap;score=1.0000;accepted"
    assert gw.recording.requests == []


def test_a_word_problem_skips_the_cheap_stage(gw: Any) -> None:
    gw.recording.reset()
    raw = ask(gw, "A shop sells 14 apples a day for 9 days and 6 more on Sunday. "
                   "How many apples in all?")
    assert raw.headers["x-switchyard-backend"] == "strong"
    assert raw.headers["x-switchyard-cascade"] == "strong;answered"
    assert len(gw.recording.requests) == 1
    row = ledger_row(gw.app, raw.headers["x-switchyard-request-id"])
    decision = json.loads(row["decision"])
    assert decision["policy"] == "learned" and decision["order"][0] == "strong"
    assert decision["cascade"]["steps"] == 1 and decision["cascade"]["backend"] == "strong"
