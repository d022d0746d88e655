"""The compress stage's own logic, with plain values: where compression pays, what a
compressor may change, how a route's and a request's settings combine; the stage is in the
list only where compression is configured; a compressor that breaks the rules or raises
leaves the prompt as it was (the built-in's behaviour end to end: tests/http/
test_compress_http.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from switchyard_echo import EchoBackend, EchoConfig

from gateway import BackendCall, Meter, RegisterCompressor, hookimpl
from gateway.assembly import build_parts
from gateway.config import CompressConfig, CompressRules
from gateway.errors import ConfigError
from gateway.interfaces import BackendResult
from gateway.metrics import Metrics
from gateway.pipeline import stages
from gateway.pipeline.compress import (
    Compress,
    Reach,
    Settings,
    pays,
    predicted_saving,
    request_settings,
    unsafe_change,
)
from gateway.pipeline.context import RequestContext
from gateway.pipeline.routing import Router, Target
from gateway.pipeline.service import Gateway
from gateway.protocol import CompressOptions, validate
from gateway.registry import build_registry
from gateway.telemetry import Tracker

# ---- where it pays ----------------------------------------------------------------------


def test_a_paid_backend_compresses_when_the_price_saved_beats_the_time_spent() -> None:
    v = pays(2000, price_per_token=3e-6, prefill_s_per_token=0.0, cost_s=0.05,
             usd_per_s=10 / 3600)
    assert v["pays"] and v["saved_usd"] == pytest.approx(0.006)
    assert v["cost_usd"] == pytest.approx(0.05 * 10 / 3600)
    cheap = pays(2000, price_per_token=0.15e-6, prefill_s_per_token=0.0, cost_s=0.2,
                 usd_per_s=10 / 3600)
    assert not cheap["pays"], "0.03 cents saved is not worth 0.2 s at 10 USD an hour"
    free_time = pays(2000, price_per_token=0.15e-6, prefill_s_per_token=0.0, cost_s=0.2,
                     usd_per_s=0.0)
    assert free_time["pays"], "time worth nothing: any saving pays"


def test_a_free_backend_compares_the_prefill_time_saved_with_the_compressors_time() -> None:
    gpu = pays(2000, price_per_token=0.0, prefill_s_per_token=1 / 20_000, cost_s=0.2,
               usd_per_s=10 / 3600)
    assert not gpu["pays"] and gpu["saved_s"] == pytest.approx(0.1)
    assert "saved_usd" not in gpu
    cpu = pays(2000, price_per_token=0.0, prefill_s_per_token=1 / 50, cost_s=0.2,
               usd_per_s=10 / 3600)
    assert cpu["pays"] and cpu["saved_s"] == pytest.approx(40.0)


def test_the_predicted_saving_follows_the_target_else_what_the_compressor_removed() -> None:
    reach = Reach()
    assert predicted_saving(1000, Settings(None, 200, 0), reach) == 800
    assert predicted_saving(1000, Settings(4.0, None, 0), reach) == 750
    assert predicted_saving(1000, Settings(4.0, 100, 0), reach) == 900, "the tighter one"
    assert predicted_saving(1000, Settings(None, None, 0), reach) == 500, "half, unmeasured"
    reach.observe(1000, 100, ms=20.0)
    assert predicted_saving(1000, Settings(None, None, 0), reach) == pytest.approx(900)
    assert reach.ms_per_token == pytest.approx(0.02)
    reach.observe(1000, 300, ms=40.0)  # a moving average: the newest weighs 0.2
    assert reach.kept == pytest.approx(0.14) and reach.ms_per_token == pytest.approx(0.024)
    reach.observe(1000, None, ms=40.0)  # a prompt with nothing to cut: its time only
    assert reach.kept == pytest.approx(0.14)
    before = reach.ms_per_token
    reach.observe(1000, 100, ms=5000.0)  # a stall counts as 4x the average, no more
    assert reach.ms_per_token == pytest.approx(0.8 * before + 0.2 * 4 * before)


# ---- settings ---------------------------------------------------------------------------


def test_a_route_or_a_request_that_sets_a_target_replaces_the_whole_target() -> None:
    top = CompressConfig(enabled=True, token_budget=400, min_tokens=800)
    route = top.for_route(CompressRules(ratio=8.0))
    assert (route.ratio, route.token_budget, route.min_tokens) == (8.0, None, 800)
    assert top.for_route(CompressRules(min_tokens=10)).token_budget == 400
    s = request_settings(route, CompressOptions(token_budget=100))
    assert (s.ratio, s.token_budget, s.min_tokens) == (None, 100, 800)
    s = request_settings(route, CompressOptions(min_tokens=0))
    assert (s.ratio, s.token_budget, s.min_tokens) == (8.0, None, 0)


@pytest.mark.parametrize(("options", "param"), [
    ({"ratio": 1.0}, "switchyard.compress.ratio"),
    ({"token_budget": 0}, "switchyard.compress.token_budget"),
    ({"off": "yes"}, "switchyard.compress.off"),
    ({"budget": 10}, "switchyard.compress.budget"),
])
def test_a_bad_request_option_is_a_400_naming_it(options: dict[str, Any], param: str) -> None:
    from gateway.errors import InvalidRequest

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "switchyard": {"compress": options}}
    with pytest.raises(InvalidRequest) as e:
        validate("chat", body)
    assert e.value.param == param


# ---- what a compressor may change -------------------------------------------------------

RAG = [{"role": "system", "content": "Use the documents.\n\nDocument [1] a b c\nDocument [2] d"},
       {"role": "user", "content": "Document [3] e f\n\nWhat is e?"}]


def test_changed_message_text_is_allowed_and_the_question_must_stay() -> None:
    ok = [{"role": "system", "content": "Use the documents.\n\nDocument [1] a"},
          {"role": "user", "content": "What is e?"}]
    assert unsafe_change(RAG, ok) is None
    lost = [RAG[0], {"role": "user", "content": "Document [3] e f"}]
    assert "last user turn" in (unsafe_change(RAG, lost) or "")


@pytest.mark.parametrize(("after", "problem"), [
    (RAG[:1], "2 messages became 1"),
    ([{**RAG[0], "role": "user"}, RAG[1]], "beyond its content"),
    ([{**RAG[0], "name": "x"}, RAG[1]], "beyond its content"),
    ([{**RAG[0], "content": [{"type": "text", "text": "x"}]}, RAG[1]], "shape"),
])
def test_anything_but_message_text_is_a_change_it_may_not_make(
        after: list[dict[str, Any]], problem: str) -> None:
    assert problem in (unsafe_change(RAG, after) or "")


def test_tool_calls_and_non_text_parts_must_stay() -> None:
    call = {"role": "assistant", "content": "calling",
            "tool_calls": [{"id": "1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]}
    before = [call, {"role": "user", "content": "ok?"}]
    moved = [{**call, "tool_calls": []}, before[1]]
    assert "beyond its content" in (unsafe_change(before, moved) or "")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a"}},
                                          {"type": "text", "text": "long text"}]},
             {"role": "user", "content": "q"}]
    shorter = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a"}},
                                            {"type": "text", "text": "text"}]}, image[1]]
    assert unsafe_change(image, shorter) is None
    swapped = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "b"}},
                                            {"type": "text", "text": "text"}]}, image[1]]
    assert "shape" in (unsafe_change(image, swapped) or "")


# ---- the stage in the pipeline ----------------------------------------------------------


@dataclass
class Result:
    messages: list[dict[str, Any]]
    words_before: int = 100
    words_after: int = 10
    changed: list[str] = field(default_factory=lambda: ["messages[0].content"])
    kept_verbatim: list[str] = field(default_factory=list)
    ms: float = 1.0
    stages: list[str] = field(default_factory=lambda: ["test"])


class Misbehaving:
    """A plugin compressor that breaks the rules: drops the question, or raises."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.calls = 0

    async def compress(self, messages: list[dict[str, Any]], *, ratio: float | None = None,
                       token_budget: int | None = None,
                       min_words: int | None = None) -> Result:
        self.calls += 1
        if self.how == "raise":
            raise RuntimeError("model file missing")
        return Result([{**messages[0], "content": "short"}, {"role": "user", "content": "?"}])


