"""Assembly: turns validated settings into running parts, below the HTTP layer.

``validate`` is the whole start-up check past the settings model (plugins, backends,
policies with their options), shared by ``switchyard check-config`` and ``build_parts``, so
the two cannot disagree. ``build_parts`` wires the router, the pipeline, the budgets (state
store, key authenticator, admission) and the ledger; ``running`` starts them, runs the
health loops, and stops them in reverse order. ``gateway.http.app`` only mounts routes on
what this module builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from gateway.auth import KeyAuthenticator
from gateway.backend import BackendContext
from gateway.config import (
    BackendConfig,
    CompressConfig,
    RouteConfig,
    Settings,
    StateConfig,
    validation_errors,
)
from gateway.energy import FairShare, open_meters
from gateway.errors import ConfigError, SwitchyardError
from gateway.hookspecs import Cache, Compressor, LedgerStore
from gateway.interfaces import Backend, RoutingPolicy
from gateway.launch import ServerNotReady
from gateway.metrics import Metrics
from gateway.pipeline import stages
from gateway.pipeline.admission import BudgetAdmission
from gateway.pipeline.compress import Compress
from gateway.pipeline.context import RequestContext
from gateway.pipeline.health import SharedHealth
from gateway.pipeline.routing import Cascade, Router, build_targets
from gateway.pipeline.service import Gateway
from gateway.registry import Entry, Registry, build_registry
from gateway.state import StateStore
from gateway.telemetry import Tracker, make_trackers

log = logging.getLogger("switchyard")

Errors = list[tuple[str, str]]
T = TypeVar("T")


# ---- validation: what check-config and start-up both run -------------------------------


@dataclass
class Built:
    registry: Registry
    backends: dict[str, Backend]
    context: BackendContext
    policies: dict[str, RoutingPolicy]
    cache: Cache | None = None
    cascades: dict[str, Cascade] = field(default_factory=dict)  # route name -> its cascade
    compressor: Compressor | None = None  # compression on somewhere: ``compress.kind``'s


def build_registry_for(settings: Settings, extra_plugins: Iterable[object] = (),
                       load_entry_points: bool = True) -> Registry:
    return build_registry(
        load_entry_points=load_entry_points,
        modules=settings.plugins,
        extra=extra_plugins,
        disable=settings.disable_plugins,
    )


def _build_backends(settings: Settings, registry: Registry, ctx: BackendContext,
                    errors: Errors) -> dict[str, Backend]:
    """Each backend section validated against its plugin's model, then created."""
    backends: dict[str, Backend] = {}
    for i, raw in enumerate(settings.backends):
        path = f"backends[{i}]"
        entry = registry.backends.get(raw.plugin)
        if entry is None:
            known = ", ".join(sorted(registry.backends)) or "none"
            errors.append((f"{path}.plugin", f"unknown backend plugin {raw.plugin!r} (known: {known})"))
            continue
        factory, model = entry.value
        try:
            cfg: BackendConfig = model.model_validate(raw.model_dump())
        except ValidationError as e:
            errors.extend(validation_errors(e, path))
            continue
        try:
            backends[cfg.name] = factory(cfg, ctx)
        except SwitchyardError as e:
            errors.append((path, e.message))
        except Exception as e:  # noqa: BLE001 - reported, never raised to the client
            errors.append((path, f"cannot create backend: {type(e).__name__}: {e}"))
    return backends


def _make_policy(factory: Callable[[dict[str, Any]], T], options: dict[str, Any],
                 path: str, errors: Errors) -> T | None:
    """One policy (or judge) built from its factory; a factory that refuses its options is
    one error (or one per field, for a pydantic model) under ``path``."""
    try:
        return factory(options)
    except ValidationError as e:
        errors.extend(validation_errors(e, path))
    except SwitchyardError as e:
        errors.append((path, e.message))
    except Exception as e:  # noqa: BLE001 - a plugin's factory: reported, with its path
        errors.append((path, f"{type(e).__name__}: {e}" if not isinstance(e, ValueError)
                       else str(e)))
    return None


