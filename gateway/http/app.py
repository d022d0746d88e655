"""``create_app(settings)``: the routes mounted on the parts ``gateway.assembly`` builds
(its own plugin manager, backends, router and pipeline), and one error shape for all of them."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.assembly import Parts, build_parts, running
from gateway.backend import BackendContext
from gateway.config import Settings
from gateway.errors import InternalError, MethodNotAllowed, NotFound
from gateway.http import routes as r
from gateway.http.admin import admin_routes
from gateway.http.dashboard import dashboard_routes
from gateway.http.openapi import openapi_route

log = logging.getLogger("switchyard")


class CatchAll:
    """The last line: any exception a handler lets through answers 500 with the OpenAI error
    body and a request id (never Starlette's plain-text 500), logged once. Inside
    Starlette's own error middleware, which would answer in plain text and log again."""

    def __init__(self, app: ASGIApp, request_id_header: str) -> None:
        self.app, self.header = app, request_id_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            request = Request(scope)
            rid = r.new_request_id(request, self.header)
            log.exception("unhandled error in %s %s (request id %s)", request.method,
                          request.url.path, rid)
            if not started:  # else the client sees the response cut short
                err = InternalError(f"Internal error (request id {rid}).")
                await r.error_response(err, rid)(scope, receive, send)


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


def _lifespan(parts: Parts, freeze_gc: bool) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(parts):
            if freeze_gc:
                # what start-up loaded lives as long as the process: out of the collector's
                # way, so a full collection does not walk the libraries' graph (p99 at 32
                # connections 36 ms -> 13 ms in bench/overhead.py). Only for a process that
                # serves one app.
                gc.collect()
                gc.freeze()
            app.state.ready = True
            log.info("switchyard ready: %d backends, models: %s", len(parts.built.backends),
                     ", ".join(parts.router.targets))
            try:
                yield
            finally:
                app.state.ready = False

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
            *dashboard_routes(),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
        middleware=[Middleware(CatchAll,
                               request_id_header=settings.server.request_id_header)],
        lifespan=_lifespan(parts, freeze_gc),
    )
    app.fast_routes = dict(_INFERENCE)
    s = app.state
    s.settings, s.gateway, s.ledger = settings, parts.gateway, parts.ledger
    s.registry, s.budgets, s.shared_health = parts.built.registry, parts.budgets, parts.shared
    s.authenticate = parts.budgets.authenticate
    s.cache_on = parts.built.cache is not None
    s.started_at = time.time()
    s.ready = False
    return app
