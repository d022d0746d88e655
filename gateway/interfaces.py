"""The Protocols and data types plugins implement and receive.

Backends do I/O; routing policies never do: a policy is a pure function of the request's
features, the candidates with their live statistics, and the constraints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.config import BackendConfig, Pricing

Endpoint = Literal["chat", "completions", "embeddings"]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage | None:
        if not usage:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out


@dataclass(slots=True)
class BackendCall:
    """One call to one backend. ``body`` is the client's OpenAI body with ``model`` set to
    the backend's own model name; unknown fields are kept and passed through."""

    endpoint: Endpoint
    body: dict[str, Any]
    request_id: str
    stream: bool = False


@dataclass(slots=True)
class Meter:
    """Filled in by a backend while it serves a call; read by accounting afterwards.
    For a stream, the backend sets ``usage`` when the backend reports it."""

    bytes_sent: int = 0
    bytes_received: int = 0
    usage: Usage | None = None
    energy_j: float | None = None  # measured energy, where the host allows it
    upstream_model: str | None = None


@dataclass(slots=True)
class BackendResult:
    body: dict[str, Any]
    usage: Usage


@dataclass(slots=True)
class BackendLoad:
    """What a backend tells about its load, read without I/O (scraped in the background)."""

    queue_depth: int = 0  # requests waiting at the backend (llama.cpp queue, vLLM waiting)
    running: int = 0
    kv_cache_usage: float | None = None  # 0..1
    ttft_s: float | None = None  # the engine's own recent time to first token
    scraped_at: float | None = None
    # the engine's own recent mean time a request runs once scheduled (vLLM's
    # request_inference_time): what each waiting request waits for, per running slot
    request_s: float | None = None


@runtime_checkable
class Backend(Protocol):
    """A place where a request can run. Subclass ``gateway.BaseBackend`` to get pricing,
    token counting and the rest of the defaults."""

    capabilities: frozenset[Endpoint]

    @property
    def config(self) -> BackendConfig:
        """The validated section (read-only here, so a backend may narrow it to its own
        ``BackendConfig`` subclass)."""
        ...

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult: ...

    def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]: ...

    async def probe(self) -> None:
        """Active health check: returns when healthy, raises otherwise."""
        ...

    def load(self) -> BackendLoad: ...

    def count_tokens(self, call: BackendCall) -> int: ...

    def cost_usd(self, usage: Usage, busy_s: float) -> float: ...

    def price_per_token(self) -> tuple[float, float]:
        """(input, output) dollars per token, for predictions before the call."""
        ...

    def pricing(self) -> Pricing:
        """The backend's prices: per million tokens and ``per_hour`` (the busy-time price
        routing adds to each prediction). ``BaseBackend`` returns ``config.pricing``."""
        ...


