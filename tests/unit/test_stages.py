"""The stage list is built once from what is configured, in the declared order: a stage
that is not configured is not in it; an optional one joins at its place; a cache hit ends
the stages and is recorded without a backend call."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from switchyard_echo import EchoBackend, EchoConfig

from gateway.config import BudgetsConfig
from gateway.interfaces import Candidate, Constraints, Plan, RequestFeatures
from gateway.metrics import Metrics
from gateway.pipeline import stages
from gateway.pipeline.admission import BudgetAdmission
from gateway.pipeline.context import RequestContext
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.routing import Router, Target
from gateway.pipeline.service import Gateway
from gateway.registry import build_registry
from gateway.telemetry import Tracker
from plugins.state_memory import MemoryStore


class First:
    name = "first"

    def plan(self, request: RequestFeatures, candidates: Sequence[Candidate],
             constraints: Constraints) -> Plan:
        return Plan(order=[c.name for c in candidates], reason="first")


def _gateway(**kw: Any) -> Gateway:
    backends = {"echo": EchoBackend(EchoConfig(name="echo", plugin="echo"))}
    trackers = {"echo": Tracker()}
    router = Router(backends, trackers, {"m": Target("m", "route", ("echo",), "first")},
                    {"first": First()}, [])
    return Gateway(backends=backends, router=router, trackers=trackers, metrics=Metrics(),
                   registry=build_registry(load_entry_points=False), **kw)


def _names(gw: Gateway) -> list[str]:
    return stages.names(gw.stages)


def test_only_configured_stages_are_in_the_list_in_the_declared_order() -> None:
    assert _names(_gateway()) == ["resolve", "features", "plan"]
    budgets = BudgetAdmission(MemoryStore(), BudgetsConfig())
    assert _names(_gateway(admission=budgets)) == ["resolve", "features", "admit", "plan"]

    def noop(x: Exchange) -> None:
        return None

    both = _gateway(stages_extra={"cache_lookup": noop, "compress": noop})
    assert _names(both) == ["resolve", "compress", "features", "cache_lookup", "plan"]
    assert [n for n in stages.ORDER if n in _names(both)] == _names(both)


def test_an_unknown_optional_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stages"):
        _gateway(stages_extra={"cache": lambda x: None})


def test_a_cache_hit_ends_the_stages_and_is_recorded_without_a_call() -> None:
    planned: list[str] = []
    seen: list[tuple[str, Mapping[str, Any]]] = []

    async def lookup(x: Exchange) -> None:
        x.answer = {"id": "cached", "choices": []}

    async def remember(x: Exchange, answer: dict[str, Any]) -> None:
        seen.append((x.ctx.request_id, answer))

    gw = _gateway(stages_extra={"cache_lookup": lookup}, cache_store=remember)
    gw.router.editors = [lambda f, c, p: planned.append("plan")]  # type: ignore[list-item]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    answer, rec = asyncio.run(gw.complete("chat", body, RequestContext(request_id="r1")))
    assert answer == {"id": "cached", "choices": []}
    assert planned == [] and rec.backend is None and rec.attempts == 0
    assert rec.request_id == "r1" and rec.latency_ms > 0
    assert seen == [], "a hit is not stored again"

    gw = _gateway(cache_store=remember)
    answer, rec = asyncio.run(gw.complete("chat", body, RequestContext(request_id="r2")))
    assert rec.backend == "echo" and seen == [("r2", answer)], "a backend's answer is stored"
