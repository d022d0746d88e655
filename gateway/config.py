"""Settings: one pydantic-settings model, a YAML file plus ``SWITCHYARD_*`` overrides.

``load_settings(path)`` is exactly the start-up validation that ``switchyard check-config``
runs. Every problem is collected and reported at once, each with the path of the bad key.
Plugin-specific backend options are validated later, against the model each plugin
registered (see ``gateway.plugins``), and reported the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
    grid_g_per_kwh: float = Field(400.0, ge=0, description="grams CO2e per kWh at this backend")


class Timeouts(Strict):
    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(60.0, gt=0)
    total_s: float = Field(600.0, gt=0)


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
    enabled: bool = True


class RawBackend(BaseModel):
    """A backend section before its plugin is known: common keys checked, the rest kept."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    plugin: str = Field(min_length=1)


class RouteConfig(Strict):
    name: str = Field(min_length=1)
    backends: list[str] = Field(min_length=1)
    policy: str = "first_healthy"
    policy_options: dict[str, Any] = Field(default_factory=dict)


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    request_id_header: str = "x-request-id"


class LedgerConfig(Strict):
    kind: Literal["sqlite", "none"] = "sqlite"
    path: str = "~/.local/state/switchyard/ledger.sqlite3"
    flush_interval_s: float = Field(0.25, gt=0)


class StateConfig(Strict):
    kind: Literal["memory", "redis"] = "memory"
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    prefix: str = "switchyard:"
    failure_mode: Literal["closed", "open"] = "closed"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: list[RawBackend] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    default_route: str = "auto"
    state: StateConfig = Field(default_factory=StateConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    admin_key: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    plugins: list[str] = Field(default_factory=list, description="extra plugin modules to load")
    disable_plugins: list[str] = Field(default_factory=list)
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

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        errors: list[str] = []
        names = [b.name for b in self.backends]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            errors.append(f"backend name {dup!r} is used more than once")
        route_names = [r.name for r in self.routes]
        for dup in sorted({n for n in route_names if route_names.count(n) > 1}):
            errors.append(f"route name {dup!r} is used more than once")
        known = set(names)
        for i, route in enumerate(self.routes):
            for b in route.backends:
                if b not in known:
                    errors.append(f"routes[{i}].backends: unknown backend {b!r}")
        if errors:
            raise ValueError("; ".join(errors))
        return self


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


def _substitute(value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
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


def validation_errors(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    result = []
    for err in exc.errors():
        loc = format_loc(tuple(err["loc"]))
        if prefix:
            loc = prefix + ("" if loc.startswith("[") else ".") + loc if loc != "(root)" else prefix
        result.append((loc, err["msg"]))
    return result


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read YAML (if given), substitute ``${VAR}``, apply ``SWITCHYARD_*`` and validate.

    Raises ConfigError holding every problem found, each with its path."""
    data: dict[str, Any] = {}
    errors: list[tuple[str, str]] = []
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except OSError as e:
            raise ConfigError([(str(p), f"cannot read: {e.strerror}")]) from None
        except yaml.YAMLError as e:
            raise ConfigError([(str(p), f"not valid YAML: {e}")]) from None
        if not isinstance(loaded, dict):
            raise ConfigError([(str(p), "the top level must be a mapping")])
        data = _substitute(loaded, "", errors)
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as e:
        errors.extend(validation_errors(e))
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    return apply_embedded_default(settings)
