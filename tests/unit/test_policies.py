"""The routing policies on plain values: predictions, hard constraints and their edges,
what a request may override, and the error a client gets when nothing fits."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway import (
    BackendLoad,
    BackendStats,
    Candidate,
    Constraints,
    InvalidRequest,
    PermissionDenied,
    Plan,
    PredictOptions,
    RequestFeatures,
    estimate,
)
from gateway.errors import BackendUnavailable
from gateway.pipeline.routing import Router, Target
from gateway.predict import nothing_fits
from gateway.registry import build_registry


def cand(name: str, *, pin: float = 0.0, pout: float = 0.0, per_hour: float = 0.0,
         watts: float | None = None, jpt: float | None = None, ctx: int | None = 4096,
         model: str = "m", plugin: str = "llamacpp", conc: int | None = None,
         **fields: Any) -> Candidate:
    """``Candidate.make`` (the authors' helper) with short names for the prices."""
    return Candidate.make(name, model=model, plugin=plugin, input_usd_per_token=pin,
                          output_usd_per_token=pout, per_hour_usd=per_hour, watts_busy=watts,
                          joules_per_token=jpt, context_window=ctx, concurrency=conc, **fields)


def req(prompt: int = 100, max_tokens: int | None = 50, **kw: Any) -> RequestFeatures:
    return RequestFeatures(endpoint=kw.pop("endpoint", "chat"), requested="auto",
                           prompt_tokens=prompt, max_tokens=max_tokens, **kw)


@pytest.fixture(scope="module")
def policies() -> dict[str, Any]:
    reg = build_registry()
    return {name: e.value for name, e in reg.policies.items()}


def make(policies: dict[str, Any], name: str, **options: Any) -> Any:
    return policies[name](options)


NONE = Constraints()

# ---- each policy picks by its own metric ----------------------------------------------


def test_cost_picks_the_cheapest_and_orders_the_rest_as_fallbacks(policies):
    cs = [cand("gpt", pin=10e-6, pout=30e-6), cand("mini", pin=0.15e-6, pout=0.6e-6),
          cand("mid", pin=1e-6, pout=2e-6)]
    plan = make(policies, "cost").plan(req(), cs, NONE)
    assert plan.order == ["mini", "mid", "gpt"]
    assert plan.policy == "cost" and plan.reason.startswith("cost: cheapest $")
    assert "next mid" in plan.reason


def test_cost_counts_per_hour_machines_by_predicted_busy_time(policies):
    # a $3/hour box that answers in ~1 s costs ~$0.00083: more than the token-priced API
    cs = [cand("box", per_hour=3.0, ttft_s=0.5, decode_tps=100.0, age_s=0.0),
          cand("api", pin=1e-6, pout=2e-6)]
    assert make(policies, "cost").plan(req(), cs, NONE).order == ["api", "box"]


def test_free_backends_tie_on_cost_and_the_faster_wins(policies):
    cs = [cand("slow", ttft_s=2.0, age_s=0.0), cand("fast", ttft_s=0.1, age_s=0.0)]
    assert make(policies, "cost").plan(req(), cs, NONE).order == ["fast", "slow"]


def test_latency_picks_the_lowest_predicted_ttft(policies):
    cs = [cand("a", ttft_s=0.8, age_s=0.0), cand("b", ttft_s=0.2, age_s=0.0)]
    plan = make(policies, "latency").plan(req(), cs, NONE)
    assert plan.order == ["b", "a"]
    assert "lowest ttft 200 ms" in plan.reason


def test_latency_target_total_weighs_decode_speed(policies):
    # quick first token but slow decode vs slower first token and fast decode
    cs = [cand("quick-start", ttft_s=0.1, decode_tps=10.0, age_s=0.0),
          cand("fast-decode", ttft_s=0.5, decode_tps=200.0, age_s=0.0)]
    lat = make(policies, "latency")
    assert lat.plan(req(max_tokens=100), cs, NONE).order[0] == "quick-start"
    assert lat.plan(req(max_tokens=100, latency_target="total"), cs, NONE).order[0] == "fast-decode"


def test_latency_counts_load_inflight_and_queue(policies):
    lat = make(policies, "latency")
    idle = cand("idle", ttft_s=0.3, decode_tps=50.0, age_s=0.0)
    # one request at a time and three in flight: the next waits for all three
    busy = cand("busy", ttft_s=0.1, decode_tps=50.0, age_s=0.0, inflight=3, conc=1)
    # capacity unknown, but the engine says four wait and one runs
    queued = cand("queued", ttft_s=0.1, decode_tps=50.0, age_s=0.0,
                  load=BackendLoad(queue_depth=4, running=1))
    assert lat.plan(req(), [busy, queued, idle], NONE).order == ["idle", "busy", "queued"]
    assert lat.plan(req(), [busy, replace(idle, stats=BackendStats(ttft_s=5.0, age_s=0.0))],
                    NONE).order[0] == "busy"
    # room for all in flight, or capacity unknown and nothing reported: no wait
    roomy = replace(busy, concurrency=8)
    unknown = replace(busy, concurrency=None)
    assert estimate(req(), roomy).ttft_s == estimate(req(), unknown).ttft_s == pytest.approx(0.1)
    assert lat.plan(req(), [roomy, idle], NONE).order[0] == "busy"
    # the policy option ``slots`` overrides the backend's own figure
    assert make(policies, "latency", slots={"busy": 8}).plan(req(), [busy, idle], NONE).order[0] == "busy"


def test_vllm_waiting_requests_and_full_kv_cache_push_ttft_up():
    r = req()
    base = {"ttft_s": 0.1, "decode_tps": 80.0, "age_s": 0.0}
    calm = estimate(r, cand("v", **base, load=BackendLoad(running=8, kv_cache_usage=0.3)))
    full = estimate(r, cand("v", **base, load=BackendLoad(running=8, kv_cache_usage=0.99)))
    waiting = estimate(r, cand("v", **base, load=BackendLoad(queue_depth=16, running=8,
                                                              kv_cache_usage=0.5)))
    # running requests do not queue a batching engine; waiting ones and a full cache do
    assert calm.ttft_s == pytest.approx(0.1)
    assert full.ttft_s > calm.ttft_s + 0.5
    assert waiting.ttft_s > calm.ttft_s + 0.5


def test_a_request_stuck_in_flight_makes_its_backend_look_slow(policies):
    lat = make(policies, "latency")
    cs = [cand("a", ttft_s=0.1, decode_tps=100.0, age_s=0.0, inflight=1, oldest_inflight_s=5.0,
               conc=4),
          cand("b", ttft_s=0.4, decode_tps=100.0, age_s=0.0)]
    assert lat.plan(req(), cs, NONE).order[0] == "b"


def test_stale_estimates_decay_so_a_slow_backend_is_tried_again(policies):
    lat = make(policies, "latency", fresh_s=1.0, half_life_s=2.0)
    fast = cand("fast", ttft_s=0.2, age_s=0.0)
    slow_now = cand("slow", ttft_s=3.0, age_s=0.5)
    slow_later = cand("slow", ttft_s=3.0, age_s=15.0)  # (15-1)/2 = 7 half-lives: 3 s -> 23 ms
    assert lat.plan(req(), [fast, slow_now], NONE).order[0] == "fast"
    assert lat.plan(req(), [fast, slow_later], NONE).order[0] == "slow"


def test_energy_picks_the_fewest_joules(policies):
    # 25 W for ~(0.5 + 49/30) s = ~53 J, against 0.05 J/token x 150 tokens = 7.5 J
    cs = [cand("cpu", watts=25.0), cand("frugal", jpt=0.05)]
    plan = make(policies, "energy").plan(req(), cs, NONE)
    assert plan.order == ["frugal", "cpu"]
    assert plan.predictions["frugal"].energy_j == pytest.approx(7.5)
    assert "fewest joules 7.50 J" in plan.reason


def test_energy_by_co2_follows_the_grid(policies):
    cs = [cand("coal", jpt=0.05, grid_g_per_kwh=800.0), cand("hydro", jpt=0.08, grid_g_per_kwh=20.0)]
    assert make(policies, "energy").plan(req(), cs, NONE).order[0] == "coal"
    assert make(policies, "energy", co2=True).plan(req(), cs, NONE).order[0] == "hydro"
    co2 = Constraints(include_co2=True)
    plan = make(policies, "energy").plan(req(), cs, co2)
    assert plan.order[0] == "hydro" and "gCO2" in plan.reason


def test_weighted_corner_cases_match_the_single_metric_policies(policies):
    cs = [cand("a", pin=5e-6, pout=5e-6, ttft_s=0.1, watts=300.0, age_s=0.0),
          cand("b", pin=1e-6, pout=1e-6, ttft_s=0.9, watts=50.0, age_s=0.0),
          cand("c", pin=0.5e-6, pout=0.5e-6, ttft_s=0.5, jpt=0.01, age_s=0.0)]
    for metric in ("cost", "latency", "energy"):
        w = make(policies, "weighted", weights={"cost": 0, "latency": 0, "energy": 0, metric: 1})
        assert w.plan(req(), cs, NONE).order == make(policies, metric).plan(req(), cs, NONE).order


def test_weighted_picks_a_compromise(policies):
    # a: fastest but dear; b: cheapest but slow; c: nearly as cheap and nearly as fast
    cs = [cand("a", pin=10e-6, pout=10e-6, ttft_s=0.10, age_s=0.0),
          cand("b", pin=0.1e-6, pout=0.1e-6, ttft_s=2.00, age_s=0.0),
          cand("c", pin=0.5e-6, pout=0.5e-6, ttft_s=0.25, age_s=0.0)]
    plan = make(policies, "weighted", weights={"cost": 1, "latency": 1, "energy": 0}).plan(req(), cs, NONE)
    assert plan.order[0] == "c"
    assert plan.reason.startswith("weighted: best weighted score")


def test_bad_options_are_refused_at_start_up(policies):
    with pytest.raises(ValueError, match="unknown option"):
        make(policies, "cost", half_lfe_s=3)
    with pytest.raises(ValueError, match="weights"):
        make(policies, "weighted", weights={"cost": 0, "latency": 0, "energy": 0})


# ---- hard constraints and their edges ---------------------------------------------------


def test_context_window_edge(policies):
    cost = make(policies, "cost")
    cs = [cand("small", ctx=150), cand("big", ctx=8192, pin=1e-6)]
    assert cost.plan(req(prompt=100, max_tokens=50), cs, NONE).order == ["small", "big"]  # exactly fits
    plan = cost.plan(req(prompt=100, max_tokens=51), cs, NONE)
    assert plan.order == ["big"]
    assert plan.rejected["small"] == "context window 150 tokens < 100 prompt + 51 max_tokens"
    assert set(plan.predictions) == {"small", "big"}  # every candidate's prediction is kept


def test_max_cost_edge_uses_the_worst_case_of_max_tokens(policies):
    # 100 prompt tokens at $1/Mtok + 50 completion tokens at $2/Mtok = $0.0002
    cs = [cand("api", pin=1e-6, pout=2e-6, avg_completion_tokens=5.0)]
    cost = make(policies, "cost")
    assert cost.plan(req(), cs, Constraints(max_cost_usd=0.0002)).order == ["api"]
    plan = cost.plan(req(), cs, Constraints(max_cost_usd=0.000199))
    assert plan.order == [] and "> max_cost_usd $0.000199" in plan.rejected["api"]
    # the expected cost (5 tokens on average) is what the prediction shows
    assert plan.predictions["api"].cost_usd == pytest.approx(0.00011)


def test_ttft_slo(policies):
    cs = [cand("steady", ttft_s=0.2, ttft_p95_s=0.3, age_s=0.0),
          cand("jittery", ttft_s=0.15, ttft_p95_s=0.9, age_s=0.0)]
    lat = make(policies, "latency")
    assert lat.plan(req(), cs, NONE).order == ["jittery", "steady"]
    plan = lat.plan(req(), cs, Constraints(ttft_slo_s=0.5))
    assert plan.order == ["steady"]
    assert plan.rejected["jittery"] == "predicted p95 time to first token 900 ms > SLO 500 ms"


def test_team_allowed_backends_and_models(policies):
    cs = [cand("a", model="gpt-4o"), cand("b", model="mini", pin=1e-6)]
    cost = make(policies, "cost")
    assert cost.plan(req(), cs, Constraints(allowed_backends=frozenset({"b"}))).order == ["b"]
    plan = cost.plan(req(), cs, Constraints(allowed_models=frozenset({"gpt-4o"})))
    assert plan.order == ["a"] and "not allowed" in plan.rejected["b"]


def test_out_of_service_backends_are_left_out_but_half_open_ones_may_probe(policies):
    cs = [cand("open", breaker="open", healthy=False), cand("probe", breaker="half_open", pin=1e-6),
          cand("sick", healthy=False)]
    plan = make(policies, "cost").plan(req(), cs, NONE)
    assert plan.order == ["probe"]
    assert plan.rejected == {"open": "out of service (circuit open)",
                             "sick": "out of service (failed its health check)"}


# ---- nothing fits: a clear error saying why ---------------------------------------------


def _nothing(policy: Any, r: RequestFeatures, cs: list[Candidate], con: Constraints) -> Exception:
    plan = policy.plan(r, cs, con)
    assert plan.order == []
    return nothing_fits(r, cs, con, plan.rejected)


def test_nothing_fits_the_context_window_is_a_400(policies):
    err = _nothing(make(policies, "cost"), req(prompt=4000, max_tokens=200), [cand("a", ctx=2048)], NONE)
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert err.code == "context_length_exceeded"
    assert "a: context window 2048 tokens < 4000 prompt + 200 max_tokens" in err.message


def test_nothing_under_the_cost_cap_is_a_400(policies):
    err = _nothing(make(policies, "cost"), req(), [cand("a", pin=1e-3)], Constraints(max_cost_usd=0.001))
    assert err.status == 400 and err.code == "cost_limit_exceeded"
    assert err.param == "switchyard.max_cost_usd"


def test_nothing_healthy_is_a_503_with_retry_after(policies):
    cs = [cand("a", healthy=False, breaker="open"), cand("b", ctx=10)]
    err = _nothing(make(policies, "latency"), req(), cs, NONE)
    assert isinstance(err, BackendUnavailable) and err.status == 503
    assert err.headers["retry-after"] == "1"
    assert "a: out of service (circuit open); b: context window 10 tokens" in err.message


def test_nothing_allowed_is_a_403(policies):
    err = _nothing(make(policies, "cost"), req(), [cand("a")], Constraints(allowed_backends=frozenset()))
    assert isinstance(err, PermissionDenied) and err.status == 403


# ---- the router: overrides within what the route and the team allow ----------------------


class _Backend:
    capabilities = frozenset({"chat"})

    def __init__(self, name: str, price: float) -> None:
        from gateway import BackendConfig

        self.config = BackendConfig(name=name, plugin="x", context_window=2048)
        self.name, self.model, self._price = name, name, price

    def price_per_token(self) -> tuple[float, float]:
        return self._price, self._price

    def pricing(self) -> Any:
        from gateway import Pricing

        return Pricing()

    def load(self) -> BackendLoad:
        return BackendLoad()


def _router(policies: dict[str, Any], allowed: frozenset[str] | None = None) -> tuple[Router, Target]:
    from gateway.telemetry import Tracker

    backends = {"cheap": _Backend("cheap", 1e-7), "dear": _Backend("dear", 1e-5)}
    target = Target("auto", "route", ("dear", "cheap"), "first_healthy", allowed)
    router = Router(backends=backends, trackers={n: Tracker() for n in backends},  # type: ignore[arg-type]
                    targets={"auto": target}, policies=_bare(policies), editors=[])
    return router, target


def _bare(policies: dict[str, Any]) -> dict[str, Any]:
    """Every policy that builds with no options, as start-up makes them for requests to name
    (``learned`` needs its model file: a request cannot name it bare)."""
    built = {}
    for name, factory in policies.items():
        try:
            built[name] = factory({})
        except ValueError:
            continue
    return built


def test_a_request_may_switch_policy_when_the_route_allows(policies):
    router, target = _router(policies)
    assert router.plan(target, req(), NONE)[0].order == ["dear", "cheap"]
    plan, _ = router.plan(target, req(), NONE, "cost")
    assert plan.order == ["cheap", "dear"] and plan.policy == "cost"


def test_first_healthy_plans_still_record_every_prediction(policies):
    router, target = _router(policies)
    plan, _ = router.plan(target, req(), NONE)
    assert set(plan.predictions) == {"dear", "cheap"}
    assert plan.predictions["dear"].cost_usd > plan.predictions["cheap"].cost_usd


def test_the_route_and_the_team_limit_overrides(policies):
    router, target = _router(policies, frozenset({"cost"}))
    with pytest.raises(PermissionDenied, match="not allowed for the route 'auto'") as e:
        router.plan(target, req(), NONE, "latency")
    assert e.value.code == "policy_not_allowed"
    router, target = _router(policies)
    with pytest.raises(PermissionDenied, match="not allowed for your team"):
        router.plan(target, req(), Constraints(allowed_policies=frozenset({"cost"})), "energy")
    with pytest.raises(InvalidRequest, match="Unknown routing policy 'fastest'"):
        router.plan(target, req(), NONE, "fastest")


def test_plan_editors_run_after_the_policy(policies):
    router, target = _router(policies)

    def reverse(request: RequestFeatures, candidates: Any, plan: Plan) -> Plan:
        return Plan(plan.order[::-1], "reversed", plan.policy, plan.predictions, plan.rejected)

    router.editors = [reverse]
    plan, _ = router.plan(target, req(), NONE, "cost")
    assert plan.order == ["dear", "cheap"] and plan.reason == "reversed"


# ---- the worked example package ------------------------------------------------------------


def test_the_example_package_is_discovered_through_its_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="switchyard") if ep.name == "code_router"]
    assert ep.dist is not None and ep.dist.name == "switchyard-code-router"
    reg = build_registry()
    assert reg.plan_editors["code_to_gpu"].source == "code_router"
    assert not reg.policies["cheapest_fast"].builtin


