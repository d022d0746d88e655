"""``switchyard import-litellm``: a LiteLLM proxy ``config.yaml`` as a Switchyard config.

Pure data in, data out: ``import_litellm(data)`` reads the LiteLLM file's mapping and returns
the Switchyard sections, the comments that explain choices, and one line for every key it
could not carry over (``model_list[3].litellm_params.vertex_project: not mapped (...)``).
Nothing is dropped silently: each section handler takes the keys it maps off a copy and
reports what is left. Secrets are never written in clear: ``os.environ/VAR`` becomes
``${VAR}``, and an inline secret becomes ``${A_NAME}`` with a line saying which variable to
set. docs/migrating-from-litellm.md says what maps to what, and why.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

_ENV = "os.environ/"
_SECRET = re.compile(r"(^|_)(key|secret|password|credentials?|token)$|access_key_id$")
_NAME_BAD = re.compile(r"[^A-Za-z0-9._:/@-]+")

_USAGE = "no per-backend tpm/rpm in Switchyard; `latency` moves traffic off a backend as it queues"
# LiteLLM routing_strategy -> (Switchyard policy, why)
STRATEGIES: dict[str, tuple[str, str]] = {
    "simple-shuffle": ("latency", ("Switchyard has no random pick; `latency` spreads load "
                                   "by each backend's predicted wait")),
    "least-busy": ("latency", "`latency` counts the requests in flight at each backend"),
    "latency-based-routing": ("latency", "the lowest predicted time to first token"),
    "usage-based-routing": ("latency", _USAGE),
    "usage-based-routing-v2": ("latency", _USAGE),
    "cost-based-routing": ("cost", "the cheapest predicted cost"),
}

# litellm_params the LiteLLM router itself reads (never litellm.completion keywords)
_ROUTER_ONLY = {
    "rpm": "Switchyard rate-limits teams and keys (`switchyard teams create --rpm`), not backends",
    "tpm": "Switchyard rate-limits teams and keys (`switchyard teams create --tpm`), not backends",
    "itpm": "no per-backend token limits in Switchyard",
    "otpm": "no per-backend token limits in Switchyard",
    "weight": "no weighted random pick in Switchyard; the route's policy chooses",
    "max_parallel_requests": "set `concurrency` on the backend if it is a server's slot count",
    "max_retries": "the gateway retries itself (`health.retry`), for every backend",
    "tags": "no tag-based routing in Switchyard",
    "tag_regex": "no tag-based routing in Switchyard",
    "max_budget": "budgets are per team (`switchyard teams create --budget`)",
    "budget_duration": "budgets are per team (`--period`)",
    "default_api_key_tpm_limit": "rate limits are per team and key",
    "default_api_key_rpm_limit": "rate limits are per team and key",
    "use_in_pass_through": "no pass-through endpoints in Switchyard",
    "configurable_clientside_auth_params": "clients never choose a backend's credentials",
}
_PRICES = {"input_cost_per_token": "input_per_mtok", "output_cost_per_token": "output_per_mtok",
           "cache_read_input_token_cost": "cached_input_per_mtok"}
_PER_SECOND = ("input_cost_per_second", "output_cost_per_second")
_EMBEDDING_CALLS = {"embedding", "aembedding"}
_CHAT_CALLS = {"completion", "acompletion", "text_completion", "atext_completion"}


@dataclass
class Imported:
    """The Switchyard config (``config``), the comments for its top (``notes``) and for
    each route (``route_notes``), and the lines for stderr (``report``): every key not
    carried over, every secret turned into a variable."""

    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    route_notes: dict[str, list[str]] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    env_vars: set[str] = field(default_factory=set)
    cache_calls: list[str] | None = None  # cache_params.supported_call_types

    def not_mapped(self, path: str, why: str = "") -> None:
        self.report.append(f"{path}: not mapped" + (f" ({why})" if why else ""))

    def leftovers(self, d: dict[str, Any], path: str, why: dict[str, str] | None = None) -> None:
        for k in d:
            self.not_mapped(f"{path}.{k}" if path else str(k), (why or {}).get(str(k), ""))


def mapping(value: Any, path: str, out: Imported) -> dict[str, Any]:
    """A section as a fresh dict (handlers pop what they map); not a mapping: reported."""
    if isinstance(value, dict):
        return dict(value)
    if value not in (None, [], ""):
        out.not_mapped(path, "not a mapping")
    return {}


def env_name(text: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_") or "SECRET"


def convert(value: Any, out: Imported) -> Any:
    """``os.environ/VAR`` -> ``${VAR}``, everywhere in a value."""
    if isinstance(value, str) and value.startswith(_ENV):
        var = value[len(_ENV):].strip()
        out.env_vars.add(var)
        return "${" + var + "}"
    if isinstance(value, dict):
        return {k: convert(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [convert(v, out) for v in value]
    return value


def secret(value: Any, path: str, var: str, out: Imported) -> str | None:
    """A secret for the output: a ``${VAR}`` reference, never the value itself."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.startswith(_ENV):
        return str(convert(value, out))
    taken = out.env_vars
    name, n = var, 2
    while name in taken:
        name, n = f"{var}_{n}", n + 1
    taken.add(name)
    out.report.append(f"{path}: written as ${{{name}}}: set {name} (the LiteLLM file held this "
                      "secret in clear; it is not copied)")
    return "${" + name + "}"