class Recording(EchoBackend):
    def __init__(self) -> None:
        super().__init__(EchoConfig(name="echo", plugin="echo", pricing={"input_per_mtok": 5.0}))
        self.got: list[dict[str, Any]] = []

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        self.got.append(call.body)
        return await super().call(call, meter)


def _pipeline(compressor: Any) -> tuple[Gateway, Recording]:
    backend = Recording()
    trackers = {"echo": Tracker()}
    router = Router({"echo": backend}, trackers,
                    {"m": Target("m", "route", ("echo",), "first_healthy")},
                    {"first_healthy": _First()}, [])
    cfg = CompressConfig(enabled=True, min_tokens=10, when="always")
    stage = Compress(compressor, "test", cfg, {"m": cfg}, {"echo": backend}, trackers)
    gw = Gateway(backends={"echo": backend}, router=router, trackers=trackers,
                 metrics=Metrics(), registry=build_registry(load_entry_points=False),
                 stages_extra={"compress": stage})
    return gw, backend


class _First:
    name = "first_healthy"

    def plan(self, request: Any, candidates: Any, constraints: Any) -> Any:
        from gateway.interfaces import Plan
        return Plan(order=[c.name for c in candidates], reason="first")


LONG = [{"role": "system", "content": "Use these.\n\n" + " ".join(["word"] * 400)},
        {"role": "user", "content": "What is the word?"}]


@pytest.mark.parametrize(("how", "outcome", "reason"), [
    ("drop_question", "unchanged", "unsafe_change"), ("raise", "failed", "error: RuntimeError")])