def test_the_example_editor_sends_code_to_the_gpu_backend(policies):
    from switchyard_code_router import code_to_gpu

    cs = [cand("cpu", pin=1e-7), cand("gpu-a100", pin=1e-5), cand("vl", plugin="vllm", pin=2e-5)]
    plan = make(policies, "cost").plan(req(), cs, NONE)
    assert plan.order == ["cpu", "gpu-a100", "vl"]
    assert code_to_gpu(req(text="What is the capital of France?"), cs, plan) is None
    edited = code_to_gpu(req(text="Why does this fail?\n```python\nprint(1/0)\n```"), cs, plan)
    assert edited is not None and edited.order == ["gpu-a100", "vl", "cpu"]
    assert edited.reason.startswith("code in prompt: GPU backend first")


def test_the_example_policy(policies):
    p = policies["cheapest_fast"]({"slack": 2.0})
    cs = [cand("fast-dear", pin=1e-5, ttft_s=0.1, age_s=0.0),
          cand("ok-cheap", pin=1e-6, ttft_s=0.18, age_s=0.0),
          cand("slow-free", ttft_s=2.0, age_s=0.0)]
    assert p.plan(req(), cs, NONE).order == ["ok-cheap", "fast-dear", "slow-free"]


def test_predict_options_come_from_the_route_options():
    o = PredictOptions.from_options({"fresh_s": 1, "weights": {"cost": 1}, "slots": {"a": 4}},
                                    accept={"weights"})
    assert o.fresh_s == 1 and o.slots == {"a": 4}