# ---- routing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    endpoint: Endpoint
    requested: str  # the model or route name the client asked for
    prompt_tokens: int
    max_tokens: int | None
    stream: bool = False
    latency_target: Literal["ttft", "total"] = "ttft"
    text: str = ""  # the prompt's text, for plan editors that look at content
    # the most prompt tokens any backend can bill (None: ``prompt_tokens``), for budget holds
    prompt_tokens_max: int | None = None
    choices: int = 1  # completions the call writes, each up to max_tokens (0: embeddings)


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A backend's live statistics, as the gateway sees them."""

    inflight: int = 0
    ttft_s: float | None = None  # moving estimate
    ttft_p95_s: float | None = None
    decode_tps: float | None = None  # completion tokens per second
    avg_completion_tokens: float | None = None
    error_rate: float = 0.0
    breaker: Literal["closed", "open", "half_open"] = "closed"
    load: BackendLoad = field(default_factory=BackendLoad)
    age_s: float | None = None  # seconds since the ttft/decode estimates were last updated
    oldest_inflight_s: float = 0.0  # how long the oldest request in flight has been running


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    model: str
    plugin: str
    input_usd_per_token: float
    output_usd_per_token: float
    per_hour_usd: float
    watts_busy: float | None
    joules_per_token: float | None
    grid_g_per_kwh: float
    context_window: int | None
    stats: BackendStats
    healthy: bool = True
    concurrency: int | None = None  # requests it serves at once (None: not known)
    drained: bool = False  # an operator took it out of service: never planned, not even last
    drained_reason: str = ""  # the operator's reason, for "out of service (drained: ...)"

    @classmethod
    def make(cls, name: str, **values: Any) -> Candidate:
        """A candidate for tests, with plain defaults: model ``name``, plugin ``"test"``,
        free (no token or hourly price), no energy profile, 400 gCO2/kWh, no context
        window, healthy, never observed (``BackendStats()``). Override any field of
        ``Candidate`` or of ``BackendStats`` by name (``ttft_s=0.2``, ``load=BackendLoad(
        queue_depth=3)``, ``healthy=False``), or pass ``stats=BackendStats(...)`` whole."""
        own = {f for f in cls.__dataclass_fields__ if f != "name"}
        stat_names = set(BackendStats.__dataclass_fields__)
        unknown = sorted(set(values) - own - stat_names)
        if unknown:
            raise TypeError(f"Candidate.make: unknown field(s) {unknown}; "
                            f"known: {sorted(own | stat_names)}")
        stat_values = {k: v for k, v in values.items() if k in stat_names}
        if stat_values and "stats" in values:
            raise TypeError("Candidate.make: pass stats=... or its fields, not both")
        fields_: dict[str, Any] = {
            "model": name, "plugin": "test", "input_usd_per_token": 0.0,
            "output_usd_per_token": 0.0, "per_hour_usd": 0.0, "watts_busy": None,
            "joules_per_token": None, "grid_g_per_kwh": 400.0, "context_window": None,
            "stats": BackendStats(**stat_values),
        }
        fields_.update((k, v) for k, v in values.items() if k in own)
        return cls(name=name, **fields_)


@dataclass(frozen=True, slots=True)
class Constraints:
    max_cost_usd: float | None = None
    ttft_slo_s: float | None = None  # p95 time to first token must stay under this
    allowed_backends: frozenset[str] | None = None
    allowed_models: frozenset[str] | None = None
    include_co2: bool = False
    allowed_policies: frozenset[str] | None = None  # policies a request may switch to


@dataclass(frozen=True, slots=True)
class Prediction:
    cost_usd: float
    ttft_s: float
    total_s: float
    energy_j: float
    co2_g: float


@dataclass(slots=True)
class Plan:
    """An ordered plan: first choice, then fallbacks. ``rejected`` says why each
    candidate left out was left out; ``predictions`` keeps what the policy estimated."""

    order: list[str]
    reason: str
    policy: str = ""
    predictions: dict[str, Prediction] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    # a sequence of backends to call one after the other, each a successful call with its
    # own record (a cascade); empty: one successful call along ``order``
    cascade: list[str] = field(default_factory=list)


class RoutingPolicy(Protocol):
    name: str

    def plan(
        self,
        request: RequestFeatures,
        candidates: Sequence[Candidate],
        constraints: Constraints,
    ) -> Plan: ...


class PlanEditor(Protocol):
    """Edits a plan after the policy made it (e.g. send prompts with code to the GPU)."""

    def __call__(
        self, request: RequestFeatures, candidates: Sequence[Candidate], plan: Plan
    ) -> Plan | None: ...


class Reservation(Protocol):
    """What ``Admission.reserve`` holds for one backend call (a budget's worst case);
    ``Admission.settle`` releases it with the real cost, once."""

    settled: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judge's decision on one answer: ``score`` (higher: better), ``accept`` whether it is
    good enough to send, ``threshold`` the bar it was held to (for the ledger)."""

    score: float
    accept: bool
    threshold: float | None = None


class Judge(Protocol):
    """Scores the answer of each stage of a cascade but the last; an answer it does not
    accept sends the request to the next stage. ``logprobs``: the gateway asks the judged
    calls for their tokens' log-probabilities (and strips them from the answer when the
    client did not ask for them). Built by a ``JudgeFactory`` from a route's
    ``cascade.judge_options``; ``verdict`` runs on the event loop: blocking work goes to a
    thread."""

    logprobs: bool

    async def verdict(
        self, request: RequestFeatures, answer: Mapping[str, Any], step: int
    ) -> Verdict: ...
