"""Settings: one pydantic-settings model, a YAML file plus ``SWITCHYARD_*`` overrides.

``load_settings(path)`` is exactly the start-up validation that ``switchyard check-config``
runs. Every problem is collected and reported at once, each with the path of the bad key.
Plugin-specific backend options are validated later, against the model each plugin
registered (see ``gateway.registry``), and reported the same way. Secrets (``admin_key``,
``state.url``, a backend's ``api_key``) are ``SecretStr``: no message ever shows them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(key|secret|token|password)", re.IGNORECASE)
Errors = list[tuple[str, str]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pricing(Strict):
    """Dollars per million tokens, or per hour the machine is busy serving."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    per_hour: float = Field(0.0, ge=0)


class EnergyProfile(Strict):
    """How a backend's energy is known: a profile (watts while busy, or joules per token),
    or a measurement where the host allows one (``nvml`` on a GPU host, ``rapl`` on a CPU)."""

    watts_busy: float | None = Field(None, ge=0)
    joules_per_token: float | None = Field(None, ge=0)
    measure: Literal["profile", "nvml", "rapl"] = "profile"
    device: int = Field(0, ge=0, description="the GPU index NVML reads (measure: nvml)")
    rapl_path: str = Field(
        "/sys/class/powercap/intel-rapl:[0-9]*",
        description="glob of the RAPL package domains (measure: rapl)",
    )
    grid_g_per_kwh: float = Field(400.0, ge=0, description="grams CO2e per kWh at this backend")


class Timeouts(Strict):
    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(60.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class BreakerSettings(Strict):
    """Circuit breaker: open after ``failure_threshold`` consecutive failures; after
    ``open_s`` let one request probe (half open); close on its success."""

    failure_threshold: int = Field(3, ge=1)
    open_s: float = Field(5.0, gt=0)


class RetrySettings(Strict):
    """Retries of a retryable failure on the same backend (with exponential backoff and
    jitter), then the next backend in the plan; at most ``max_attempts`` calls in all."""

    retries: int = Field(1, ge=0, description="extra tries on the same backend")
    backoff_s: float = Field(0.05, ge=0)
    max_backoff_s: float = Field(1.0, ge=0)
    max_attempts: int = Field(4, ge=1)
    retry_on: list[str] = Field(
        default_factory=lambda: ["backend_error", "backend_unavailable"],
        description="error codes worth retrying on the same backend",
    )


class HealthConfig(Strict):
    probe_interval_s: float = Field(5.0, gt=0, description="active health checks")
    share_interval_s: float = Field(
        1.0, gt=0, description="how often a replica publishes and reads backend health marks")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)


class BackendConfig(BaseModel):
    """Fields every backend has. A plugin subclasses this with its own options;
    the section is validated against the plugin's model, so a typo is an error."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/@-]+$")
    plugin: str
    model: str | None = None
    pricing: Pricing | None = None
    energy: EnergyProfile = Field(default_factory=EnergyProfile)
    context_window: int | None = Field(None, gt=0)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    breaker: BreakerSettings | None = None  # default: health.breaker
    concurrency: int | None = Field(
        None, ge=1, description="requests the backend serves at once, for latency predictions"
    )
    enabled: bool = True


class RawBackend(BaseModel):
    """A backend section before its plugin is known: common keys checked, the rest kept."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    plugin: str = Field(min_length=1)

    def __repr_args__(self) -> Any:
        # The plugin's model turns secrets into SecretStr; until then, never show them.
        for key, value in super().__repr_args__():
            yield key, ("**********" if key and _SECRET_KEY.search(key) and value else value)


CacheMode = Literal["on", "off", "read_only", "refresh", "no_store"]


class CacheRules(Strict):
    """What a route may change of the top-level ``cache`` section (unset: the top level's)."""

    enabled: bool | None = None
    mode: CacheMode | None = None
    semantic: bool | None = None
    threshold: float | None = Field(None, ge=0, le=1)
    ttl_s: float | None = Field(None, gt=0)
    namespace: Literal["team", "key"] | None = None
    max_temperature: float | None = Field(None, ge=0, le=2)
    max_turns: int | None = Field(None, ge=1)
    hit_cost_fraction: float | None = Field(None, ge=0, le=1)


