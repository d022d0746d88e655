"""Route handlers: a few lines each that call the pipeline."""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import (
    ClientDisconnected,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    SwitchyardError,
)
from gateway.http.server import TIMED_OUT
from gateway.http.streaming import EventStream
from gateway.interfaces import Endpoint
from gateway.pipeline.context import RequestContext
from gateway.pipeline.health import backend_health, can_take_traffic
from gateway.pipeline.service import Gateway
from gateway.protocol import parse_body, validate

log = logging.getLogger("switchyard.http")

JSON = "application/json"
# what a cache reads of a request (docs/cache.md); only looked up when a cache is on
CACHE_HEADERS = ("cache-control", "x-switchyard-cache-mode", "x-switchyard-cache-ttl",
                 "x-switchyard-cache-threshold")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers, media_type=JSON)


def error_response(err: SwitchyardError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id:
        headers["x-switchyard-request-id"] = request_id
    return json_response(err.body(), err.status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, up to ``limit`` bytes (else 413). A client that goes away while sending it
    is a 499 ``ClientDisconnected`` (or a 408 ``RequestTimeout`` when the server gave up
    waiting for it, see ``gateway.http.server``), logged at info: not a server error."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the {limit}-byte limit.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is larger than the {limit}-byte limit.")
            chunks.append(chunk)
    except ClientDisconnect:
        client = request.client and f"{request.client.host}:{request.client.port}"
        if request.scope.get(TIMED_OUT):
            raise RequestTimeout(f"The body did not arrive in time ({size} bytes of "
                                 f"{declared or 'a chunked body'}).") from None
        log.info("client %s disconnected after %d bytes of its %s %s body", client, size,
                 request.method, request.url.path)
        raise ClientDisconnected("The client disconnected while sending its body.") from None
    return b"".join(chunks)


_RID_PREFIX = "req_" + os.urandom(6).hex()  # per process: unique across replicas
_rid_counter = itertools.count(1)


def new_request_id(request: Request, header: str) -> str:
    """The client's own id when it sent a sane one, else ours (a random per-process
    prefix and a counter: unique, and no system call per request)."""
    rid = request.headers.get(header)
    if rid and len(rid) <= 128 and rid.isprintable():
        return rid
    return f"{_RID_PREFIX}{next(_rid_counter):08x}"


async def inference(request: Request, endpoint: Endpoint) -> Response:
    state = request.app.state
    gw: Gateway = state.gateway
    rid = new_request_id(request, state.settings.server.request_id_header)
    ctx = RequestContext(request_id=rid, policy=request.headers.get("x-switchyard-policy"))
    body: dict[str, Any] = {}
    in_pipeline = False  # past this, the pipeline records its own failures
    try:
        # the key first: an unauthenticated client learns nothing and sends no body we read
        await state.authenticate(request, ctx)
        raw = await read_body(request, state.settings.server.max_body_bytes)
        body = parse_body(raw)
        req = validate(endpoint, body)
        in_pipeline = True
        if state.cache_on:
            ctx.cache_headers = {k: v for k in CACHE_HEADERS
                                 if (v := request.headers.get(k)) is not None}
        if req.streaming:
            it, rec = await gw.stream(endpoint, body, ctx, req)
            headers = {"x-switchyard-request-id": rid, "cache-control": "no-cache",
                       "x-switchyard-backend": rec.backend or ""}
            if rec.backend:
                headers["x-switchyard-route"] = f"{rec.backend}; {rec.reason}"
            if rec.cache is not None:
                headers.update(rec.cache_headers())
            if rec.compress is not None:
                headers.update(rec.compress_headers())
            if rec.decision is not None and "cascade" in rec.decision:
                headers["x-switchyard-cascade"] = rec.cascade_header()
            return EventStream(it, headers)
        out, rec = await gw.complete(endpoint, body, ctx, req)
        return json_response(out, headers=rec.headers())
    except SwitchyardError as e:
        if not in_pipeline:  # every request leaves a record, refused ones too
            gw.reject(endpoint, body.get("model"), ctx, e)
        return error_response(e, rid)
    except Exception:
        log.exception("unhandled error in request %s", rid)
        err = InternalError(f"Internal error (request id {rid}).")
        gw.reject(endpoint, body.get("model"), ctx, err)
        return error_response(err, rid)


async def chat_completions(request: Request) -> Response:
    return await inference(request, "chat")


async def completions(request: Request) -> Response:
    return await inference(request, "completions")


async def embeddings(request: Request) -> Response:
    return await inference(request, "embeddings")


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    created = int(request.app.state.started_at)
    data = []
    for name, target in gw.router.targets.items():
        caps = sorted({c for b in target.backends for c in gw.backends[b].capabilities})
        data.append({"id": name, "object": "model", "created": created, "owned_by": "switchyard",
                     "switchyard": {"kind": target.kind, "backends": list(target.backends),
                                    "endpoints": caps}})
    return json_response({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    now = time.monotonic()
    backends = {name: backend_health(t, now) for name, t in gw.trackers.items()}
    # ready while some backend can take traffic
    ready = request.app.state.ready and any(can_take_traffic(b) for b in backends.values())
    return json_response({"status": "ready" if ready else "not ready", "backends": backends,
                          "replica": request.app.state.shared_health.replica},
                         200 if ready else 503)


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    m = gw.metrics
    for name, b in gw.backends.items():
        t = gw.trackers[name]
        m.inflight.labels(name).set(t.inflight)
        m.queue_depth.labels(name).set(b.load().queue_depth)
        m.breaker.labels(name).set(1 if t.breaker.peek(time.monotonic()) == "open" else 0)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
