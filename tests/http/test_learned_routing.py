"""The gateway learns from its own traffic, through the HTTP API: a cascade route with
``learn: true`` serves prompts (the cheap stage's answers judged by the ``logprob`` judge:
word problems come back unsure and escalate, small talk comes back sure); ``switchyard train
router --from-ledger`` fits the pre-router on that ledger; a second gateway whose route uses
the ``learned`` policy with that file then sends a new word problem straight to the strong
backend and new small talk to the cheap one, as the model predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, make_settings, serve, wait_until

from gateway.http.app import create_app

pytestmark = pytest.mark.slow

SWITCHYARD = Path(sys.executable).parent / "switchyard"
WORD_PROBLEMS = [
    "A farmer has 12 sheep and buys 3 more each week for 4 weeks. How many sheep are there?",
    "Tom reads 25 pages a day for 6 days and 14 pages on Sunday. How many pages in all?",
    "A box holds 8 rows of 9 eggs; 17 eggs break. How many eggs are left?",
    "A car drives 60 miles per hour for 3.5 hours. How far does it go?",
    "Lisa earns $12 an hour for 7 hours and spends $30. How much money does she keep?",
    "A shop sells 48 apples in bags of 6 and each bag costs $2. How much does it earn?",
]
SMALL_TALK = [
    "Hi there, how are you today?", "Say hello to my friend Ana, please.",
    "Thanks a lot, that was really helpful!", "Good morning! Have a lovely day.",
    "What a nice weather we have, isn't it?", "Tell me something cheerful.",
]
SURE, UNSURE = -0.02, -3.0  # every token's log-probability in the cheap stage's answers


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[LiveServer, LiveServer]]:
    small, big = RecordingUpstream("small-model"), RecordingUpstream("big-model")
    with serve(small.app) as s, serve(big.app) as b:
        s.recording, b.recording = small, big  # type: ignore[attr-defined]
        yield s, b


def _backends(small: LiveServer, big: LiveServer) -> list[dict[str, Any]]:
    return [{"name": "cheap", "plugin": "openai_compatible", "base_url": small.url + "/v1",
             "model": "small-model", "pricing": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
            {"name": "strong", "plugin": "openai_compatible", "base_url": big.url + "/v1",
             "model": "big-model", "pricing": {"input_per_mtok": 10.0, "output_per_mtok": 30.0}}]


def _ask(srv: LiveServer, model: str, prompt: str) -> Any:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8)


def _train_from_ledger(ledger: Path, out: Path, dump: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([str(SWITCHYARD), "train", "router", "--from-ledger", str(ledger),
                        "--out", str(out), "--dump", str(dump), "--cache", str(out.parent)],
                       check=False, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_pre_router_learns_from_the_ledger_and_routes_as_it_predicts(
        upstreams: tuple[LiveServer, LiveServer], tmp_path: Path) -> None:
    small, big = upstreams
    route = {"name": "ask", "cascade": {"stages": ["cheap", "strong"], "judge": "logprob",
                                        "judge_options": {"threshold": 0.5}, "learn": True}}
    settings = make_settings(tmp_path, backends=_backends(small, big), routes=[route])
    ledger = Path(settings.ledger.path)
    with serve(create_app(settings)) as gw:
        for prompt in WORD_PROBLEMS + SMALL_TALK:
            small.recording.behave(logprob=UNSURE if prompt in WORD_PROBLEMS else SURE)
            h = _ask(gw, "ask", prompt).headers
            assert h["x-switchyard-backend"] == ("strong" if prompt in WORD_PROBLEMS else "cheap")
        n = len(WORD_PROBLEMS) * 2 + len(SMALL_TALK)  # an escalated request has two rows
        wait_until(lambda: len(gw.app.state.ledger.query("SELECT rowid FROM requests")) >= n,
                   what="every call in the ledger")

    model, dump = tmp_path / "router.npz", tmp_path / "table.jsonl"
    _train_from_ledger(ledger, model, dump)
    table = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(table) == len(WORD_PROBLEMS) + len(SMALL_TALK)
    for row in table:  # the judge's scores are the cheap backend's quality labels
        cheap = row["outcomes"]["cheap"]["quality"]
        assert cheap < 0.1 if row["prompt"] in WORD_PROBLEMS else cheap > 0.9
        assert row["outcomes"]["strong"]["quality"] == 1.0

    small.recording.reset()
    big.recording.reset()
    learned = {"name": "auto", "backends": ["cheap", "strong"], "policy": "learned",
               "policy_options": {"model": str(model), "quality_target": 0.5}}
    settings = make_settings(tmp_path / "second", backends=_backends(small, big), routes=[learned])
    with serve(create_app(settings)) as gw:
        hard = _ask(gw, "auto", "A baker makes 36 rolls a day for 5 days and sells 150. "
                                "How many rolls are left?")
        easy = _ask(gw, "auto", "Hello! How are you doing this fine morning?")
    assert hard.headers["x-switchyard-backend"] == "strong"
    assert "learned" in hard.headers["x-switchyard-route"]
    assert easy.headers["x-switchyard-backend"] == "cheap"
    assert len(big.recording.requests) == 1 and len(small.recording.requests) == 1
