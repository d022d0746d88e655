"""Prometheus metrics, one CollectorRegistry per app (no process-global state).

Names follow ``switchyard_*``; the overhead histogram mirrors LiteLLM's and TensorZero's
overhead metrics so dashboards migrate easily. Label values are backend, model, route and
team names: never a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.accounting import UsageRecord

_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class LedgerStats(Protocol):
    @property
    def dropped(self) -> int: ...
    @property
    def buffered(self) -> int: ...


class _LedgerCollector:
    def __init__(self, ledger: LedgerStats) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("switchyard_ledger_dropped_records", "Ledger records "
                                  "dropped: the database was away and the buffer full",
                                  value=self.ledger.dropped)
        yield GaugeMetricFamily("switchyard_ledger_buffered_records",
                                "Ledger records waiting to be written", value=self.ledger.buffered)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        lbl = ["backend", "model", "route", "team"]
        self.requests = Counter("switchyard_requests", "Requests served", [*lbl, "status"], registry=r)
        self.tokens = Counter("switchyard_tokens", "Tokens", [*lbl, "kind"], registry=r)
        self.cost = Counter("switchyard_cost_usd", "Cost in US dollars", lbl, registry=r)
        self.energy = Counter("switchyard_energy_joules", "Energy in joules", lbl, registry=r)
        self.co2 = Counter("switchyard_co2_grams", "Grams of CO2e", lbl, registry=r)
        self.bytes = Counter("switchyard_backend_bytes", "Bytes to/from backends", ["backend", "direction"], registry=r)
        self.latency = Histogram("switchyard_request_latency_seconds", "Total latency", ["backend", "route"], buckets=_LAT_BUCKETS, registry=r)
        self.ttft = Histogram("switchyard_time_to_first_token_seconds", "Time to first token", ["backend", "route"], buckets=_LAT_BUCKETS, registry=r)
        self.overhead = Histogram("switchyard_overhead_latency_seconds", "Time spent in the gateway, not the backend", buckets=_OVERHEAD_BUCKETS, registry=r)
        self.inflight = Gauge("switchyard_backend_inflight", "Requests in flight per backend", ["backend"], registry=r)
        self.queue_depth = Gauge("switchyard_backend_queue_depth", "Requests waiting at the backend", ["backend"], registry=r)
        self.breaker = Gauge("switchyard_backend_breaker_open", "1 when the backend's circuit breaker is open", ["backend"], registry=r)
        self.budget_alerts = Counter("switchyard_budget_alerts", "Soft budget limits crossed", ["team"], registry=r)
        self.budget_overrun = Counter("switchyard_budget_overrun_usd", "Cost backends reported beyond a call's budget hold (not charged to the team)", ["backend"], registry=r)
        self.fallbacks = Counter("switchyard_fallbacks", "Requests moved to the next backend in the plan", ["backend", "reason"], registry=r)
        self._children: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def observe(self, rec: UsageRecord) -> None:
        backend = rec.backend or ""
        route = rec.route or ""
        key = (backend, rec.model or "", route, rec.team or "", rec.status)
        ch = self._children.get(key)
        if ch is None:
            lv = key[:4]
            ch = (
                self.requests.labels(*lv, str(rec.status)),
                self.tokens.labels(*lv, "prompt"),
                self.tokens.labels(*lv, "completion"),
                self.cost.labels(*lv),
                self.energy.labels(*lv),
                self.co2.labels(*lv),
                self.bytes.labels(backend, "sent"),
                self.bytes.labels(backend, "received"),
                self.latency.labels(backend, route),
                self.ttft.labels(backend, route),
            )
            self._children[key] = ch
        req, tp, tc, cost, energy, co2, bs, br, lat, ttft = ch
        req.inc()
        if rec.prompt_tokens:
            tp.inc(rec.prompt_tokens)
        if rec.completion_tokens:
            tc.inc(rec.completion_tokens)
        if rec.cost_usd:
            cost.inc(rec.cost_usd)
        if rec.energy_j:
            energy.inc(rec.energy_j)
            co2.inc(rec.co2_g)
        if rec.bytes_sent:
            bs.inc(rec.bytes_sent)
        if rec.bytes_received:
            br.inc(rec.bytes_received)
        lat.observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None:
            ttft.observe(rec.ttft_ms / 1000.0)

    def watch_ledger(self, ledger: LedgerStats) -> None:
        """``switchyard_ledger_dropped_records`` (given up while the database was away) and
        ``switchyard_ledger_buffered_records``, read from the ledger at each scrape."""
        self.registry.register(_LedgerCollector(ledger))

    def render(self) -> bytes:
        return generate_latest(self.registry)