def is_secret_key(key: str) -> bool:
    return bool(_SECRET.search(key)) and not key.startswith("max_")


# ---- the model cost map: which deployments are embedding models -----------------------


@functools.cache
def cost_map() -> dict[str, Any]:
    """litellm's bundled model map, read as JSON (litellm itself is not imported)."""
    spec = find_spec("litellm")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "model_prices_and_context_window_backup.json"
        if p.is_file():
            loaded = json.loads(p.read_text())
            return loaded if isinstance(loaded, dict) else {}
    return {}


def model_mode(model: str, group: str, info: dict[str, Any]) -> str | None:
    if isinstance(info.get("mode"), str):
        return str(info["mode"])
    cmap = cost_map()
    for key in (info.get("base_model"), model, model.split("/", 1)[-1]):
        entry = cmap.get(key) if isinstance(key, str) else None
        if isinstance(entry, dict) and entry.get("mode"):
            return str(entry["mode"])
    return "embedding" if "embed" in f"{model} {group}".lower() else None


# ---- model_list -> backends -------------------------------------------------------------


@dataclass
class Deployment:
    index: int
    group: str
    backend: dict[str, Any]
    order: float | None = None
    model_id: str | None = None


def _plugin_for(model: str, api_base: Any) -> tuple[str, str]:
    """(plugin, the model name that plugin sends)."""
    if model.startswith("hosted_vllm/"):
        return "vllm", model.split("/", 1)[1]
    if model.startswith("openai/") and api_base:
        return "openai_compatible", model.split("/", 1)[1]
    return "litellm", model


def _pricing(params: dict[str, Any], info: dict[str, Any]) -> dict[str, float]:
    pricing: dict[str, float] = {}
    for src in (info, params):  # litellm_params win over model_info
        for key, dest in _PRICES.items():
            if isinstance(src.get(key), (int, float)):
                pricing[dest] = round(float(src.pop(key)) * 1e6, 9)
        per_s = [float(src.pop(k)) for k in _PER_SECOND if isinstance(src.get(k), (int, float))]
        if per_s:
            pricing["per_hour"] = round(sum(per_s) * 3600, 9)
    return pricing


def _timeouts(params: dict[str, Any], default_total: Any) -> dict[str, Any]:
    t: dict[str, Any] = {}
    total = params.pop("timeout", None)
    if total is None:
        total = default_total
    if total is not None:
        t["total_s"] = total
    stream = params.pop("stream_timeout", None)
    if stream is not None:
        t["first_token_s"] = stream
    return t


