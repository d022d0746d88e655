"""What each request saved, by technique, written into its record as it is emitted (so the
report sums columns, never parses JSON per row; docs/report.md).

The baseline is what the application would have called without the gateway: the route's
``baseline:`` backend, else the first one it lists (a model name served by several
backends: the first of them; a backend named directly: itself).

- **routing**: the baseline's price for this request's own tokens (the busy time its
  prediction in ``decision["predictions"]`` gave, for a per-hour price), minus what the
  serving backend cost; the same for energy (the baseline's profile, else its predicted
  joules) and CO2 (its grid). Zero when the baseline served, or on a cascade's rows.
- **cache**: a hit saves what the stored call cost, minus what the hit was charged
  (``saved_*`` columns the cache writes; nothing computed here).
- **compression**: the tokens it removed at the serving backend's input price; their
  energy by its joules per token, else their share of the call's energy.
- **cascade**: against its strongest (last) stage: the answering row is credited the
  strongest stage's price for the answer's tokens, every row of the cascade (the
  answering one included) is debited what it spent, so the rows of one request sum to
  "strongest stage minus everything the cascade paid" (an escalation saves less than zero).

Savings are estimates (prices and profiles of calls that were not made), never measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.accounting import UsageRecord, co2_grams, profile_joules
from gateway.interfaces import Backend, Usage

HIT_PREFIX = "hit"  # the cache's outcomes of a hit: hit-exact, hit-semantic


@dataclass(frozen=True, slots=True)
class Estimate:
    cost_usd: float
    energy_j: float
    co2_g: float


@dataclass(slots=True)
class Savings:
    """``baselines``: each name a client may send -> its baseline backend; ``strongest``:
    a cascade route -> its last stage."""

    backends: Mapping[str, Backend]
    baselines: Mapping[str, str]
    strongest: Mapping[str, str]

    def fill(self, rec: UsageRecord) -> None:
        """Sets ``rec.baseline``, ``cascade_step``, ``judge_score`` and the ``saved_*`` of
        routing, compression and cascades (the cache's are the cache's)."""
        d = rec.decision or {}
        c = d.get("cascade")
        if c is not None:
            rec.cascade_step, rec.judge_score = c.get("step"), c.get("score")
            rec.baseline = self.strongest.get(c.get("route") or "") or rec.baseline
            self._cascade(rec, c, d)
            return
        rec.baseline = self.baselines.get(rec.requested)
        if rec.status != 200 or not rec.backend or (rec.cache or "").startswith(HIT_PREFIX):
            return
        if rec.compress_saved_tokens:
            self._compression(rec)
        if rec.baseline is not None and rec.baseline != rec.backend:
            est = self.estimate(rec.baseline, rec, d)
            if est is not None:
                rec.saved_routing_usd = est.cost_usd - rec.cost_usd
                rec.saved_routing_energy_j = est.energy_j - rec.energy_j
                rec.saved_routing_co2_g = est.co2_g - rec.co2_g

    def estimate(self, name: str, rec: UsageRecord, d: Mapping[str, Any]) -> Estimate | None:
        """What backend ``name`` would have cost for ``rec``'s tokens (None: not known)."""
        b = self.backends.get(name)
        if b is None:
            return None
        pred = (d.get("predictions") or {}).get(name) or {}
        busy_s = float(pred.get("total_s") or rec.latency_ms / 1000.0)
        usage = Usage(rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens)
        cost = b.cost_usd(usage, busy_s)
        prof = b.config.energy
        j = profile_joules(prof.joules_per_token, prof.watts_busy,
                           tokens=rec.prompt_tokens + rec.completion_tokens, busy_s=busy_s)
        energy = j if j is not None else float(pred.get("energy_j") or 0.0)
        return Estimate(cost, energy, co2_grams(energy, prof.grid_g_per_kwh))

    def _compression(self, rec: UsageRecord) -> None:
        b = self.backends.get(rec.backend or "")
        if b is None:
            return
        n = rec.compress_saved_tokens
        rec.saved_compress_usd = n * b.price_per_token()[0]
        prof = b.config.energy
        used = rec.prompt_tokens + rec.completion_tokens
        if prof.joules_per_token is not None:
            j = prof.joules_per_token * n
        else:  # their share of the call's energy, as if every token cost the same
            j = rec.energy_j * n / used if used else 0.0
        rec.saved_compress_energy_j = j
        rec.saved_compress_co2_g = co2_grams(j, prof.grid_g_per_kwh)

    def _cascade(self, rec: UsageRecord, c: Mapping[str, Any], d: Mapping[str, Any]) -> None:
        credit = Estimate(0.0, 0.0, 0.0)
        if c.get("answered") is not None and c.get("answered") == c.get("step"):
            est = self.estimate(rec.baseline, rec, d) if rec.baseline else None
            credit = est or credit
        rec.saved_cascade_usd = credit.cost_usd - rec.cost_usd
        rec.saved_cascade_energy_j = credit.energy_j - rec.energy_j
        rec.saved_cascade_co2_g = credit.co2_g - rec.co2_g


def baselines_of(targets: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> baseline backend, cascade route -> strongest stage) from the router's
    targets (``gateway.pipeline.routing.Target``)."""
    base: dict[str, str] = {}
    strong: dict[str, str] = {}
    for name, t in targets.items():
        base[name] = getattr(t, "baseline", None) or t.backends[0]
        if t.cascade is not None:
            strong[t.cascade.route] = t.cascade.stages[-1]
    return base, strong
