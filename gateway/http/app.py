"""``create_app(settings)``: builds its own plugin manager, backends, router and pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.backend import BackendContext
from gateway.config import BackendConfig, Settings, validation_errors
from gateway.energy import FairShare, open_meters
from gateway.errors import ConfigError, MethodNotAllowed, NotFound, SwitchyardError
from gateway.http import routes as r
from gateway.http.admin import Budgets, admin_routes, build_budgets
from gateway.http.openapi import openapi_route
from gateway.interfaces import Backend
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline.context import RequestContext
from gateway.pipeline.health import SharedHealth
from gateway.pipeline.routing import Router, build_targets
from gateway.pipeline.service import Gateway
from gateway.registry import Registry, build_registry
from gateway.telemetry import Tracker, make_trackers

log = logging.getLogger("switchyard")


@dataclass
class Built:
    registry: Registry
    backends: dict[str, Backend]
    context: BackendContext


def build_registry_for(settings: Settings, extra_plugins: Iterable[object] = (),
                       load_entry_points: bool = True) -> Registry:
    return build_registry(
        load_entry_points=load_entry_points,
        modules=settings.plugins,
        extra=extra_plugins,
        disable=settings.disable_plugins,
    )


def build_backends(settings: Settings, registry: Registry,
                   context: BackendContext | None = None) -> Built:
    """Validate every backend section against its plugin's model; report all errors at once."""
    errors: list[tuple[str, str]] = []
    ctx = context or BackendContext()
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
    for i, route in enumerate(settings.routes):
        if route.policy not in registry.policies:
            known = ", ".join(sorted(registry.policies))
            errors.append((f"routes[{i}].policy", f"unknown policy {route.policy!r} (known: {known})"))
    if errors:
        raise ConfigError(errors)
    return Built(registry, backends, ctx)


async def _no_auth(request: Request, ctx: RequestContext) -> None:
    return None