def test_an_unknown_or_mistyped_policy_option_is_reported_not_dropped(policies):
    with pytest.raises(ValueError) as e:
        PredictOptions.from_options({"fresh": 1, "slack": 2}, accept={"slack"}, policy="mine")
    msg = str(e.value)
    assert msg.startswith("policy 'mine': unknown option(s) 'fresh' in policy_options")
    assert "fresh_s" in msg and "slack" in msg, "the known options are listed"
    with pytest.raises(ValueError, match="'half_life_s' must be a positive number, not 0"):
        PredictOptions.from_options({"half_life_s": 0})
    with pytest.raises(ValueError, match="'slots' must be a mapping"):
        PredictOptions.from_options({"slots": 4})
    for name, options in (("latency", {"fresh": 1.0}), ("cheapest_fast", {"slak": 2}),
                          ("first_healthy", {"slots": {"a": 1}})):
        with pytest.raises(ValueError, match=name):
            make(policies, name, **options)


def test_candidate_make_builds_a_test_candidate_from_plain_values():
    c = Candidate.make("gpu", ttft_s=0.2, load=BackendLoad(queue_depth=3), per_hour_usd=2.0)
    assert (c.name, c.model, c.healthy, c.drained) == ("gpu", "gpu", True, False)
    assert c.stats.ttft_s == 0.2 and c.stats.load.queue_depth == 3 and c.per_hour_usd == 2.0
    assert estimate(req(), c).cost_usd > 0, "a plain candidate goes through the predictions"
    with pytest.raises(TypeError, match="unknown field.*'pin'"):
        Candidate.make("x", pin=1.0)


