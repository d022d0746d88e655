"""The attempt executor runs a sequence of calls where the plan asks for one (a cascade):
one ledger record per call, linked by the request id, each saying which answer the client
got; the client's own record is the answering call's."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from switchyard_echo import EchoBackend, EchoConfig

from gateway.interfaces import Candidate, Constraints, Plan, RequestFeatures
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline.context import RequestContext
from gateway.pipeline.routing import Router, Target
from gateway.pipeline.service import Gateway
from gateway.registry import build_registry
from gateway.telemetry import Tracker


class CascadePolicy:
    name = "cascade"

    def plan(self, request: RequestFeatures, candidates: Sequence[Candidate],
             constraints: Constraints) -> Plan:
        names = [c.name for c in candidates]
        return Plan(order=names, reason="cheap first", cascade=names)


class Judge:
    def __init__(self, accept: bool) -> None:
        self.accept_first = accept
        self.seen: list[tuple[int, str]] = []

    async def accept(self, request: RequestFeatures, answer: Mapping[str, Any],
                     step: int) -> bool:
        self.seen.append((step, answer["choices"][0]["message"]["content"]))
        return self.accept_first


def _gateway(tmp_path: Path, judge: Judge | None) -> tuple[Gateway, Ledger]:
    backends = {n: EchoBackend(EchoConfig(name=n, plugin="echo", model=f"{n}-1", prefix=f"{n}: "))
                for n in ("cheap", "big")}
    trackers = {n: Tracker() for n in backends}
    target = Target("ask", "route", ("cheap", "big"), "cascade")
    router = Router(backends, trackers, {"ask": target}, {"cascade": CascadePolicy()}, [])
    ledger = Ledger(tmp_path / "ledger.sqlite3", flush_interval_s=0.01)
    gw = Gateway(backends=backends, router=router, trackers=trackers, metrics=Metrics(),
                 registry=build_registry(load_entry_points=False), ledger=ledger, judge=judge)
    return gw, ledger


def _rows(ledger: Ledger) -> list[dict[str, Any]]:
    ledger.close()  # flushes
    conn = sqlite3.connect(ledger.path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY rowid")]
    conn.close()
    return rows


def _ask(gw: Gateway, rid: str) -> tuple[dict[str, Any], Any]:
    body = {"model": "ask", "messages": [{"role": "user", "content": "hello there"}]}
    return asyncio.run(gw.complete("chat", body, RequestContext(request_id=rid)))


def test_an_answer_the_judge_refuses_escalates_and_each_call_has_its_record(
        tmp_path: Path) -> None:
    judge = Judge(accept=False)
    gw, ledger = _gateway(tmp_path, judge)
    answer, rec = _ask(gw, "req-cascade")
    assert answer["choices"][0]["message"]["content"] == "big: hello there"
    assert judge.seen == [(1, "cheap: hello there")], "the last step is not judged"
    assert rec.backend == "big" and rec.decision["cascade"] == {"step": 2, "steps": 2, "answer": 2}
    rows = _rows(ledger)
    assert [r["request_id"] for r in rows] == ["req-cascade", "req-cascade"]
    assert [r["backend"] for r in rows] == ["cheap", "big"]
    assert all(r["status"] == 200 and r["completion_tokens"] > 0 for r in rows)
    steps = [json.loads(r["decision"])["cascade"] for r in rows]
    assert steps == [{"step": 1, "steps": 2, "answer": 2}, {"step": 2, "steps": 2, "answer": 2}]


def test_an_accepted_first_answer_is_the_only_call(tmp_path: Path) -> None:
    gw, ledger = _gateway(tmp_path, Judge(accept=True))
    answer, rec = _ask(gw, "req-cheap")
    assert answer["choices"][0]["message"]["content"] == "cheap: hello there"
    assert rec.backend == "cheap"
    rows = _rows(ledger)
    assert [(r["request_id"], r["backend"]) for r in rows] == [("req-cheap", "cheap")]
    assert json.loads(rows[0]["decision"])["cascade"] == {"step": 1, "steps": 2, "answer": 1}


def test_without_a_judge_every_step_runs_and_the_last_answers(tmp_path: Path) -> None:
    gw, ledger = _gateway(tmp_path, None)
    answer, _ = _ask(gw, "req-all")
    assert answer["choices"][0]["message"]["content"] == "big: hello there"
    assert [r["backend"] for r in _rows(ledger)] == ["cheap", "big"]
