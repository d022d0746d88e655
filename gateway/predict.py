"""Predictions a routing policy decides on, and the hard constraints every policy honours.

Pure functions of data: a request's features and a candidate with its live statistics in,
a ``Prediction`` (cost, time to first token, total time, joules, grams of CO2) out. No I/O,
no clock: the statistics carry their own age.

- Cost: prompt tokens (counted by the backend's tokenizer before routing) times the input
  price, plus the expected completion tokens (``max_tokens``, or the backend's running
  average when that is smaller or no ``max_tokens`` was sent) times the output price, plus
  the per-hour price for the predicted busy time.
- Latency: the moving TTFT estimate for this prompt length, plus the wait behind what is in
  flight: past the backend's ``concurrency`` (its config, or the policy option ``slots``)
  by the gateway's own in-flight count; else what the engine reports (the llama.cpp queue
  and running request, vLLM's waiting requests, each waiting for the engine's recent mean
  request time per running slot, and KV-cache use); plus the lag of an
  in-flight request running past its expected time; plus decode time at the moving
  tokens/s estimate.
- Freshness: an estimate not refreshed for ``fresh_s`` seconds decays toward zero with a
  half-life of ``half_life_s`` (optimistic exploration), so a backend that lost traffic by
  being slow is tried again, and wins its traffic back once it answers fast.
- Energy: joules per token times tokens, or watts while busy times predicted busy time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.accounting import co2_grams, profile_joules
from gateway.errors import BackendUnavailable, InvalidRequest, PermissionDenied, SwitchyardError
from gateway.interfaces import Candidate, Constraints, Prediction, RequestFeatures


@dataclass(frozen=True, slots=True)
class PredictOptions:
    """Priors for backends not yet observed, and how fast estimates go stale."""

    default_ttft_s: float = 0.5
    default_decode_tps: float = 30.0
    default_completion_tokens: int = 256
    fresh_s: float = 2.0
    half_life_s: float = 10.0
    kv_penalty_s: float = 1.0  # extra TTFT at a full KV cache (batching engines)
    slots: Mapping[str, int] = field(default_factory=dict)  # overrides backend concurrency

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], *, accept: Iterable[str] = (), policy: str = ""
    ) -> PredictOptions:
        """Pick this class's keys out of a route's ``policy_options``.

        ``accept`` names the policy's own options (read by the policy itself). Any other key,
        or a value of the wrong type, raises ``ValueError`` naming the option and every
        known one: a typo in ``policy_options`` stops start-up instead of being ignored."""
        names = [f.name for f in fields(cls)]
        own = set(accept)
        unknown = sorted(k for k in options if k not in names and k not in own)
        who = f"policy {policy!r}: " if policy else ""
        if unknown:
            known = ", ".join(sorted(own | set(names)))
            raise ValueError(f"{who}unknown option(s) {', '.join(map(repr, unknown))} in "
                             f"policy_options (known: {known})")
        picked = {k: v for k, v in options.items() if k in names}
        for k, v in picked.items():
            if not _valid(k, v):
                raise ValueError(f"{who}policy option {k!r} must be "
                                 f"{_EXPECTED.get(k, 'a non-negative number')}, not {v!r}")
        return cls(**picked)


_POSITIVE = {"half_life_s", "default_decode_tps"}  # divisors
_EXPECTED = {"slots": "a mapping of backend name to a positive integer",
             **{k: "a positive number" for k in _POSITIVE}}


def _valid(key: str, value: Any) -> bool:
    if key == "slots":
        return isinstance(value, Mapping) and all(
            isinstance(n, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for n, v in value.items())
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return value > 0 if key in _POSITIVE else value >= 0


DEFAULT_OPTIONS = PredictOptions()


def expected_completion(request: RequestFeatures, c: Candidate, opts: PredictOptions) -> float:
    if request.endpoint == "embeddings":
        return 0.0
    avg = c.stats.avg_completion_tokens
    if request.max_tokens:
        return min(float(request.max_tokens), avg) if avg is not None else float(request.max_tokens)
    return avg if avg is not None else float(opts.default_completion_tokens)


def freshness(age_s: float | None, opts: PredictOptions) -> float:
    """1.0 for a fresh (or never observed) estimate, halving every ``half_life_s`` after
    ``fresh_s``."""
    if age_s is None or age_s <= opts.fresh_s:
        return 1.0
    return float(0.5 ** ((age_s - opts.fresh_s) / opts.half_life_s))


def estimate(
    request: RequestFeatures, c: Candidate, opts: PredictOptions = DEFAULT_OPTIONS
) -> Prediction:
    s = c.stats
    load = s.load
    f = freshness(s.age_s, opts)
    prior = load.ttft_s if load.ttft_s is not None else opts.default_ttft_s
    raw_ttft = s.ttft_s if s.ttft_s is not None else prior
    ttft = s.ttft_s * f if s.ttft_s is not None else prior
    tps = (s.decode_tps or opts.default_decode_tps) / f
    n_out = expected_completion(request, c, opts)
    decode_s = max(0.0, n_out - 1.0) / tps
    service_s = ttft + decode_s
    slots = opts.slots.get(c.name) or c.concurrency
    if load.kv_cache_usage is not None:  # a batching engine: only waiting requests queue
        # behind the running requests, which take the engine's recent mean when it says
        per_request = load.request_s if load.request_s is not None else service_s
        wait = load.queue_depth * per_request / max(1, load.running)
        wait += opts.kv_penalty_s * max(0.0, load.kv_cache_usage - 0.8) / 0.2
    elif slots:  # known capacity: what is in flight beyond it queues
        ahead = max(s.inflight, load.queue_depth + load.running)
        wait = max(0, ahead - slots + 1) * service_s / slots
    else:  # capacity not known: only what the engine says is queued or running
        wait = (load.queue_depth + load.running) * service_s
    lag = max(0.0, s.oldest_inflight_s - service_s)
    ttft_pred = ttft + wait + lag
    busy_s = raw_ttft + decode_s
    tokens = request.prompt_tokens + n_out
    cost = (request.prompt_tokens * c.input_usd_per_token + n_out * c.output_usd_per_token
            + c.per_hour_usd * busy_s / 3600.0)
    energy = profile_joules(c.joules_per_token, c.watts_busy, tokens=tokens, busy_s=busy_s) or 0.0
    return Prediction(
        cost_usd=cost,
        ttft_s=ttft_pred,
        total_s=ttft_pred + decode_s,
        energy_j=energy,
        co2_g=co2_grams(energy, c.grid_g_per_kwh),
    )


def p95_ttft(c: Candidate, pred: Prediction, opts: PredictOptions = DEFAULT_OPTIONS) -> float:
    """The predicted TTFT plus the spread the backend has shown."""
    s = c.stats
    if s.ttft_s is None or s.ttft_p95_s is None:
        return pred.ttft_s
    return pred.ttft_s + (s.ttft_p95_s - s.ttft_s) * freshness(s.age_s, opts)


def worst_cost(request: RequestFeatures, c: Candidate, pred: Prediction) -> float:
    """The cost if the backend writes all ``max_tokens``: what a cost cap must allow."""
    if not request.max_tokens:
        return pred.cost_usd
    n_out = expected_completion(request, c, DEFAULT_OPTIONS)
    return pred.cost_usd + max(0.0, request.max_tokens - n_out) * c.output_usd_per_token


# Why a candidate cannot take a request: the kind decides the status of "nothing fits".
HEALTH, PERMISSION, CONTEXT, COST, SLO = "health", "permission", "context", "cost", "slo"


def drained_reason(reason: str) -> str:
    """Why a drained backend is left out, in every plan and error."""
    return f"out of service (drained: {reason or 'no reason given'})"


def check(
    request: RequestFeatures, c: Candidate, constraints: Constraints, pred: Prediction,
    opts: PredictOptions = DEFAULT_OPTIONS,
) -> tuple[str, str] | None:
    """The first hard constraint ``c`` breaks, as (kind, reason); None when it fits."""
    if c.drained:
        return HEALTH, drained_reason(c.drained_reason)
    if not c.healthy:
        return HEALTH, ("out of service (circuit open)" if c.stats.breaker == "open"
                        else "out of service (failed its health check)")
    if constraints.allowed_backends is not None and c.name not in constraints.allowed_backends:
        return PERMISSION, "not allowed for your team"
    if constraints.allowed_models is not None and c.model not in constraints.allowed_models:
        return PERMISSION, f"model {c.model} not allowed for your team"
    if c.context_window is not None and request.endpoint != "embeddings":
        need = request.prompt_tokens + (request.max_tokens or 0)
        if need > c.context_window:
            return CONTEXT, (f"context window {c.context_window} tokens < {request.prompt_tokens} "
                             f"prompt + {request.max_tokens or 0} max_tokens")
    if constraints.max_cost_usd is not None:
        worst = worst_cost(request, c, pred)
        if worst > constraints.max_cost_usd:
            return COST, f"predicted cost ${worst:.6f} > max_cost_usd ${constraints.max_cost_usd:.6f}"
    if constraints.ttft_slo_s is not None:
        p95 = p95_ttft(c, pred, opts)
        if p95 > constraints.ttft_slo_s:
            return SLO, (f"predicted p95 time to first token {p95 * 1000:.0f} ms > "
                         f"SLO {constraints.ttft_slo_s * 1000:.0f} ms")
    return None


def evaluate(
    request: RequestFeatures, candidates: Sequence[Candidate], constraints: Constraints,
    opts: PredictOptions = DEFAULT_OPTIONS,
) -> tuple[list[tuple[Candidate, Prediction]], dict[str, Prediction], dict[str, str]]:
    """Predict every candidate and apply the hard constraints: (feasible candidates with
    their predictions, every candidate's prediction, reasons for those left out)."""
    feasible: list[tuple[Candidate, Prediction]] = []
    preds: dict[str, Prediction] = {}
    rejected: dict[str, str] = {}
    for c in candidates:
        p = estimate(request, c, opts)
        preds[c.name] = p
        why = check(request, c, constraints, p, opts)
        if why is None:
            feasible.append((c, p))
        else:
            rejected[c.name] = why[1]
    return feasible, preds, rejected


def nothing_fits(
    request: RequestFeatures, candidates: Sequence[Candidate], constraints: Constraints,
    rejected: Mapping[str, str],
) -> SwitchyardError:
    """The error for a plan with no backend, saying why for each: 503 while any reason may
    pass (health, latency), 403 when the team may use none, 400 when the request itself
    cannot fit (context window, cost cap)."""
    kinds: set[str] = set()
    reasons: dict[str, str] = {}
    for c in candidates:
        why = check(request, c, constraints, estimate(request, c))
        kind, reason = why if why is not None else ("policy", rejected.get(c.name, "left out by the policy"))
        kinds.add(kind)
        reasons[c.name] = rejected.get(c.name, reason)
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no backend is configured"
    msg = f"No backend can serve '{request.requested}' now ({detail})."
    if not kinds or kinds & {HEALTH, SLO, "policy"}:
        return BackendUnavailable(msg, retry_after=1)
    if kinds == {PERMISSION}:
        return PermissionDenied(msg, param="model")
    if COST in kinds:
        return InvalidRequest(msg, param="switchyard.max_cost_usd", code="cost_limit_exceeded")
    return InvalidRequest(msg, param="max_tokens", code="context_length_exceeded")