# ---- drained backends (an operator's choice) ------------------------------------------------


def test_every_policy_leaves_a_drained_backend_out_entirely(policies):
    cs = [cand("first", ttft_s=0.1, age_s=0.0), cand("broken", healthy=False),
          replace(cand("second", ttft_s=0.2, age_s=0.0), healthy=False, drained=True,
                  drained_reason="disk swap")]
    fh = make(policies, "first_healthy").plan(req(), cs, NONE)
    assert fh.order == ["first", "broken"], "unhealthy is tried last, drained never"
    assert fh.rejected == {"second": "out of service (drained: disk swap)"}
    for name in ("cost", "latency", "energy", "weighted"):
        plan = make(policies, name).plan(req(), cs, NONE)
        assert plan.order == ["first"], name
        assert plan.rejected["second"] == "out of service (drained: disk swap)", name


def test_when_every_backend_is_drained_the_error_says_so(policies):
    cs = [replace(cand(n), healthy=False, drained=True, drained_reason="" if n == "b" else "upgrade")
          for n in ("a", "b")]
    plan = make(policies, "first_healthy").plan(req(), cs, NONE)
    assert plan.order == []
    err = nothing_fits(req(), cs, NONE, plan.rejected)
    assert isinstance(err, BackendUnavailable) and err.status == 503
    assert "a: out of service (drained: upgrade)" in err.message
    assert "b: out of service (drained: no reason given)" in err.message


def test_the_router_drops_a_drained_backend_whatever_the_policy_or_editor(policies):
    router, target = _router(policies)
    router.trackers["dear"].drained = ("ops", "maintenance", 0.0)  # type: ignore[attr-defined]

    def put_it_back(request: RequestFeatures, candidates: Any, plan: Plan) -> Plan:
        return Plan(["dear", *plan.order], "editor", plan.policy, plan.predictions, plan.rejected)

    router.editors = [put_it_back]
    plan, cands = router.plan(target, req(), NONE)
    assert plan.order == ["cheap"]
    assert plan.rejected["dear"] == "out of service (drained: maintenance)"
    assert [c.name for c in cands if c.drained] == ["dear"]
    router.trackers["dear"].drained = None  # type: ignore[attr-defined]
    router.editors = []
    assert router.plan(target, req(), NONE)[0].order == ["dear", "cheap"]
