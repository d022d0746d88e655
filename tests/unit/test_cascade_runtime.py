"""The cascade runtime (``gateway.pipeline.cascade``) on echo backends: each stage is a call
with its own ledger record under the request's id; the judge decides whether the next stage
runs; a judged call asks for logprobs the client does not see; a failed stage escalates, or
leaves the client an earlier answer; a stream holds judged stages and replays the accepted
one, or streams its last (or, as configured, its first) stage live."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from switchyard_echo import EchoBackend, EchoConfig

from gateway import BackendCall, BackendError, BackendResult, BudgetExceeded, Meter, Verdict
from gateway.auth import KeyAuthenticator, mint_key
from gateway.config import BudgetsConfig
from gateway.interfaces import Candidate, Constraints, Plan, RequestFeatures
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline.admission import BudgetAdmission
from gateway.pipeline.context import RequestContext
from gateway.pipeline.routing import Cascade, Router, Target
from gateway.pipeline.service import Gateway
from gateway.registry import build_registry
from gateway.state import Team
from gateway.telemetry import Tracker
from plugins.state_memory import MemoryStore


class InOrder:
    name = "in_order"

    def plan(self, request: RequestFeatures, candidates: Sequence[Candidate],
             constraints: Constraints) -> Plan:
        names = [c.name for c in candidates]
        return Plan(order=names, reason="in order")


class StrongFirst(InOrder):
    """A pre-router that predicts the cheap stage will not do."""

    def plan(self, request: RequestFeatures, candidates: Sequence[Candidate],
             constraints: Constraints) -> Plan:
        return Plan(order=["big", "cheap"], reason="cheap predicted not good enough")


class AllSteps(InOrder):
    """A policy that asks for a cascade itself (no route judge)."""

    def plan(self, request: RequestFeatures, candidates: Sequence[Candidate],
             constraints: Constraints) -> Plan:
        plan = super().plan(request, candidates, constraints)
        plan.cascade = list(plan.order)
        return plan


class Judge:
    """Accepts an answer that contains ``word``; scores 0.9 or 0.1."""

    def __init__(self, word: str = "sure", logprobs: bool = False, fail: bool = False) -> None:
        self.word, self.logprobs, self.fail = word, logprobs, fail
        self.seen: list[tuple[int, str, Any]] = []

    async def verdict(self, request: RequestFeatures, answer: Mapping[str, Any],
                      step: int) -> Verdict:
        choice = answer["choices"][0]
        self.seen.append((step, choice["message"]["content"], choice.get("logprobs")))
        if self.fail:
            raise RuntimeError("the judge broke")
        ok = self.word in json.dumps(choice["message"])
        return Verdict(0.9 if ok else 0.1, ok, 0.5)


class Recording(EchoBackend):
    """Echo that keeps each body it got, answers with logprobs when asked, and fails when
    told to."""

    bodies: list[dict[str, Any]]
    fail = False

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        self.bodies.append(dict(call.body))
        if self.fail:
            raise BackendError(f"Backend '{self.name}' failed: on purpose.")
        out = await super().call(call, meter)
        if call.body.get("tools"):  # calls the client's first tool, twice (n=2)
            tool = call.body["tools"][0]["function"]["name"]
            msg = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": tool, "arguments": '{"x": 1}'}}]}
            out.body["choices"] = [{"index": i, "message": msg, "finish_reason": "tool_calls"}
                                   for i in range(2)]
        if call.body.get("logprobs"):
            out.body["choices"][0]["logprobs"] = {"content": [{"token": "x", "logprob": -0.5}]}
        return out

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        self.bodies.append(dict(call.body))
        async for chunk in super().stream(call, meter):
            yield chunk


def _backend(name: str) -> Recording:
    b = Recording(EchoConfig(name=name, plugin="echo", model=f"{name}-1", prefix=f"{name}: ",
                             pricing={"output_per_mtok": 1000.0}))
    b.bodies = []
    return b


class World:
    def __init__(self, tmp_path: Path, judge: Judge | None, policy: Any = None,
                 admission: Any = None, **cascade: Any) -> None:
        self.backends = {n: _backend(n) for n in ("cheap", "big")}
        self.trackers = trackers = {n: Tracker() for n in self.backends}
        spec = None if judge is None else Cascade("ask", ("cheap", "big"), judge, "words",
                                                   **cascade)
        target = Target("ask", "route", ("cheap", "big"), "p", cascade=spec)
        router = Router(self.backends, trackers, {"ask": target}, {"p": policy or InOrder()}, [])
        self.ledger = Ledger(tmp_path / "ledger.sqlite3", flush_interval_s=0.01)
        self.gw = Gateway(backends=self.backends, router=router, trackers=trackers,
                          metrics=Metrics(), registry=build_registry(load_entry_points=False),
                          ledger=self.ledger, admission=admission)

    def ask(self, text: str, rid: str = "req-1", ctx: RequestContext | None = None,
            **body: Any) -> tuple[dict[str, Any], Any]:
        b = {"model": "ask", "messages": [{"role": "user", "content": text}], **body}
        return asyncio.run(self.gw.complete("chat", b, ctx or RequestContext(request_id=rid)))

    def stream(self, text: str, rid: str = "req-s", **body: Any) -> tuple[list[Any], Any]:
        b = {"model": "ask", "messages": [{"role": "user", "content": text}], "stream": True,
             **body}

        async def go() -> tuple[list[Any], Any]:
            it, rec = await self.gw.stream("chat", b, RequestContext(request_id=rid))
            body = b"".join([e async for e in it])  # the writes may join several events
            events = body.removesuffix(b"\n\n").split(b"\n\n")
            return [orjson.loads(e[6:]) for e in events if e != b"data: [DONE]"], rec

        return asyncio.run(go())

    def rows(self) -> list[dict[str, Any]]:
        self.ledger.close()  # flushes
        conn = sqlite3.connect(self.ledger.path)
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY rowid")]
        conn.close()
        for r in rows:
            r["cascade"] = json.loads(r["decision"])["cascade"]
        return rows


def _text(answer: dict[str, Any]) -> str:
    return str(answer["choices"][0]["message"]["content"])


def _streamed(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if c.get("choices"))


def test_an_answer_the_judge_rejects_escalates_and_each_call_has_its_record(
        tmp_path: Path) -> None:
    judge = Judge()
    w = World(tmp_path, judge)
    answer, rec = w.ask("hello there", "req-cascade")
    assert _text(answer) == "big: hello there"
    assert [s[:2] for s in judge.seen] == [(1, "cheap: hello there")], "the last is not judged"
    assert rec.backend == "big"
    assert rec.headers()["x-switchyard-cascade"] == "cheap;score=0.1000;rejected, big;answered"
    rows = w.rows()
    assert [(r["request_id"], r["backend"], r["status"]) for r in rows] == [
        ("req-cascade", "cheap", 200), ("req-cascade", "big", 200)]
    assert all(r["cost_usd"] > 0 for r in rows), "both calls are billed"
    first, second = rows[0]["cascade"], rows[1]["cascade"]
    assert {k: first[k] for k in ("step", "steps", "route", "backend", "judge", "score",
                                  "threshold", "accepted", "answered")} == {
        "step": 1, "steps": 2, "route": "ask", "backend": "cheap", "judge": "words",
        "score": 0.1, "threshold": 0.5, "accepted": False, "answered": 2}
    assert second["judge"] is None and second["accepted"] is None and second["answered"] == 2
    assert [(t["backend"], t["outcome"], t["cost_usd"]) for t in second["tried"]] == [
        ("cheap", "rejected", rows[0]["cost_usd"]), ("big", "answered", rows[1]["cost_usd"])]
    assert "prompt" not in first and "tried" not in first


def test_an_accepted_first_answer_is_the_only_call(tmp_path: Path) -> None:
    w = World(tmp_path, Judge())
    answer, rec = w.ask("sure thing", "req-cheap")
    assert _text(answer) == "cheap: sure thing" and rec.backend == "cheap"
    assert rec.headers()["x-switchyard-cascade"] == "cheap;score=0.9000;accepted"
    assert w.backends["big"].bodies == []
    [row] = w.rows()
    assert row["backend"] == "cheap" and row["cascade"]["accepted"] is True
    assert row["cascade"]["answered"] == 1


def test_a_judge_that_reads_logprobs_gets_them_and_the_client_does_not(tmp_path: Path) -> None:
    judge = Judge(logprobs=True)
    w = World(tmp_path, judge)
    answer, _ = w.ask("hello")
    [cheap] = w.backends["cheap"].bodies
    assert cheap["logprobs"] is True and cheap["top_logprobs"] == 0
    assert judge.seen[0][2] == {"content": [{"token": "x", "logprob": -0.5}]}
    [big] = w.backends["big"].bodies
    assert "logprobs" not in big, "the last stage is not judged: no logprobs asked"
    w2 = World(tmp_path / "2", Judge("sure", logprobs=True))
    answer, _ = w2.ask("sure")
    assert answer["choices"][0].get("logprobs") is None, "stripped: the client did not ask"
    answer, _ = w2.ask("sure", logprobs=True)
    assert answer["choices"][0]["logprobs"] is not None, "kept: the client asked"


def test_with_learn_each_row_keeps_the_prompt(tmp_path: Path) -> None:
    w = World(tmp_path, Judge(), learn=True)
    w.ask("x" * 3000)
    rows = w.rows()
    assert [len(r["cascade"]["prompt"]) for r in rows] == [2000, 2000]


def test_a_failing_first_stage_escalates(tmp_path: Path) -> None:
    w = World(tmp_path, Judge())
    w.backends["cheap"].fail = True
    answer, rec = w.ask("sure", "req-fail")
    assert _text(answer) == "big: sure"
    assert rec.headers()["x-switchyard-cascade"] == "cheap;backend_error, big;answered"
    rows = w.rows()
    assert [(r["backend"], r["status"]) for r in rows] == [("cheap", 502), ("big", 200)]
    assert rows[0]["cost_usd"] == 0.0 and rows[0]["cascade"]["step"] == 1
    assert rows[1]["cascade"]["answered"] == 2


def test_a_stage_whose_circuit_is_open_fails_at_once_and_the_next_runs(tmp_path: Path) -> None:
    w = World(tmp_path, Judge())
    for _ in range(3):  # the breaker opens after 3 failures in a row
        w.trackers["cheap"].observe_failure(time.monotonic(), "backend_error")
    answer, rec = w.ask("sure")
    assert _text(answer) == "big: sure" and w.backends["cheap"].bodies == []
    assert rec.cascade_header() == "cheap;backend_unavailable, big;answered"


def test_a_failing_later_stage_leaves_the_client_the_earlier_answer(tmp_path: Path) -> None:
    w = World(tmp_path, Judge())
    w.backends["big"].fail = True
    answer, rec = w.ask("hello", "req-late")
    assert _text(answer) == "cheap: hello" and rec.backend == "cheap"
    assert rec.headers()["x-switchyard-cascade"] == (
        "cheap;score=0.1000;rejected;answered, big;backend_error")
    rows = w.rows()
    assert rows[-1]["backend"] == "cheap" and rows[-1]["cascade"]["answered"] == 1


def test_a_judge_that_raises_escalates(tmp_path: Path) -> None:
    w = World(tmp_path, Judge(fail=True))
    answer, rec = w.ask("sure")
    assert _text(answer) == "big: sure"
    assert rec.headers()["x-switchyard-cascade"] == "cheap;judge_error, big;answered"


def test_the_cascade_starts_at_the_policys_first_choice(tmp_path: Path) -> None:
    judge = Judge()
    w = World(tmp_path, judge, policy=StrongFirst())
    answer, rec = w.ask("hello")
    assert _text(answer) == "big: hello" and judge.seen == []
    assert w.backends["cheap"].bodies == [] and rec.cascade_header() == "big;answered"
    [row] = w.rows()
    assert row["cascade"]["steps"] == 1


def test_a_policy_cascade_without_a_judge_runs_every_stage(tmp_path: Path) -> None:
    w = World(tmp_path, None, policy=AllSteps())
    answer, _ = w.ask("sure")
    assert _text(answer) == "big: sure"
    assert [r["backend"] for r in w.rows()] == ["cheap", "big"]


def test_a_stream_holds_the_judged_stage_and_replays_the_accepted_answer(
        tmp_path: Path) -> None:
    w = World(tmp_path, Judge())
    chunks, rec = w.stream("sure thing", stream_options={"include_usage": True})
    assert _streamed(chunks) == "cheap: sure thing"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    [body] = w.backends["cheap"].bodies
    assert "stream" not in body and "stream_options" not in body, "held: a whole call"
    assert rec.cascade_header() == "cheap;score=0.9000;accepted"
    [row] = w.rows()
    assert row["stream"] == 1 and row["ttft_ms"] == row["latency_ms"]


def test_a_held_answer_with_tool_calls_and_two_choices_is_replayed_whole(
        tmp_path: Path) -> None:
    w = World(tmp_path, Judge("sure_tool"))
    tools = [{"type": "function", "function": {"name": "sure_tool", "parameters": {}}}]
    chunks, rec = w.stream("call it", tools=tools, n=2)
    assert rec.cascade_header() == "cheap;score=0.9000;accepted"
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c.get("choices") and
                c["choices"][0]["index"] == i]
        [calls] = [m["delta"]["tool_calls"] for m in mine if m["delta"].get("tool_calls")]
        assert calls == [{"index": 0, "id": "call_1", "type": "function",
                          "function": {"name": "sure_tool", "arguments": '{"x": 1}'}}]
        assert mine[-1]["finish_reason"] == "tool_calls"


def test_a_rejected_stream_streams_the_last_stage_live(tmp_path: Path) -> None:
    w = World(tmp_path, Judge())
    chunks, rec = w.stream("hello")
    assert _streamed(chunks) == "big: hello"
    assert w.backends["big"].bodies[0]["stream"] is True
    assert rec.cascade_header() == "cheap;score=0.1000;rejected, big;answered"
    rows = w.rows()
    assert [r["backend"] for r in rows] == ["cheap", "big"]
    assert rows[1]["cascade"]["answered"] == 2 and rows[1]["completion_tokens"] == 2


def test_stream_first_unjudged_streams_the_first_stage_live(tmp_path: Path) -> None:
    judge = Judge()
    w = World(tmp_path, judge, stream_first_unjudged=True)
    chunks, rec = w.stream("hello")
    assert _streamed(chunks) == "cheap: hello" and judge.seen == []
    assert w.backends["big"].bodies == []
    assert rec.cascade_header() == "cheap;unjudged"


def _team(budget_usd: float) -> tuple[BudgetAdmission, RequestContext, MemoryStore]:
    async def make() -> tuple[BudgetAdmission, RequestContext, MemoryStore]:
        store = MemoryStore()
        await store.create_team(Team(name="acme", budget_usd=budget_usd, period="total"))
        key, rec = mint_key("acme", "ci")
        await store.put_key(rec)
        ctx = RequestContext(request_id="req-budget", team="acme")
        ctx.identity = await KeyAuthenticator(store).verify(f"Bearer {key}")
        return BudgetAdmission(store, BudgetsConfig()), ctx, store

    return asyncio.run(make())


@pytest.mark.parametrize("on_budget", ["first_answer", "error"])
def test_a_team_that_cannot_hold_the_next_stage(tmp_path: Path, on_budget: str) -> None:
    """$0.001 an output token, max_tokens 4: each stage holds $0.004; the first costs $0.002
    ("cheap: hello"), so the second no longer fits a $0.005 budget."""
    adm, ctx, store = _team(0.005)
    w = World(tmp_path, Judge(), admission=adm, on_budget=on_budget)
    if on_budget == "first_answer":
        answer, rec = w.ask("hello", ctx=ctx, max_tokens=4)
        assert _text(answer) == "cheap: hello"
        assert rec.cascade_header() == (
            "cheap;score=0.1000;rejected;answered, big;team_budget_exceeded")
    else:
        with pytest.raises(BudgetExceeded) as e:
            w.ask("hello", ctx=ctx, max_tokens=4)
        assert e.value.status == 429 and e.value.code == "team_budget_exceeded"
        assert e.value.message.startswith(
            "The cascade of 'ask' needs its stage 'big': the judge did not accept the answer "
            "of 'cheap' (score 0.100). Team 'acme'")
    assert w.backends["big"].bodies == [], "the refused stage is never called"
    rows = sorted(w.rows(), key=lambda r: int(r["cascade"]["step"]))
    assert [(r["backend"], r["status"]) for r in rows] == [("cheap", 200), ("big", 429)]
    assert rows[0]["cascade"]["answered"] == (1 if on_budget == "first_answer" else None)
    spend = asyncio.run(store.spend("acme", "total"))
    assert spend.spent == pytest.approx(rows[0]["cost_usd"] * 1e9) and spend.reserved == 0