def route_policy_key(route: RouteConfig) -> str:
    """The name a route's policy has in the router: its own instance when it has options."""
    return f"{route.name}:{route.policy}" if route.policy_options else route.policy


def build_policies(settings: Settings, registry: Registry, errors: Errors) -> dict[str, RoutingPolicy]:
    """Every registered policy with no options (a request may name any of them), and one
    instance per route that sets ``policy_options``, built exactly as start-up uses them."""
    used_plain = {r.policy for r in settings.routes if not r.policy_options}
    policies: dict[str, RoutingPolicy] = {}
    for name, entry in registry.policies.items():
        found: Errors = []
        policy = _make_policy(entry.value, {}, f"policies.{name}", found)
        if policy is not None:
            policies[name] = policy
        elif name in used_plain:
            errors.extend(found)
        else:  # only usable with options: a request cannot name it bare
            log.info("policy %s needs options: %s", name, "; ".join(m for _, m in found))
    for i, route in enumerate(settings.routes):
        named = registry.policies.get(route.policy)
        if named is None:
            known = ", ".join(sorted(registry.policies))
            errors.append((f"routes[{i}].policy",
                           f"unknown policy {route.policy!r} (known: {known})"))
        elif route.policy_options:
            policy = _make_policy(named.value, route.policy_options,
                                  f"routes[{i}].policy_options", errors)
            if policy is not None:
                policies[route_policy_key(route)] = policy
    return policies


def _registered(table: Mapping[str, Entry], name: str, path: str, what: str,
                errors: Errors) -> Entry | None:
    """``table[name]``, or an error at ``path`` naming the registered ones."""
    entry = table.get(name)
    if entry is None:
        known = ", ".join(sorted(table)) or "none"
        errors.append((path, f"unknown {what} {name!r} (known: {known})"))
    return entry


def build_cache(settings: Settings, registry: Registry, errors: Errors) -> Cache | None:
    """The cache ``cache.kind`` names, when the cache is on at the top level or on a route
    (None: off everywhere, and no stage for it on the request path)."""
    cfg = settings.cache
    routes = {r.name: cfg.for_route(r.cache) for r in settings.routes}
    if not cfg.enabled and not any(c.enabled for c in routes.values()):
        return None
    entry = _registered(registry.caches, cfg.kind, "cache.kind", "cache", errors)
    if entry is None:
        return None
    for seam in ("cache_lookup", "cache_store"):
        if seam in registry.stages:
            msg = (f"plugin {registry.stages[seam].source!r} fills the {seam} seam itself: "
                   "turn the cache off or disable that plugin")
            errors.append(("cache.enabled", msg))
    try:
        cache: Cache = entry.value(cfg, routes, settings.state)
    except SwitchyardError as e:
        errors.append(("cache", e.message))
        return None
    except Exception as e:  # noqa: BLE001 - a plugin's factory: reported, with its path
        errors.append(("cache", f"cannot create the {cfg.kind} cache: {type(e).__name__}: {e}"))
        return None
    return cache


def compress_routes(settings: Settings) -> dict[str, CompressConfig | None]:
    """Each route's compression settings (None: off on that route)."""
    cfg = settings.compress
    routes = {r.name: cfg.for_route(r.compress) for r in settings.routes}
    return {name: c if c.enabled else None for name, c in routes.items()}


def build_compressor(settings: Settings, registry: Registry, errors: Errors) -> Compressor | None:
    """The compressor ``compress.kind`` names, when compression is on at the top level or
    on a route (None: off everywhere, and no ``compress`` stage on the request path)."""
    cfg = settings.compress
    if not cfg.enabled and not any(compress_routes(settings).values()):
        return None
    entry = _registered(registry.compressors, cfg.kind, "compress.kind", "compressor", errors)
    if entry is None:
        return None
    if "compress" in registry.stages:
        source = registry.stages["compress"].source
        msg = (f"plugin {source!r} fills the compress seam itself: turn compression off or "
               "disable that plugin")
        errors.append(("compress.enabled", msg))
    return _make_policy(entry.value, cfg.options, "compress.options", errors)