class CacheConfig(Strict):
    """The response cache (docs/cache.md): off unless ``enabled`` (here, or on a route)."""

    enabled: bool = False
    kind: str = Field("semantic", min_length=1, description="the registered cache to use")
    mode: CacheMode = "on"
    semantic: bool = Field(True, description="the semantic tier (the exact tier is always on)")
    threshold: float | None = Field(None, ge=0, le=1, description="unset: the shipped decision's")
    ttl_s: float = Field(86400.0, gt=0)
    namespace: Literal["team", "key"] = "team"
    max_temperature: float = Field(0.0, ge=0, le=2, description="answers above it are not stored")
    max_turns: int = Field(8, ge=1, description="user turns; longer conversations are not stored")
    hit_cost_fraction: float = Field(0.0, ge=0, le=1, description="a hit costs this share")
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="all entries' answers")
    max_entry_bytes: int = Field(256 * 1024, ge=256, description="a larger answer is not stored")
    prefix: str = Field("cache:", description="Redis keys: state.prefix + this")
    options: dict[str, Any] = Field(default_factory=dict, description="the cache plugin's own")

    def for_route(self, rules: CacheRules | None) -> CacheConfig:
        """The settings a route's requests get: this section with the route's changes."""
        if rules is None:
            return self
        return self.model_copy(update=rules.model_dump(exclude_none=True))


CompressWhen = Literal["pays", "always"]


class CompressRules(Strict):
    """What a route may change of the top-level ``compress`` section (unset: the top
    level's)."""

    enabled: bool | None = None
    ratio: float | None = Field(None, gt=1)
    token_budget: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    when: CompressWhen | None = None
    value_of_time_usd_per_hour: float | None = Field(None, ge=0)
    prefill_tokens_per_s: float | None = Field(None, gt=0)


class CompressConfig(Strict):
    """Prompt compression (docs/compression.md): off unless ``enabled`` (here, or on a
    route). ``ratio`` or ``token_budget`` is the target (unset: the compressor's own);
    nothing happens below ``min_tokens``; ``when: pays`` compresses only where the
    predicted saving beats the compressor's measured cost."""

    enabled: bool = False
    kind: str = Field("question_aware", min_length=1,
                      description="the registered compressor to use")
    ratio: float | None = Field(None, gt=1, description="tokens in over tokens out")
    token_budget: int | None = Field(None, ge=1, description="tokens the prompt may keep")
    min_tokens: int = Field(500, ge=0, description="shorter prompts are sent as they are")
    when: CompressWhen = Field("pays", description="pays: only where the saving beats the cost")
    value_of_time_usd_per_hour: float = Field(
        10.0, ge=0, description="what an hour of waiting is worth: prices the compressor's "
        "time and the prefill time saved")
    prefill_tokens_per_s: float | None = Field(
        None, gt=0, description="the first backend's prefill speed; unset: from its measured "
        "time to first token")
    options: dict[str, Any] = Field(default_factory=dict, description="the compressor's own")

    def for_route(self, rules: CompressRules | None) -> CompressConfig:
        """The settings a route's requests get: this section with the route's changes (a
        route that sets ``ratio`` or ``token_budget`` replaces both: one target)."""
        if rules is None:
            return self
        update = rules.model_dump(exclude_none=True)
        if "ratio" in update or "token_budget" in update:
            update = {"ratio": None, "token_budget": None, **update}
        return self.model_copy(update=update)