async def _probe(name: str, backend: Backend, t: Tracker, timeout_s: float,
                 unhealthy_after: int = 2) -> None:
    """One active health check. A backend is marked unhealthy after ``unhealthy_after``
    failed checks in a row (one slow answer is not an outage), healthy after one success."""
    try:
        await asyncio.wait_for(backend.probe(), timeout=timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - reported, never raised to the client
        t.probe_failures += 1
        if t.probe_failures >= unhealthy_after and t.last_probe_ok is not False:
            log.warning("backend %s failed %d health checks: %s", name, t.probe_failures,
                        type(e).__name__)
            t.last_probe_ok = False
        return
    if t.last_probe_ok is False:
        log.info("backend %s passed its health check again", name)
    t.probe_failures = 0
    t.last_probe_ok = True


async def _probe_loop(gw: Gateway, interval_s: float, shared: SharedHealth) -> None:
    """Checks every backend concurrently, so one slow backend does not delay the others,
    then shares what it found with the other replicas."""
    timeout_s = max(1.0, interval_s)
    while True:
        await asyncio.gather(*(_probe(n, b, gw.trackers[n], timeout_s)
                               for n, b in gw.backends.items()))
        await shared.after_probes()
        await asyncio.sleep(interval_s)


async def _share_loop(shared: SharedHealth, interval_s: float) -> None:
    """Publishes breakers that opened here and reads the marks of the other replicas."""
    while True:
        await shared.tick()
        await asyncio.sleep(interval_s)


class SwitchyardApp(Starlette):
    """Starlette, with the inference endpoints served without its middleware and router
    (their handlers catch every error themselves): a few dozen microseconds less per
    request on the hot path. Everything else goes through Starlette as usual."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_routes: dict[str, Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


@dataclass
class Parts:
    """Everything ``create_app`` builds, in the order the lifespan starts it."""

    settings: Settings
    built: Built
    router: Router
    gateway: Gateway
    budgets: Budgets
    shared: SharedHealth
    ledger: Ledger | None
    probe_interval_s: float


def _build_router(settings: Settings, registry: Registry, built: Built,
                  trackers: dict[str, Tracker]) -> Router:
    policies = {name: e.value({}) for name, e in registry.policies.items()}
    for route in settings.routes:
        if route.policy_options:
            factory = registry.policies[route.policy].value
            policies[f"{route.name}:{route.policy}"] = factory(route.policy_options)
    return Router(
        backends=built.backends,
        trackers=trackers,
        targets=build_targets(built.backends, _routes_with_options(settings)),
        policies=policies,
        editors=[e.value for e in registry.plan_editors.values()],
    )


def _energy_meters(backends: dict[str, Backend]) -> dict[str, FairShare]:
    """One meter per device: backends on one GPU or RAPL package share it (billed once)."""
    return open_meters((name, b.config.energy.measure, b.config.energy.device,
                        b.config.energy.rapl_path)
                       for name, b in backends.items() if b.config.energy.measure != "profile")


def build_parts(settings: Settings, *, extra_plugins: Iterable[object] = (),
                load_entry_points: bool = True, context: BackendContext | None = None,
                health_interval_s: float | None = None) -> Parts:
    registry = build_registry_for(settings, extra_plugins, load_entry_points)
    built = build_backends(settings, registry, context)
    trackers = make_trackers(settings.health, built.backends)
    router = _build_router(settings, registry, built, trackers)
    metrics = Metrics()
    ledger = (Ledger(settings.ledger.path, settings.ledger.flush_interval_s)
              if settings.ledger.kind == "sqlite" else None)
    budgets = build_budgets(settings, registry, metrics)
    probe_interval_s = health_interval_s or settings.health.probe_interval_s
    gw = Gateway(backends=built.backends, router=router, trackers=trackers, metrics=metrics,
                 registry=registry, ledger=ledger, energy_meters=_energy_meters(built.backends),
                 admission=budgets.admission, retry=settings.health.retry,
                 plugin_text_chars=settings.plugin_text_chars)
    shared = SharedHealth(budgets.store, trackers, probe_interval_s)
    return Parts(settings, built, router, gw, budgets, shared, ledger, probe_interval_s)


def _lifespan(parts: Parts, freeze_gc: bool) -> Callable[[Starlette], Any]:
    gw, built, budgets = parts.gateway, parts.built, parts.budgets

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for name, b in built.backends.items():
            log.info("starting backend %s (%s, model %s)", name, b.config.plugin, b.model)
            t0 = time.perf_counter()
            await b.start()
            log.info("backend %s ready in %.1f s", name, time.perf_counter() - t0)
        await budgets.start()
        prober = asyncio.create_task(_probe_loop(gw, parts.probe_interval_s, parts.shared))
        sharer = asyncio.create_task(
            _share_loop(parts.shared, parts.settings.health.share_interval_s))
        if freeze_gc:
            # what start-up loaded lives as long as the process: out of the collector's way,
            # so a full collection does not walk the libraries' graph (p99 at 32 connections
            # 36 ms -> 13 ms in bench/overhead.py). Only for a process that serves one app.
            gc.collect()
            gc.freeze()
        app.state.ready = True
        log.info("switchyard ready: %d backends, models: %s", len(built.backends),
                 ", ".join(parts.router.targets))
        try:
            yield
        finally:
            app.state.ready = False
            for task in (prober, sharer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await gw.close()
            await budgets.close()
            for b in built.backends.values():
                await b.close()
            await built.context.close()
            if parts.ledger is not None:
                parts.ledger.close()

    return lifespan


async def _not_found(request: Request, exc: Exception) -> Response:
    return r.error_response(NotFound(f"Unknown path {request.url.path}."))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    headers = dict(getattr(exc, "headers", None) or {})  # Starlette's Allow header
    return r.error_response(MethodNotAllowed(
        f"{request.method} is not allowed on {request.url.path}.", headers=headers))


_INFERENCE = {
    "/v1/chat/completions": r.chat_completions,
    "/v1/completions": r.completions,
    "/v1/embeddings": r.embeddings,
}


def create_app(
    settings: Settings,
    *,
    extra_plugins: Iterable[object] = (),
    load_entry_points: bool = True,
    context: BackendContext | None = None,
    health_interval_s: float | None = None,
    freeze_gc: bool = False,
) -> Starlette:
    parts = build_parts(settings, extra_plugins=extra_plugins,
                        load_entry_points=load_entry_points, context=context,
                        health_interval_s=health_interval_s)
    app = SwitchyardApp(
        routes=[
            *(Route(path, handler, methods=["POST"]) for path, handler in _INFERENCE.items()),
            Route("/v1/models", r.list_models, methods=["GET"]),
            Route("/healthz", r.healthz, methods=["GET"]),
            openapi_route(),
            Route("/readyz", r.readyz, methods=["GET"]),
            Route("/metrics", r.metrics, methods=["GET"]),
            *admin_routes(),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
        lifespan=_lifespan(parts, freeze_gc),
    )
    app.fast_routes = dict(_INFERENCE)
    s = app.state
    s.settings, s.gateway, s.ledger = settings, parts.gateway, parts.ledger
    s.registry, s.budgets, s.shared_health = parts.built.registry, parts.budgets, parts.shared
    s.authenticate = parts.budgets.authenticate
    s.started_at = time.time()
    s.ready = False
    return app


def _routes_with_options(settings: Settings) -> list[Any]:
    out = []
    for route in settings.routes:
        if route.policy_options:
            route = route.model_copy(update={"policy": f"{route.name}:{route.policy}"})
        out.append(route)
    return out