def build_cascades(settings: Settings, registry: Registry, errors: Errors) -> dict[str, Cascade]:
    """Each route's cascade with its judge, built from ``judge_options`` as start-up uses
    it (a judge's factory loads its model here, so check-config catches a bad file)."""
    cascades: dict[str, Cascade] = {}
    for i, route in enumerate(settings.routes):
        c = route.cascade
        if c is None:
            continue
        entry = registry.judges.get(c.judge)
        if entry is None:
            known = ", ".join(sorted(registry.judges)) or "none"
            errors.append((f"routes[{i}].cascade.judge",
                           f"unknown judge {c.judge!r} (known: {known})"))
            continue
        judge = _make_policy(entry.value, c.judge_options, f"routes[{i}].cascade.judge_options",
                             errors)
        if judge is not None:
            cascades[route.name] = Cascade(route.name, tuple(c.stages), judge, c.judge,
                                           c.on_budget, c.stream_first_unjudged, c.learn)
    return cascades


def validate(settings: Settings, registry: Registry,
             context: BackendContext | None = None) -> Built:
    """The plugin-level start-up checks, every error at once (``ConfigError``)."""
    errors: Errors = []
    ctx = context or BackendContext()
    backends = _build_backends(settings, registry, ctx, errors)
    policies = build_policies(settings, registry, errors)
    cache = build_cache(settings, registry, errors)
    cascades = build_cascades(settings, registry, errors)
    compressor = build_compressor(settings, registry, errors)
    _ledger_entry(settings, registry, errors)
    if errors:
        raise ConfigError(errors)
    return Built(registry, backends, ctx, policies, cache, cascades, compressor)


# ---- budgets: state store, key authenticator, admission -------------------------------


class HasHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


@dataclass
class Budgets:
    store: StateStore
    auth: KeyAuthenticator
    admission: BudgetAdmission

    async def start(self) -> None:
        await self.store.start()
        await self.admission.start()

    async def close(self) -> None:
        await self.admission.close()
        await self.store.close()

    async def authenticate(self, request: HasHeaders, ctx: RequestContext) -> None:
        ident = await self.auth.verify(request.headers.get("authorization"))
        if ident is None:
            return
        c = ident.constraints
        ctx.team, ctx.key_id = ident.team.name, ident.key.key_id
        ctx.constraints = replace(ctx.constraints, allowed_backends=c.allowed_backends,
                                  allowed_models=c.allowed_models)
        ctx.identity = ident


def _state_store(settings: Settings, registry: Registry) -> StateStore:
    kind = settings.state.kind
    entry = registry.state_stores.get(kind)
    if entry is None:
        known = ", ".join(sorted(registry.state_stores)) or "none"
        raise ConfigError([("state.kind", f"unknown state store {kind!r} (known: {known})")])
    try:
        store: StateStore = entry.value(settings.state)
    except Exception as e:  # noqa: BLE001 - a broken plugin stops start-up with a clear message
        raise ConfigError([("state", f"cannot create the {kind} store: {e}")]) from None
    return store


def build_budgets(settings: Settings, registry: Registry, metrics: Metrics) -> Budgets:
    """The state store named in ``state.kind`` (from the plugins), the authenticator and
    the admission, wired to the ``switchyard_budget_alert`` hook and the budget metrics."""
    store = _state_store(settings, registry)
    fail_open = settings.state.failure_mode == "open"
    fallback: Callable[[], StateStore] | None = None
    if fail_open:
        local = registry.state_stores.get("memory")
        if local is None:
            raise ConfigError([("state.failure_mode", "failing open needs the memory store")])
        def fallback() -> StateStore:
            return local.value(StateConfig(kind="memory"))  # type: ignore[no-any-return]

    cfg = settings.budgets
    auth = KeyAuthenticator(store, cache_ttl_s=cfg.key_cache_ttl_s, fail_open=fail_open)
    tasks: set[asyncio.Future[Any]] = set()

    def alert(team: str, spent: float, budget: float, pct: float) -> None:
        metrics.budget_alerts.labels(team).inc()
        registry.notify("switchyard_budget_alert", tasks, team=team, spent_usd=spent,
                        budget_usd=budget, pct=pct)

    admission = BudgetAdmission(store, cfg, fail_open=fail_open, fallback=fallback, alert=alert,
                                metrics=metrics)
    return Budgets(store, auth, admission)