def _info(info: dict[str, Any], backend: dict[str, Any], path: str, out: Imported) -> None:
    window = info.pop("max_input_tokens", None) or info.pop("max_tokens", None)
    info.pop("max_tokens", None)
    if isinstance(window, int) and window > 0:
        backend["context_window"] = window
    mode = info.pop("mode", None)
    if mode not in (None, "chat", "completion", "embedding", "responses"):
        out.not_mapped(f"{path}.mode", f"{mode!r}: Switchyard serves chat, completions and "
                       "embeddings")
    info.pop("base_model", None)
    out.leftovers(info, path, {
        "id": f"the backend's name, {backend['name']}, identifies the deployment; a "
              "fallback that names this id is mapped to it",
        "max_output_tokens": "a request's max_tokens is the client's"})


def _openai_params(params: dict[str, Any], backend: dict[str, Any], path: str,
                   out: Imported) -> None:
    """What an ``openai_compatible`` / ``vllm`` section takes of the rest."""
    headers = {**(params.pop("headers", None) or {}), **(params.pop("extra_headers", None) or {})}
    org = params.pop("organization", None)
    if org:
        headers["OpenAI-Organization"] = org
    if headers:
        backend["headers"] = headers
    why = {**_ROUTER_ONLY, "api_version": "an Azure setting; this backend speaks plain OpenAI"}
    for k in params:
        why.setdefault(k, "the openai_compatible backend forwards the client's body as it is")
    out.leftovers(params, path, why)


def _litellm_params(params: dict[str, Any], backend: dict[str, Any], path: str,
                    out: Imported, drop_params: bool) -> None:
    """What a ``litellm`` section takes of the rest: litellm.completion's keywords go to
    ``extra`` (as the LiteLLM router passes them); the router's own are reported."""
    extra: dict[str, Any] = {}
    for key in list(params):
        if key in _ROUTER_ONLY or key.endswith(("_router_config", "_router_default_model")) \
                or key.startswith("auto_router_") or "cost_per" in key or "_cost" in key:
            continue
        value = params.pop(key)
        if is_secret_key(key):
            value = secret(value, f"{path}.{key}", env_name(f"{backend['name']}_{key}"), out)
        if value is not None:
            extra[key] = convert(value, out)
    if drop_params:
        extra.setdefault("drop_params", True)
    if extra:
        backend["extra"] = extra
    out.leftovers(params, path, _ROUTER_ONLY)


def backend_of(dep: dict[str, Any], path: str, name: str, ctx: Context,
               out: Imported) -> dict[str, Any] | None:
    params = mapping(dep.pop("litellm_params", None), f"{path}.litellm_params", out)
    info = mapping(dep.pop("model_info", None), f"{path}.model_info", out)
    model = params.pop("model", None)
    if not isinstance(model, str) or not model:
        out.not_mapped(f"{path}.litellm_params.model",
                       "missing: no backend can be made for this deployment")
        return None
    cred = params.pop("litellm_credential_name", None)
    for k, v in (ctx.credentials.get(str(cred)) or {}).items():
        params.setdefault(k, v)
    plugin, upstream = _plugin_for(model, params.get("api_base"))
    backend: dict[str, Any] = {"name": name, "plugin": plugin, "model": upstream}
    api_base = convert(params.pop("api_base", None), out)
    if plugin == "vllm" and not api_base:
        api_base = "${HOSTED_VLLM_API_BASE}"  # where litellm itself looks
        out.env_vars.add("HOSTED_VLLM_API_BASE")
    if api_base:
        backend["base_url" if plugin != "litellm" else "api_base"] = str(api_base).rstrip("/")
        if plugin != "litellm" and not re.match(r"^(https?://|\$\{)", str(api_base)):
            out.report.append(f"{path}.litellm_params.api_base: {api_base!r} is not a URL: "
                              "check-config refuses the backend's base_url until it is one")
    key = secret(params.pop("api_key", None), f"{path}.litellm_params.api_key",
                 env_name(f"{name}_API_KEY"), out)
    if key:
        backend["api_key"] = key
    if model_mode(model, name, info) == "embedding":
        backend["embeddings"] = True
    if pricing := _pricing(params, info):
        backend["pricing"] = pricing
    if timeouts := _timeouts(params, ctx.default_timeout):
        backend["timeouts"] = convert(timeouts, out)
    _info(info, backend, f"{path}.model_info", out)
    if plugin == "litellm":
        _litellm_params(params, backend, f"{path}.litellm_params", out, ctx.drop_params)
    else:
        _openai_params(params, backend, f"{path}.litellm_params", out)
    return backend