class CascadeConfig(Strict):
    """A route's cascade (docs/cascades.md): its stages run cheapest first until the judge
    accepts an answer; every stage is a reserved, settled and recorded call."""

    stages: list[str] = Field(min_length=2, description="backend names, cheapest first")
    judge: str = Field("logprob", min_length=1, description="a registered judge's name")
    judge_options: dict[str, Any] = Field(default_factory=dict)
    on_budget: Literal["first_answer", "error"] = Field(
        "first_answer", description="no budget for the next stage: the answer already paid "
        "for, or 429")
    stream_first_unjudged: bool = Field(
        False, description="a stream streams the first stage live, unjudged")
    learn: bool = Field(False, description="the ledger keeps each prompt's first 2,000 chars")

    @model_validator(mode="after")
    def _distinct(self) -> CascadeConfig:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("a backend appears twice in cascade.stages")
        return self


class RouteConfig(Strict):
    name: str = Field(min_length=1)
    backends: list[str] = Field(min_length=1)
    policy: str = "first_healthy"
    policy_options: dict[str, Any] = Field(default_factory=dict)
    allowed_policies: list[str] | None = Field(
        None, description="policies a request may switch to (None: any)"
    )
    cascade: CascadeConfig | None = None
    baseline: str | None = Field(
        None, min_length=1, description="the backend the application would call without the "
        "gateway, what the savings report compares with (unset: the first in backends)")

    @model_validator(mode="before")
    @classmethod
    def _backends_of_cascade(cls, data: Any) -> Any:
        """A route with a cascade may leave ``backends`` out: they are its stages."""
        if isinstance(data, dict) and "backends" not in data:
            stages = (data.get("cascade") or {}).get("stages") if isinstance(
                data.get("cascade"), dict) else None
            if isinstance(stages, list):
                return {**data, "backends": stages}
        return data

    @model_validator(mode="after")
    def _baseline_listed(self) -> RouteConfig:
        if self.baseline is not None and self.baseline not in self.backends:
            raise ValueError(f"baseline {self.baseline!r} is not one of the route's backends")
        return self
    cache: CacheRules | None = None
    compress: CompressRules | None = None


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    request_id_header: str = "x-request-id"
    # what uvicorn does not limit (gateway.http.server): a larger head gets 431, a late one 408
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="request line's URL plus every header name and value")
    max_headers: int = Field(100, ge=1, description="headers in one request")
    header_timeout_s: float = Field(
        10.0, gt=0, description="time to send a request's headers (on a new connection, "
        "from its opening)")
    body_timeout_s: float = Field(
        60.0, gt=0, description="time to send the whole body, once the headers are in")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed")
    max_connections: int | None = Field(
        None, ge=1, description="open connections or requests in flight; past it, 503")
    workers: int = Field(
        1, ge=1, le=256, description="worker processes serving the port, each with its own "
        "event loop (docs/scaling.md); more than one needs shared state (state.kind sqlite "
        "or redis)")


class LedgerConfig(Strict):
    """Where every request's record goes (docs/ledger.md): ``sqlite`` (one file per
    replica), ``postgres`` (one database for many replicas), ``none``, or a plugin's."""

    kind: str = Field("sqlite", min_length=1,
                      description="sqlite, postgres, none, or a plugin's ledger")
    path: str = "~/.local/state/switchyard/ledger.sqlite3"
    url: SecretStr | None = Field(
        None, description="the database (postgres: postgresql://user:pass@host:5432/db)")
    flush_interval_s: float = Field(0.25, gt=0)
    buffer_max: int = Field(
        100_000, ge=1, description="records held while the database is away; past it new "
        "ones are dropped (counted in switchyard_ledger_dropped_records), never a failed request")
    connect_timeout_s: float = Field(5.0, gt=0, description="opening a database connection")


class StateConfig(Strict):
    kind: str = Field("memory", min_length=1,
                      description="memory, sqlite (the workers of one host), redis, or a plugin's")
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    path: str = Field("~/.local/state/switchyard/state.sqlite3", description="sqlite: the file")
    prefix: str = "switchyard:"
    failure_mode: Literal["closed", "open"] = "closed"
    connect_timeout_s: float = Field(
        2.0, gt=0, description="opening a Redis connection: past it, Redis counts as unreachable")
    timeout_s: float = Field(
        2.0, gt=0, description="one Redis command, and the wait for a free pooled connection; "
        "sqlite: the wait for the file's write lock")