# ---- the parts, built and wired -------------------------------------------------------


def _ledger_entry(settings: Settings, registry: Registry, errors: Errors) -> Entry | None:
    kind = settings.ledger.kind
    entry = registry.ledgers.get(kind)
    if entry is None and kind != "none":
        known = ", ".join(["none", *sorted(registry.ledgers)])
        errors.append(("ledger.kind", f"unknown ledger {kind!r} (known: {known})"))
    return entry


def build_ledger(settings: Settings, registry: Registry) -> LedgerStore | None:
    """The ledger ``ledger.kind`` names (from the plugins: ``sqlite``, ``postgres``...),
    None for ``none``. A kind nobody registered, or a section its factory refuses, stops
    start-up with the path of the bad key."""
    cfg = settings.ledger
    if cfg.kind == "none":
        return None
    errors: Errors = []
    entry = _ledger_entry(settings, registry, errors)
    if entry is None:
        raise ConfigError(errors)
    try:
        ledger: LedgerStore = entry.value(cfg)
    except ValueError as e:
        raise ConfigError([("ledger", str(e))]) from None
    except Exception as e:  # noqa: BLE001 - a broken plugin stops start-up with a clear message
        msg = f"cannot create the {cfg.kind} ledger: {type(e).__name__}: {e}"
        raise ConfigError([("ledger", msg)]) from None
    return ledger


@dataclass
class Parts:
    """Everything ``build_parts`` builds, in the order ``running`` starts it."""

    settings: Settings
    built: Built
    router: Router
    gateway: Gateway
    budgets: Budgets
    shared: SharedHealth
    ledger: LedgerStore | None
    probe_interval_s: float
    compress: Compress | None = None  # the compress stage, warmed up by ``running``


def _energy_meters(backends: dict[str, Backend]) -> dict[str, FairShare]:
    """One meter per device: backends on one GPU or RAPL package share it (billed once)."""
    return open_meters((name, b.config.energy.measure, b.config.energy.device,
                        b.config.energy.rapl_path)
                       for name, b in backends.items() if b.config.energy.measure != "profile")


def _build_router(settings: Settings, built: Built, trackers: dict[str, Tracker]) -> Router:
    routes = [r.model_copy(update={"policy": route_policy_key(r)}) for r in settings.routes]
    targets = build_targets(built.backends, routes)
    for name, cascade in built.cascades.items():
        targets[name] = replace(targets[name], cascade=cascade)
    return Router(
        backends=built.backends,
        trackers=trackers,
        targets=targets,
        policies=built.policies,
        editors=[e.value for e in built.registry.plan_editors.values()],
    )


def _seams(registry: Registry, cache: Cache | None, compress: Compress | None) -> dict[str, Any]:
    """What plugins registered on the optional seams (``switchyard_register_stages``), the
    configured cache's two and the compress stage, as ``Gateway``'s arguments: an empty seam
    is left out, so it costs nothing per request."""
    filled = {seam: e.value for seam, e in registry.stages.items()}
    if cache is not None:
        filled.update(cache_lookup=cache.lookup, cache_store=cache.store)
    if compress is not None:
        filled["compress"] = compress
    return {"stages_extra": {s: v for s, v in filled.items() if s in stages.OPTIONAL},
            "cache_store": filled.get("cache_store")}