@dataclass
class Context:
    """What the settings sections tell the deployments."""

    default_timeout: Any = None
    drop_params: bool = False
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)


def deployments(model_list: Any, ctx: Context, out: Imported) -> list[Deployment]:
    deps: list[Deployment] = []
    counts: dict[str, int] = {}
    used: set[str] = set()
    if model_list is not None and not isinstance(model_list, list):
        out.not_mapped("model_list", "not a list of deployments")
    for i, raw in enumerate(model_list if isinstance(model_list, list) else []):
        path = f"model_list[{i}]"
        if not isinstance(raw, dict):
            out.not_mapped(path, "not a mapping")
            continue
        dep = dict(raw)
        group = str(dep.pop("model_name", "") or "")
        lp = dep.get("litellm_params")
        params = dict(lp) if isinstance(lp, dict) else {}
        model = str(params.get("model") or "")
        if not group:
            out.not_mapped(f"{path}.model_name", "missing")
            continue
        if "*" in group or "*" in model:
            out.not_mapped(path, f"wildcard model_name {group!r} -> {model!r}: Switchyard "
                           "serves the names it is configured with; add a deployment per model")
            continue
        counts[group] = counts.get(group, 0) + 1
        name = f"{_NAME_BAD.sub('-', group)}@{counts[group]}"
        while name in used:  # two model_names that read alike once cleaned ("a b", "a-b")
            name = name.replace("@", "-@", 1)
        used.add(name)
        order = params.pop("order", None)
        dep["litellm_params"] = params
        mid = (dep.get("model_info") or {}).get("id")
        for level in ("rpm", "tpm"):  # an old form: rate limits beside litellm_params
            if level in dep:
                dep.pop(level)
                out.not_mapped(f"{path}.{level}", _ROUTER_ONLY[level])
        backend = backend_of(dep, path, name, ctx, out)
        out.leftovers(dep, path)
        if backend is None:
            counts[group] -= 1
            continue
        deps.append(Deployment(i, group, backend, order if isinstance(order, (int, float))
                               else None, str(mid) if mid is not None else None))
    return deps


# ---- routes: model groups, fallbacks, aliases -------------------------------------------