async def test_a_compressor_that_breaks_the_rules_or_raises_leaves_the_prompt_whole(
        how: str, outcome: str, reason: str) -> None:
    compressor = Misbehaving(how)
    gw, backend = _pipeline(compressor)
    assert stages.names(gw.stages) == ["resolve", "compress", "features", "plan"]
    assert isinstance(dict(gw.stages)["features"], stages.NotedFeatures)
    answer, rec = await gw.complete("chat", {"model": "m", "messages": LONG},
                                    RequestContext(request_id="r1"))
    assert compressor.calls == 1
    assert backend.got[-1]["messages"] == LONG
    assert answer["choices"][0]["message"]["content"]
    assert rec.compress == outcome and rec.compress_saved_tokens == 0
    assert rec.decision is not None and rec.decision["compress"]["reason"] == reason
    assert rec.headers()["x-switchyard-compress"] == f"{outcome}; {reason}"


# ---- configured, or not there at all ----------------------------------------------------


def test_without_compression_there_is_no_stage_and_plain_features(tmp_path: Path) -> None:
    from support import make_settings

    backends = [{"name": "echo", "plugin": "echo"}]
    routes = [{"name": "m", "backends": ["echo"], "compress": {"ratio": 4.0}}]  # not enabled
    off = build_parts(make_settings(tmp_path, backends=backends, routes=routes))
    assert "compress" not in stages.names(off.gateway.stages)
    assert type(dict(off.gateway.stages)["features"]) is stages.Features
    assert off.compress is None and off.built.compressor is None
    on_one_route = [{"name": "m", "backends": ["echo"], "compress": {"enabled": True}}]
    on = build_parts(make_settings(tmp_path, backends=backends, routes=on_one_route))
    assert "compress" in stages.names(on.gateway.stages)
    assert on.compress is not None and on.compress.routes == {"m": on.compress.routes["m"]}
    assert on.compress.top is None, "off at the top level: a backend named directly is not"


def test_a_bad_kind_or_option_or_a_second_compress_stage_stops_start_up(
        tmp_path: Path) -> None:
    from support import make_settings

    backends = [{"name": "echo", "plugin": "echo"}]
    with pytest.raises(ConfigError) as e:
        build_parts(make_settings(tmp_path, backends=backends,
                                  compress={"enabled": True, "kind": "zip"}))
    assert e.value.errors[0][0] == "compress.kind" and "question_aware" in e.value.errors[0][1]
    with pytest.raises(ConfigError) as e:
        build_parts(make_settings(tmp_path, backends=backends,
                                  compress={"enabled": True, "options": {"ratoi": 4}}))
    assert e.value.errors[0][0] == "compress.options" and "ratoi" in e.value.errors[0][1]

    class Stage:
        @hookimpl
        def switchyard_register_stages(self, register: Any) -> None:
            register("compress", lambda x: None)

    class Another:
        @hookimpl
        def switchyard_register_compressors(self, register: RegisterCompressor) -> None:
            register("question_aware", lambda options: Misbehaving("raise"))

    with pytest.raises(ConfigError) as e:
        build_parts(make_settings(tmp_path, backends=backends, compress={"enabled": True}),
                    extra_plugins=[Stage()])
    assert e.value.errors[0][0] == "compress.enabled"
    parts = build_parts(make_settings(tmp_path, backends=backends, compress={"enabled": True}),
                        extra_plugins=[Another()])
    assert isinstance(parts.built.compressor, Misbehaving), "a plugin overrides the built-in"


async def test_a_compressor_that_fails_its_warm_up_stops_start_up_with_its_name() -> None:
    cfg = CompressConfig(enabled=True)
    stage = Compress(Misbehaving("raise"), "broken", cfg, {}, {}, {})
    with pytest.raises(ConfigError) as e:
        await stage.start()
    assert e.value.errors == [("compress", ("the broken compressor failed its warm-up: "
                                           "RuntimeError: model file missing"))]


async def test_a_prompt_with_nothing_to_cut_counts_the_compressors_time_not_its_reach() -> None:
    """Else a run of code-only prompts would predict no saving for every later prompt, and
    a route would stop compressing for good (skipped prompts teach it nothing)."""
    from plugins.compress import make_compressor

    gw, backend = _pipeline(make_compressor({}))
    stage = dict(gw.stages)["compress"]
    assert isinstance(stage, Compress)
    stage.reach.kept, stage.reach.ms_per_token = 0.1, 1e-6
    code = [{"role": "user", "content": "Why?\n\n```python\n" + "x = 1\n" * 300 + "```"}]
    _, rec = await gw.complete("chat", {"model": "m", "messages": code},
                               RequestContext(request_id="r2"))
    assert rec.compress == "unchanged" and backend.got[-1]["messages"] == code
    assert stage.reach.kept == 0.1 and stage.reach.ms_per_token > 1e-6