def build_parts(settings: Settings, *, extra_plugins: Iterable[object] = (),
                load_entry_points: bool = True, context: BackendContext | None = None,
                health_interval_s: float | None = None) -> Parts:
    registry = build_registry_for(settings, extra_plugins, load_entry_points)
    built = validate(settings, registry, context)
    trackers = make_trackers(settings.health, built.backends)
    router = _build_router(settings, built, trackers)
    metrics = Metrics()
    ledger = build_ledger(settings, registry)
    if ledger is not None:
        metrics.watch_ledger(ledger)
    budgets = build_budgets(settings, registry, metrics)
    compress = None if built.compressor is None else Compress(
        built.compressor, settings.compress.kind,
        settings.compress if settings.compress.enabled else None, compress_routes(settings),
        built.backends, trackers)
    probe_interval_s = health_interval_s or settings.health.probe_interval_s
    gw = Gateway(backends=built.backends, router=router, trackers=trackers, metrics=metrics,
                 registry=registry, ledger=ledger, energy_meters=_energy_meters(built.backends),
                 admission=budgets.admission, retry=settings.health.retry,
                 plugin_text_chars=settings.plugin_text_chars,
                 **_seams(registry, built.cache, compress))
    shared = SharedHealth(budgets.store, trackers, probe_interval_s)
    return Parts(settings, built, router, gw, budgets, shared, ledger, probe_interval_s,
                 compress)


# ---- health loops ---------------------------------------------------------------------


async def _probe(name: str, backend: Backend, t: Tracker, timeout_s: float,
                 unhealthy_after: int = 2) -> None:
    """One active health check. A backend is marked unhealthy after ``unhealthy_after``
    failed checks in a row (one slow answer is not an outage), healthy after one success.

    A backend with calls in flight is not checked: those calls already watch it (a failure
    or a timeout counts against its breaker), and a check can harm them. llama-cpp-python's
    server serves ``/v1/models`` under the lock its generation holds: by default
    (``interrupt_requests``) a request arriving mid-stream ends that stream at once with
    ``[DONE]`` and no ``finish_reason``, and without it the check waits out the whole
    generation and fails as a timeout."""
    if t.inflight:
        return
    try:
        await asyncio.wait_for(backend.probe(), timeout=timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - reported, never raised to the client
        t.probe_failures += 1
        if isinstance(e, ServerNotReady):  # a launched server still loading: out at once
            t.probe_failures = max(t.probe_failures, unhealthy_after)
            t.last_error = e.message  # what it waits for, in /readyz
        if t.probe_failures >= unhealthy_after and t.last_probe_ok is not False:
            log.warning("backend %s failed %d health checks: %s", name, t.probe_failures,
                        type(e).__name__)
            t.last_probe_ok = False
        return
    if t.last_probe_ok is False:
        log.info("backend %s passed its health check again", name)
    t.probe_failures = 0
    t.last_probe_ok = True


async def probe_loop(gw: Gateway, interval_s: float, shared: SharedHealth) -> None:
    """Checks every backend concurrently, so one slow backend does not delay the others,
    then shares what it found with the other replicas."""
    timeout_s = max(1.0, interval_s)
    while True:
        await asyncio.gather(*(_probe(n, b, gw.trackers[n], timeout_s)
                               for n, b in gw.backends.items()))
        await shared.after_probes()
        await asyncio.sleep(interval_s)


async def share_loop(shared: SharedHealth, interval_s: float) -> None:
    """Publishes breakers that opened here and reads the marks of the other replicas."""
    while True:
        await shared.tick()
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def running(parts: Parts) -> AsyncIterator[None]:
    """Backends, budgets and the health loops started; all of it stopped on the way out."""
    gw, built, budgets = parts.gateway, parts.built, parts.budgets
    for name, b in built.backends.items():
        log.info("starting backend %s (%s, model %s)", name, b.config.plugin, b.model)
        t0 = time.perf_counter()
        await b.start()
        log.info("backend %s ready in %.1f s", name, time.perf_counter() - t0)
    await budgets.start()
    if parts.ledger is not None:
        await parts.ledger.start()
    if built.cache is not None:
        await built.cache.start()
    if parts.compress is not None:
        await parts.compress.start()
    loops = [asyncio.create_task(probe_loop(gw, parts.probe_interval_s, parts.shared)),
             asyncio.create_task(share_loop(parts.shared, parts.settings.health.share_interval_s))]
    try:
        yield
    finally:
        for task in loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await gw.close()
        if parts.compress is not None:
            parts.compress.close()
        if built.cache is not None:
            await built.cache.close()
        await budgets.close()
        for b in built.backends.values():
            await b.close()
        await built.context.close()
        if parts.ledger is not None:
            parts.ledger.close()