def _fallback_pairs(value: Any, path: str, out: Imported) -> list[tuple[str, list[str]]]:
    """``[{"a": ["b", "c"]}, ...]`` (LiteLLM's form) as (group, targets) pairs."""
    pairs: list[tuple[str, list[str]]] = []
    items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    if not items and value:
        out.not_mapped(path, "not a list of {model_name: [fallbacks]}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            out.not_mapped(f"{path}[{i}]", "not a {model_name: [fallbacks]} mapping")
            continue
        for group, targets in item.items():
            ts = targets if isinstance(targets, list) else [targets]
            pairs.append((str(group), [str(t) for t in ts]))
    return pairs


@dataclass
class Routing:
    """What router_settings and litellm_settings say about routing, merged."""

    strategy: str | None = None
    fallbacks: list[tuple[str, list[str], str]] = field(default_factory=list)  # + kind
    default_fallbacks: list[str] = field(default_factory=list)
    aliases: dict[str, Any] = field(default_factory=dict)


def _targets(group: str, targets: list[str], groups: dict[str, list[str]],
             ids: dict[str, str], path: str, out: Imported) -> list[str]:
    backends: list[str] = []
    for t in targets:
        if t in groups:
            backends += groups[t]
        elif t in ids:
            backends.append(ids[t])
        else:
            out.not_mapped(f"{path}: {group} -> {t}", f"{t!r} is not a model_name of this file")
    return backends


def build_routes(deps: list[Deployment], routing: Routing, out: Imported) -> list[dict[str, Any]]:
    groups: dict[str, list[Deployment]] = {}
    for d in deps:
        groups.setdefault(d.group, []).append(d)
    own = {g: [d.backend["name"] for d in sorted(ds, key=lambda d: (d.order is None, d.order or 0))]
           for g, ds in groups.items()}
    ids = {d.model_id: d.backend["name"] for d in deps if d.model_id}
    extra: dict[str, list[str]] = {g: [] for g in groups}
    for group, targets, kind in routing.fallbacks:
        if group not in groups:
            out.not_mapped(f"{kind}: {group}", f"{group!r} is not a model_name of this file")
            continue
        extra[group] += _targets(group, targets, own, ids, kind, out)
    for group in groups:
        extra[group] += _targets(group, routing.default_fallbacks, own, ids, "default_fallbacks",
                                 out) if routing.default_fallbacks else []
    routes = []
    for group, members in own.items():
        backends = list(dict.fromkeys(members + extra[group]))
        policy, notes = _policy(group, members, backends, groups[group], routing.strategy)
        if backends != members:
            notes.append(f"{group}: fallbacks {', '.join(backends[len(members):])} come after "
                         "the group's own deployments (LiteLLM fallbacks)")
        out.route_notes[group] = notes
        routes.append({"name": group, "backends": backends, "policy": policy})
    return routes + _aliases(routing.aliases, routes, out)


def _policy(group: str, members: list[str], backends: list[str], deps: list[Deployment],
            strategy: str | None) -> tuple[str, list[str]]:
    if any(d.order is not None for d in deps):
        return "first_healthy", [f"{group}: deployments in LiteLLM's `order`, tried in turn"]
    if len(members) == 1:
        return "first_healthy", [f"{group}: one deployment" + (", then its fallbacks in order"
                                                               if len(backends) > 1 else "")]
    name = strategy or "simple-shuffle"
    policy, why = STRATEGIES.get(name, ("latency", f"no Switchyard policy is like {name!r}"))
    notes = [f"{group}: LiteLLM routing_strategy {name} -> policy {policy}: {why}"]
    if len(backends) > len(members):
        notes.append(f"{group}: {policy} may choose a fallback before the group's own "
                     "deployments (Switchyard has no fallback-only tier)")
    return policy, notes


def _aliases(aliases: dict[str, Any], routes: list[dict[str, Any]],
             out: Imported) -> list[dict[str, Any]]:
    by_name = {r["name"]: r for r in routes}
    made = []
    for alias, target in aliases.items():
        path = f"router_settings.model_group_alias.{alias}"
        if isinstance(target, dict):
            hidden = target.get("hidden")
            target = target.get("model")
            if hidden:
                out.not_mapped(f"{path}.hidden", "every route is listed in /v1/models")
        if str(alias) in by_name:
            out.not_mapped(path, f"{alias!r} is already a model_name")
        elif str(target) not in by_name:
            out.not_mapped(path, f"{target!r} is not a model_name of this file")
        else:
            route = by_name[str(target)]
            made.append({**route, "name": str(alias), "backends": list(route["backends"])})
            out.route_notes[str(alias)] = [f"{alias}: LiteLLM model_group_alias of {target}"]
    return made


# ---- settings sections --------------------------------------------------------------------


_SETTINGS_WHY = {
    "success_callback": "Switchyard records every request in its ledger; plugins observe "
                        "requests through hooks",
    "failure_callback": "see success_callback",
    "callbacks": "see success_callback",
    "service_callback": "see success_callback",
    "database_url": "Switchyard's ledger is SQLite (`ledger.path`); teams and keys live in "
                    "the state store",
    "store_model_in_db": "models live in this file",
    "alerting": "no alerting in Switchyard; scrape /metrics",
    "max_budget": "budgets are per team (`switchyard teams create --budget`)",
    "budget_duration": "budgets are per team (`--period`)",
    "content_policy_fallbacks": "Switchyard does not tell content-policy errors apart",
    "disable_cooldowns": "the circuit breaker is always on (`health.breaker`)",
    "retry_policy": "one retry policy for every error (`health.retry`)",
    "allowed_fails_policy": "one breaker threshold for every error (`health.breaker`)",
    "enable_pre_call_checks": "always on: a backend whose context_window cannot hold the "
                              "request is left out",
    "telemetry": "Switchyard sends no telemetry",
}


def _redis_url(src: dict[str, Any], path: str, out: Imported) -> str | None:
    """``host``/``port``/``password`` (cache_params) or ``redis_*`` (router_settings)."""
    got = {}
    for part in ("host", "port", "password", "url"):
        for key in (part, f"redis_{part}"):
            if key in src:
                got[part] = (key, src.pop(key))
    if "url" in got:  # it may hold the password
        return secret(got["url"][1], f"{path}.{got['url'][0]}", "REDIS_URL", out)
    host = got.get("host", ("", None))[1]
    port = got.get("port", ("", None))[1]
    if not host:
        return None
    key, pw = got.get("password", ("password", None))
    auth = secret(pw, f"{path}.{key}", "REDIS_PASSWORD", out)
    return (f"redis://{':' + auth + '@' if auth else ''}{convert(host, out)}"
            f"{':' + str(convert(port, out)) if port else ''}/0")


def settings_of(data: dict[str, Any], out: Imported) -> tuple[Context, Routing]:
    """litellm_settings and router_settings: what the deployments and routes need; the
    rest goes into the top-level sections of ``out.config``."""
    ls = mapping(data.get("litellm_settings"), "litellm_settings", out)
    rs = mapping(data.get("router_settings"), "router_settings", out)
    ctx, routing = Context(), Routing()
    ctx.drop_params = bool(ls.pop("drop_params", False))
    timeouts = [rs.pop("timeout", None), ls.pop("request_timeout", None), ls.pop("timeout", None)]
    ctx.default_timeout = convert(next((t for t in timeouts if t is not None), None), out)
    routing.strategy = rs.pop("routing_strategy", None)
    for section, src in (("litellm_settings", ls), ("router_settings", rs)):
        for kind in ("fallbacks", "context_window_fallbacks"):
            for group, targets in _fallback_pairs(src.pop(kind, None), f"{section}.{kind}", out):
                routing.fallbacks.append((group, targets, f"{section}.{kind}"))
        dflt = src.pop("default_fallbacks", None)
        dflt = [dflt] if isinstance(dflt, str) else dflt
        if dflt is not None and not isinstance(dflt, list):
            out.not_mapped(f"{section}.default_fallbacks", "not a list of model names")
        routing.default_fallbacks += [str(x) for x in dflt] if isinstance(dflt, list) else []
        routing.aliases.update(mapping(src.pop("model_group_alias", None),
                                       f"{section}.model_group_alias", out))
    _health(ls, rs, out)
    if ls.pop("set_verbose", False):
        out.config["log_level"] = "debug"
    _cache(ls, out)
    if url := _redis_url(rs, "router_settings", out):
        out.config["state"] = {"kind": "redis", "url": url}
        out.notes.append("router_settings.redis_*: the state store (budgets, rate limits, "
                         "health, cache entries) is that Redis, shared by every replica")
    ls.pop("telemetry", None)
    out.leftovers(ls, "litellm_settings", _SETTINGS_WHY)
    out.leftovers(rs, "router_settings", _SETTINGS_WHY)
    return ctx, routing


def _health(ls: dict[str, Any], rs: dict[str, Any], out: Imported) -> None:
    retries, from_ls = rs.pop("num_retries", None), ls.pop("num_retries", None)
    retries = from_ls if retries is None else retries
    health: dict[str, Any] = {}
    if isinstance(retries, int):
        health["retry"] = {"max_attempts": retries + 1}
        out.notes.append(f"num_retries {retries}: health.retry.max_attempts {retries + 1} "
                         "(plus one for each backend past the first of the largest route, so that every "
                         "deployment and fallback can be tried)")
    fails = rs.pop("allowed_fails", None) or ls.pop("allowed_fails", None)
    ls.pop("allowed_fails", None)
    cool = rs.pop("cooldown_time", None) or ls.pop("cooldown_time", None)
    ls.pop("cooldown_time", None)
    breaker: dict[str, Any] = {}
    if isinstance(fails, int):
        breaker["failure_threshold"] = fails + 1
    if isinstance(cool, (int, float)) and cool > 0:
        breaker["open_s"] = cool
    if breaker:
        health["breaker"] = breaker
        out.notes.append("allowed_fails / cooldown_time: health.breaker (Switchyard counts "
                         "consecutive failures, LiteLLM failures per minute)")
    if health:
        out.config["health"] = health


def _cache(ls: dict[str, Any], out: Imported) -> None:
    on = ls.pop("cache", False)
    params = mapping(ls.pop("cache_params", None), "litellm_settings.cache_params", out)
    if not on:
        if params:
            out.leftovers(params, "litellm_settings.cache_params", {
                k: "litellm_settings.cache is off" for k in params})
        return
    path = "litellm_settings.cache_params"
    kind = str(params.pop("type", "local"))
    cache: dict[str, Any] = {"enabled": True, "semantic": kind.endswith("-semantic"),
                             "max_temperature": 2.0}
    out.notes.append(f"litellm_settings.cache ({kind}): cache enabled, semantic tier "
                     f"{'on' if cache['semantic'] else 'off (LiteLLM matched exactly)'}, "
                     "max_temperature 2 (LiteLLM caches answers at any temperature)")
    if params.pop("mode", None) == "default_off":
        cache["enabled"] = False
        out.not_mapped(f"{path}.mode", "default_off: a Switchyard request cannot turn on a cache "
                       "its route has off; the cache is written disabled")
    if isinstance(params.get("ttl"), (int, float)) and params["ttl"] > 0:
        cache["ttl_s"] = params.pop("ttl")
    if params.get("namespace"):
        cache["prefix"] = f"{params.pop('namespace')}:"
    calls = params.pop("supported_call_types", None)
    if isinstance(calls, list):
        out.cache_calls = [str(c) for c in calls]
    if kind.startswith("redis"):
        # no host: LiteLLM reads REDIS_HOST, REDIS_PORT and REDIS_PASSWORD; so does this URL
        url = _redis_url(params, path, out)
        if url is None:
            url = "redis://:${REDIS_PASSWORD:-}@${REDIS_HOST:-127.0.0.1}:${REDIS_PORT:-6379}/0"
            out.notes.append("cache_params names no Redis host: as LiteLLM, the URL reads "
                             "REDIS_HOST, REDIS_PORT and REDIS_PASSWORD")
        out.config["state"] = {"kind": "redis", "url": url}
        out.notes.append("the cache's Redis is the state store: budgets, rate limits and "
                         "health live there too")
    elif kind not in ("local", "redis", "redis-semantic"):
        out.not_mapped(f"{path}.type", f"{kind!r}: entries are kept in process memory "
                       "(or Redis with `state: {kind: redis}`)")
    out.config["cache"] = cache
    out.leftovers(params, path, {"similarity_threshold": "Switchyard's semantic decision is a "
                                 "fitted verifier (its threshold a probability, not a cosine)"})


def _cache_by_route(routes: list[dict[str, Any]], backends: dict[str, dict[str, Any]],
                    out: Imported) -> None:
    """``supported_call_types``: the cache stays on only for routes that serve those calls."""
    calls = set(out.cache_calls if out.cache_calls is not None else
                _CHAT_CALLS | _EMBEDDING_CALLS)
    chat, emb = bool(calls & _CHAT_CALLS), bool(calls & _EMBEDDING_CALLS)
    for c in sorted(calls - _CHAT_CALLS - _EMBEDDING_CALLS):
        out.not_mapped(f"litellm_settings.cache_params.supported_call_types: {c}",
                       "Switchyard caches chat, completions and embeddings")
    if chat and emb:
        return
    for r in routes:
        embedding = all(backends[b].get("embeddings") for b in r["backends"])
        if embedding != emb or (not embedding and not chat):
            r["cache"] = {"enabled": False}


def _general(data: dict[str, Any], out: Imported) -> None:
    gs = mapping(data.get("general_settings"), "general_settings", out)
    key = gs.pop("master_key", None)
    if key:
        out.config["admin_key"] = secret(key, "general_settings.master_key",
                                         "SWITCHYARD_ADMIN_KEY", out)
        out.report.append("general_settings.master_key: it is now the admin key (teams, keys, "
                          "spend); clients use per-team keys (`switchyard teams create`, "
                          "`switchyard keys create`), and until a team exists the gateway "
                          "answers without a key")
    out.leftovers(gs, "general_settings", _SETTINGS_WHY)


def _credentials(data: dict[str, Any], out: Imported) -> dict[str, dict[str, Any]]:
    creds: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(data.get("credential_list") or []):
        if isinstance(c, dict) and c.get("credential_name"):
            creds[str(c["credential_name"])] = mapping(
                c.get("credential_values"), f"credential_list[{i}].credential_values", out)
            for k in c:
                if k not in ("credential_name", "credential_values", "credential_info"):
                    out.not_mapped(f"credential_list[{i}].{k}")
        else:
            out.not_mapped(f"credential_list[{i}]", "no credential_name")
    return creds


_SECTIONS = ("model_list", "litellm_settings", "router_settings", "general_settings",
             "credential_list", "environment_variables")


def import_litellm(data: dict[str, Any]) -> Imported:
    """The Switchyard config for a LiteLLM proxy config (its parsed YAML)."""
    out = Imported()
    ctx, routing = settings_of(data, out)
    ctx.credentials = _credentials(data, out)
    _general(data, out)
    deps = deployments(data.get("model_list"), ctx, out)
    backends = [d.backend for d in deps]
    routes = build_routes(deps, routing, out)
    if "cache" in out.config:
        _cache_by_route(routes, {b["name"]: b for b in backends}, out)
    fallbacks = max((len(r["backends"]) for r in routes), default=1) - 1
    retry = out.config.get("health", {}).get("retry")
    if retry is not None:
        retry["max_attempts"] += fallbacks
    elif fallbacks + 1 > 4:  # Switchyard's default would stop before the last fallback
        out.config.setdefault("health", {})["retry"] = {"max_attempts": fallbacks + 1}
    for name in (data.get("environment_variables") or {}):
        out.not_mapped(f"environment_variables.{name}", "set it in the gateway's environment")
    for key in data:
        if key not in _SECTIONS:
            out.not_mapped(str(key))
    if not backends:
        out.config["embedded_default"] = False
        out.report.append("model_list: no deployment could be imported: the config serves "
                          "nothing until backends are added")
    out.config["backends"] = backends
    out.config["routes"] = routes
    return out


# ---- writing -------------------------------------------------------------------------------


_ORDER = ("admin_key", "log_level", "embedded_default", "state", "health", "cache", "backends",
          "routes")


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: every section written out in full


def _dump(value: Any) -> str:
    return str(yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=100))


