"""Per-request accounting: one UsageRecord per request, as headers, ledger row and metrics.

Energy comes from the backend's profile (watts while busy, or joules per token) unless the
backend measured it; CO2 is energy times the backend's grid intensity.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config import EnergyProfile

JOULES_PER_KWH = 3_600_000.0
_SERVED = frozenset({"accepted", "answered", "unjudged"})  # cascade outcomes of a served step


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    endpoint: str
    requested: str  # the model or route the client named
    route: str | None = None
    backend: str | None = None
    model: str | None = None
    team: str | None = None
    key_id: str | None = None
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    energy_j: float = 0.0
    energy_source: str = "profile"
    co2_g: float = 0.0
    bytes_sent: int = 0  # to the backend
    bytes_received: int = 0  # from the backend
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    attempts: int = 0
    reason: str = ""  # why this backend was chosen
    decision: dict[str, Any] | None = None  # every candidate's predictions
    started_at: float = field(default_factory=time.time)
    # the response cache (docs/cache.md): hit-exact | hit-semantic | miss | bypass (None: no
    # cache on this request's route); a hit's entry, its similarity, and what the call that
    # stored the entry cost (what the hit saved)
    cache: str | None = None
    cache_entry: str | None = None
    cache_similarity: float | None = None
    saved_cost_usd: float = 0.0
    saved_energy_j: float = 0.0
    saved_co2_g: float = 0.0
    saved_bytes: int = 0
    # prompt compression (docs/compression.md): compressed | skipped | unchanged | failed
    # (None: no compression on this request's route; the why is in ``decision["compress"]``);
    # the prompt tokens it removed (the gateway's count), the message bytes not sent, and the
    # time the request waited for the compressor
    compress: str | None = None
    compress_saved_tokens: int = 0
    compress_saved_bytes: int = 0
    compress_ms: float | None = None
    # savings (docs/report.md; ``gateway.savings`` fills them as the record is emitted): the
    # baseline backend, what routing, compression and a cascade saved against it, a cascade
    # row's step and its judge's score
    baseline: str | None = None
    saved_routing_usd: float = 0.0
    saved_routing_energy_j: float = 0.0
    saved_routing_co2_g: float = 0.0
    saved_compress_usd: float = 0.0
    saved_compress_energy_j: float = 0.0
    saved_compress_co2_g: float = 0.0
    saved_cascade_usd: float = 0.0
    saved_cascade_energy_j: float = 0.0
    saved_cascade_co2_g: float = 0.0
    cascade_step: int | None = None
    judge_score: float | None = None

    @property
    def prompt_tokens_original(self) -> int | None:
        """The prompt's tokens before compression: the billed count plus what compression
        removed (None: no compression on this route, or nothing billed)."""
        if self.compress is None or not self.prompt_tokens:
            return None
        return self.prompt_tokens + self.compress_saved_tokens

    def as_row(self) -> dict[str, Any]:
        return asdict(self)

    def headers(self) -> dict[str, str]:
        h = {
            "x-switchyard-request-id": self.request_id,
            "x-switchyard-backend": self.backend or "",
            "x-switchyard-model": self.model or "",
            "x-switchyard-prompt-tokens": str(self.prompt_tokens),
            "x-switchyard-completion-tokens": str(self.completion_tokens),
            "x-switchyard-cost-usd": f"{self.cost_usd:.8f}",
            "x-switchyard-energy-joules": f"{self.energy_j:.4f}",
            "x-switchyard-co2-grams": f"{self.co2_g:.6f}",
            "x-switchyard-bytes-sent": str(self.bytes_sent),
            "x-switchyard-bytes-received": str(self.bytes_received),
            "x-switchyard-latency-ms": f"{self.latency_ms:.2f}",
        }
        if self.ttft_ms is not None:
            h["x-switchyard-ttft-ms"] = f"{self.ttft_ms:.2f}"
        if self.cache is not None:
            h.update(self.cache_headers())
        if self.compress is not None:
            h.update(self.compress_headers())
        if self.backend:
            h["x-switchyard-route"] = f"{self.backend}; {self.reason}" if self.reason else self.backend
        if self.decision is not None and "cascade" in self.decision:
            h["x-switchyard-cascade"] = self.cascade_header()
        return h

    def cascade_header(self) -> str:
        """``x-switchyard-cascade``: the stages tried, in order (docs/cascades.md), from the
        answering call's ``decision["cascade"]["tried"]``; empty when there is none."""
        c = (self.decision or {}).get("cascade") or {}
        out = []
        for t in c.get("tried") or ():
            part = t["backend"]
            if t.get("score") is not None:
                part += f";score={t['score']:.4f}"
            part += f";{t['outcome']}"
            if t["step"] == c.get("answered") and t["outcome"] not in _SERVED:
                part += ";answered"
            out.append(part)
        return ", ".join(out)

    def compress_headers(self) -> dict[str, str]:
        """``x-switchyard-compress`` (the outcome; why, when it was not compressed) and
        ``x-switchyard-prompt-tokens-original`` beside ``x-switchyard-prompt-tokens``."""
        why = ((self.decision or {}).get("compress") or {}).get("reason")
        h = {"x-switchyard-compress": f"{self.compress}; {why}" if why else self.compress or ""}
        original = self.prompt_tokens_original
        if original is not None:
            h["x-switchyard-prompt-tokens-original"] = str(original)
        return h

    def cache_headers(self) -> dict[str, str]:
        h = {"x-switchyard-cache": self.cache or ""}
        if self.cache_similarity is not None:
            h["x-switchyard-cache-similarity"] = f"{self.cache_similarity:.4f}"
        if self.cache_entry is not None:
            h["x-switchyard-cache-entry"] = self.cache_entry
        why = ((self.decision or {}).get("cache") or {}).get("reason")
        if why and self.cache in ("miss", "bypass"):
            h["x-switchyard-cache-reason"] = why
        return h


def energy_joules(
    profile: EnergyProfile, *, busy_s: float, tokens: int, measured_j: float | None
) -> tuple[float, str]:
    """Joules for one request and where the figure came from."""
    if measured_j is not None:
        return measured_j, profile.measure
    j = profile_joules(profile.joules_per_token, profile.watts_busy, tokens=tokens, busy_s=busy_s)
    return (0.0, "none") if j is None else (j, "profile")


def profile_joules(joules_per_token: float | None, watts_busy: float | None, *, tokens: float,
                   busy_s: float) -> float | None:
    """Joules by an energy profile: per token where it gives that, else watts while busy
    (None: the profile gives neither). Accounting and routing's predictions both use it."""
    if joules_per_token is not None:
        return joules_per_token * tokens
    if watts_busy is not None:
        return watts_busy * busy_s
    return None


def co2_grams(energy_j: float, grid_g_per_kwh: float) -> float:
    return energy_j / JOULES_PER_KWH * grid_g_per_kwh