class BudgetsConfig(Strict):
    """Budget enforcement (teams and keys live in the state store, see ``switchyard teams``)."""

    default_max_tokens: int = Field(
        4096, gt=0, description="completion tokens reserved when a request sets no max_tokens "
        "and its backend's context window is not known")
    reservation_ttl_s: float = Field(
        900.0, gt=0, description="a hold not settled by then (its replica died) is released")
    key_cache_ttl_s: float = Field(
        2.0, ge=0, description="how long a replica trusts a verified key or team record")
    reconcile_interval_s: float = Field(
        1.0, gt=0, description="retry pending settlements this often while Redis is away")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: list[RawBackend] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    default_route: str = "auto"
    state: StateConfig = Field(default_factory=StateConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    admin_key: SecretStr | None = Field(None, min_length=1, description="unset: no admin API")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    plugins: list[str] = Field(default_factory=list, description="extra plugin modules to load")
    disable_plugins: list[str] = Field(default_factory=list)
    plugin_text_chars: int = Field(
        8192, ge=0, description="how much of the prompt's text policies and plan editors see")
    embedded_default: bool = Field(True, description="no backends configured: serve SmolLM2 + MiniLM")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the YAML file (passed as init kwargs).
        return env_settings, init_settings


EMBEDDED_BACKENDS: list[dict[str, Any]] = [
    {"name": "local-smol", "plugin": "llamacpp"},
    {"name": "minilm", "plugin": "sentence_transformers"},
]


def apply_embedded_default(settings: Settings) -> Settings:
    """With no backends configured, serve the embedded default: SmolLM2 and MiniLM."""
    if settings.backends or not settings.embedded_default:
        return settings
    backends = [RawBackend(**b) for b in EMBEDDED_BACKENDS]
    routes = settings.routes or [RouteConfig(name=settings.default_route, backends=["local-smol"])]
    return settings.model_copy(update={"backends": backends, "routes": routes})


def _substitute(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            value = os.environ.get(var)
            if default is not None and not value:  # as in the shell: unset or empty
                return default
            if value is not None:
                return value
            errors.append((path, f"environment variable {var} is not set"))
            return ""

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def validation_errors(exc: ValidationError, prefix: str = "") -> Errors:
    result: Errors = []
    for err in exc.errors():
        loc = format_loc(tuple(err["loc"]))
        if prefix:
            loc = prefix + ("" if loc.startswith("[") else ".") + loc if loc != "(root)" else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and err["loc"]:
            msg = f"unknown key {err['loc'][-1]!r} (misspelled?)"
        result.append((loc, msg))
    return result


def _read_yaml(path: str | Path, errors: Errors) -> dict[str, Any]:
    p = Path(path)
    try:
        loaded = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError([(str(p), f"cannot read: {e.strerror}")]) from None
    except yaml.YAMLError as e:
        # str(e) quotes the offending line, which may hold a secret: give its position only.
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError([(str(p), f"not valid YAML{where}: {problem}")]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([(str(p), "the top level must be a mapping")])
    return dict(_substitute(loaded, "", errors))


def _names(items: Any, key: str) -> list[Any]:
    if not isinstance(items, list):
        return []
    return [item.get(key) if isinstance(item, dict) else None for item in items]


def _duplicates(names: list[Any], section: str, what: str) -> Errors:
    first: dict[str, int] = {}
    errors: Errors = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in first:
            msg = f"{what} name {name!r} is used more than once (also {section}[{first[name]}])"
            errors.append((f"{section}[{i}].name", msg))
        first.setdefault(name, i)
    return errors


def cross_check(data: dict[str, Any]) -> Errors:
    """The checks that span sections: unique names, routes naming known backends.

    Works on plain data that may be partly invalid, so it runs even when field validation
    failed and its errors are reported with the others."""
    backends, routes = data.get("backends") or [], data.get("routes") or []
    names = _names(backends, "name")
    errors = _duplicates(names, "backends", "backend") + \
        _duplicates(_names(routes, "name"), "routes", "route")
    known = [n for n in names if isinstance(n, str)]
    if not names and data.get("embedded_default", True) is not False:
        known = [b["name"] for b in EMBEDDED_BACKENDS]
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        members = route.get("backends") if isinstance(route, dict) else None
        for j, b in enumerate(members if isinstance(members, list) else []):
            if isinstance(b, str) and b not in known:
                msg = f"unknown backend {b!r} (known: {', '.join(known) or 'none'})"
                errors.append((f"routes[{i}].backends[{j}]", msg))
        errors += _cascade_stages(i, route, known)
    return errors


def _cascade_stages(i: int, route: Any, known: list[str]) -> Errors:
    """A cascade's stages are known backends, and the route's own (when it names any)."""
    cascade = route.get("cascade") if isinstance(route, dict) else None
    stages = cascade.get("stages") if isinstance(cascade, dict) else None
    members = route.get("backends")
    errors: Errors = []
    for j, b in enumerate(stages if isinstance(stages, list) else []):
        path = f"routes[{i}].cascade.stages[{j}]"
        if isinstance(b, str) and b not in known:
            errors.append((path, f"unknown backend {b!r} (known: {', '.join(known) or 'none'})"))
        elif isinstance(b, str) and isinstance(members, list) and b not in members:
            mine = ", ".join(map(str, members))
            errors.append((path, f"{b!r} is not one of the route's backends ({mine})"))
    return errors


def workers_errors(settings: Settings) -> Errors:
    """Several workers need a state store they all see: with the in-process one each worker
    keeps its own budgets, rate limits and keys, and a team could spend its budget once per
    worker. Checked at start-up (after ``serve --workers``) and by ``check-config``."""
    n, kind = settings.server.workers, settings.state.kind
    if n <= 1 or kind != "memory":
        return []
    msg = (f"{n} workers with state.kind 'memory' would split budgets, rate limits and keys "
           "between the workers (each keeps its own); set state.kind: sqlite (the workers of "
           "one host share the file state.path) or state.kind: redis (with state.url, for "
           "several hosts), or run one worker")
    return [("server.workers", msg)]


def _partial(data: dict[str, Any], exc: ValidationError) -> Settings:
    """The sections that validated, with defaults for the rest: lets ``check-config`` run
    the plugin-level checks too, so every error is reported at once."""
    bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
    good: dict[str, Any] = {}
    for key, value in data.items():
        field = Settings.model_fields.get(key)
        if key in bad or field is None or field.annotation is None:
            continue
        try:
            good[key] = TypeAdapter(field.annotation).validate_python(value)
        except ValidationError:
            continue
    return Settings.model_construct(**good)


def check_settings(path: str | Path | None = None, **overrides: Any) -> tuple[Settings, Errors]:
    """Everything ``load_settings`` checks, without raising: returns the settings (only the
    sections that validated, where some did not) and every error found, each with its path.
    ``switchyard check-config`` uses it to go on to the plugin checks."""
    errors: Errors = []
    data = _read_yaml(path, errors) if path is not None else {}
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as e:
        unset = {path for path, _ in errors}  # an unset ${VAR} explains its key's own error
        errors.extend(err for err in validation_errors(e) if err[0] not in unset)
        errors.extend(cross_check(data))
        return _partial(data, e), errors
    errors.extend(cross_check(settings.model_dump(include={"backends", "routes", "embedded_default"})))
    errors.extend(workers_errors(settings))
    return apply_embedded_default(settings), errors


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read YAML (if given), substitute ``${VAR}`` and ``${VAR:-default}``, apply
    ``SWITCHYARD_*`` environment overrides and validate.

    Raises ConfigError holding every problem found, each with its path."""
    settings, errors = check_settings(path, **overrides)
    if errors:
        raise ConfigError(errors)
    return settings