def render(out: Imported, source: str) -> str:
    """The YAML text, with the notes as comments: at the top, and above each route."""
    lines = [f"# Switchyard config imported from the LiteLLM proxy config {source}",
             "# by `switchyard import-litellm`; check it with `switchyard check-config FILE`.",
             "# docs/migrating-from-litellm.md says what maps to what."]
    lines += [f"# - {n}" for n in out.notes]
    if out.env_vars:
        lines.append(f"# Environment variables it reads: {', '.join(sorted(out.env_vars))}")
    text = "\n".join(lines) + "\n"
    for key in _ORDER:
        if key not in out.config or key == "routes":
            continue
        text += _dump({key: out.config[key]})
    text += "routes:\n" if out.config["routes"] else "routes: []\n"
    for route in out.config["routes"]:
        for note in out.route_notes.get(route["name"], []):
            text += f"# {note}\n"
        text += _dump([route])
    if out.report:
        text += "# Not carried over, or to act on (also printed on stderr):\n"
        text += "".join(f"# {line}\n" for line in out.report)
    return text


class Unreadable(Exception):
    """The LiteLLM file cannot be read; the message quotes no line of it."""


def read_litellm(path: str | Path) -> dict[str, Any]:
    """The LiteLLM file's mapping, or ``Unreadable``."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise Unreadable(f"cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise Unreadable(f"not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise Unreadable("the top level must be a mapping")
    return loaded
