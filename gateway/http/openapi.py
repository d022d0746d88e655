"""``GET /openapi.json``: an OpenAPI 3.1 document of the gateway's own endpoints.

The request bodies come from the pydantic wire models (``gateway.protocol`` and the admin
bodies), so the document says exactly what validation accepts; every error is the OpenAI
error body. It is built once, when the app is created, and served as stored bytes.
A schema-driven fuzzer (schemathesis) runs against it in the test suite.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.admin import DrainIn, KeyIn, TeamIn, TeamPatch
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.state import Team

JSON = "application/json"
_REF = "#/components/schemas/{model}"
_BODIES: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest,
                                        EmbeddingRequest, TeamIn, TeamPatch, KeyIn, DrainIn)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_NULLABLE_STR = {"type": ["string", "null"]}
_USAGE = _obj(["prompt_tokens", "total_tokens"], prompt_tokens=_INT, completion_tokens=_INT,
              total_tokens=_INT)

# what every backend's answer has; backends may add fields (``additionalProperties``)
_RESPONSES: dict[str, dict[str, Any]] = {
    "Error": _obj(["error"], error={
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": _STR, "type": _STR, "param": _NULLABLE_STR,
                       "code": _NULLABLE_STR}}),
    "Usage": _USAGE,
    "ChatCompletion": _obj(["id", "object", "created", "model", "choices"], id=_STR,
                           object={"const": "chat.completion"}, created=_INT, model=_STR,
                           choices={"type": "array", "items": {"type": "object"}},
                           usage=_ref("Usage")),
    "Completion": _obj(["id", "object", "created", "model", "choices"], id=_STR,
                       object={"const": "text_completion"}, created=_INT, model=_STR,
                       choices={"type": "array", "items": {"type": "object"}},
                       usage=_ref("Usage")),
    "EmbeddingList": _obj(["object", "data", "model"], object={"const": "list"}, model=_STR,
                          usage=_ref("Usage"), data={"type": "array", "items": _obj(
                              ["object", "index", "embedding"], object={"const": "embedding"},
                              index=_INT, embedding={"anyOf": [
                                  {"type": "array", "items": _NUM}, _STR]})}),
    "ModelList": _obj(["object", "data"], object={"const": "list"}, data={
        "type": "array", "items": _obj(["id", "object", "created", "owned_by"], id=_STR,
                                       object={"const": "model"}, created=_INT,
                                       owned_by=_STR)}),
    # one server-sent event (OpenAPI 3.1: the schema of an event stream is one event's)
    "Event": _obj(["data"], data={"type": "string", "description": "a JSON chunk; the last "
                                  "event is [DONE], or an error body after the first byte"}),
    "Status": _obj(["status"], status=_STR),
    "Readiness": _obj(["status", "backends", "replica"], status={
        "enum": ["ready", "not ready"]}, backends={"type": "object"}, replica=_STR),
    "Key": _obj(["key_id", "team", "name", "created_at", "revoked"], key_id=_STR, team=_STR,
                name=_STR, created_at=_NUM, revoked={"type": "boolean"}),
    "List": _obj(["object", "data"], object={"const": "list"}, data={"type": "array"}),
    "Object": {"type": "object"},
}


def _schemas() -> dict[str, Any]:
    """Every schema of the document, request bodies generated from their models."""
    _, top = models_json_schema([(m, "validation") for m in _BODIES], ref_template=_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    team = TypeAdapter(Team).json_schema(ref_template=_REF)
    schemas.update(team.pop("$defs", {}))
    schemas["Team"] = team
    schemas.update(_RESPONSES)
    return schemas


_ERRORS = {
    "400": "invalid request: the body or a parameter is wrong",
    "401": "missing, unknown, revoked or expired key",
    "403": "the key's team may not use this model or backend",
    "404": "unknown model, path or object",
    "405": "method not allowed on this path",
    "409": "the object exists",
    "413": "the body is larger than server.max_body_bytes",
    "429": "rate limited (Retry-After) or budget exhausted (insufficient_quota)",
    "502": "the backend failed",
    "503": "no backend can take the request, or the state store is unreachable",
    "504": "the backend timed out",
}


def _errors(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {c: {"description": _ERRORS[c], "content": {
        JSON: {"schema": _ref("Error")}}} for c in codes}
    out["default"] = {"description": "any other error, the same body",
                      "content": {JSON: {"schema": _ref("Error")}}}
    return out


def _ok(schema: str, description: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


def _inference(summary: str, body: str, answer: str, stream: bool) -> dict[str, Any]:
    ok = _ok(answer, "the answer")
    if stream:
        ok["200"]["content"]["text/event-stream"] = {"schema": _ref("Event")}
        ok["200"]["description"] = "the answer; with stream: true, server-sent events"
    return {"post": {
        "summary": summary, "operationId": body[0].lower() + body[1:],
        "security": [{}, {"bearerAuth": []}],
        "parameters": [{"name": "x-switchyard-policy", "in": "header", "required": False,
                        "schema": _STR, "description": "routing policy for this request"}],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
        "responses": ok | _errors("400", "401", "403", "404", "413", "429", "502", "503",
                                  "504"),
    }}


def _get(summary: str, op: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": op, "security": [],
                    "responses": ok, **extra}}


def _public_paths() -> dict[str, Any]:
    text = {"200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": _STR}}}}
    ready = _ok("Readiness", "some backend can take traffic")
    ready["503"] = {"description": "not ready: no backend can take traffic",
                    "content": {JSON: {"schema": _ref("Readiness")}}}
    return {
        "/v1/chat/completions": _inference("Chat completion", "ChatCompletionRequest",
                                           "ChatCompletion", True),
        "/v1/completions": _inference("Text completion", "CompletionRequest", "Completion",
                                      True),
        "/v1/embeddings": _inference("Embeddings", "EmbeddingRequest", "EmbeddingList", False),
        "/v1/models": _get("Models served, with their backends", "listModels",
                           _ok("ModelList", "the models")),
        "/healthz": _get("Liveness", "healthz", _ok("Status", "the process answers")),
        "/readyz": _get("Readiness, per-backend health", "readyz", ready),
        "/metrics": _get("Prometheus metrics", "metrics", text),
        "/openapi.json": _get("This document", "openapi",
                              _ok("Object", "the OpenAPI document")),
    }


def _admin(method: str, op: str, summary: str, ok: dict[str, Any], *errors: str,
           body: str | None = None, params: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"summary": summary, "operationId": op, "tags": ["admin"],
                            "security": [{"bearerAuth": []}],
                            "responses": ok | _errors("400", "401", "403", *errors, "503")}
    if body is not None:
        spec["requestBody"] = {"required": body != "DrainIn", "content": {
            JSON: {"schema": _ref(body)}}}
    if params:
        spec["parameters"] = list(params)
    return {method: spec}


def _param(name: str, where: str = "path", description: str = "") -> dict[str, Any]:
    p = {"name": name, "in": where, "required": where == "path", "schema": _STR}
    return p | ({"description": description} if description else {})


def _admin_paths() -> dict[str, Any]:
    team, key, backend = _param("name"), _param("key_id"), _param("name")
    since = "a Unix time or an ISO date"
    return {
        "/admin/teams": _admin("post", "createTeam", "Create a team", _ok("Team", "the team",
                               "201"), "409", body="TeamIn")
        | _admin("get", "listTeams", "List the teams", _ok("List", "the teams")),
        "/admin/teams/{name}": _admin("get", "getTeam", "A team", _ok("Team", "the team"),
                                      "404", params=(team,))
        | _admin("patch", "patchTeam", "Change a team", _ok("Team", "the team"), "404",
                 body="TeamPatch", params=(team,))
        | _admin("delete", "deleteTeam", "Delete a team and its keys",
                 _ok("Object", "what was deleted"), "404", params=(team,)),
        "/admin/teams/{name}/spend": _admin("get", "teamSpend", "A team's spend this period",
                                            _ok("Object", "spend"), "404", params=(team,)),
        "/admin/keys": _admin("post", "createKey", "Create a key (its secret shown once)",
                              _ok("Key", "the key", "201"), "404", "409", body="KeyIn")
        | _admin("get", "listKeys", "List keys", _ok("List", "the keys"), "404",
                 params=(_param("team", "query"),)),
        "/admin/keys/{key_id}": _admin("get", "getKey", "A key", _ok("Key", "the key"), "404",
                                       params=(key,))
        | _admin("delete", "revokeKey", "Revoke a key", _ok("Key", "the key"), "404",
                 params=(key,)),
        "/admin/keys/{key_id}/rotate": _admin("post", "rotateKey", "Rotate a key",
                                              _ok("Key", "the new key", "201"), "404", "409",
                                              params=(key,)),
        "/admin/spend": _admin("get", "spend", "Spend from the ledger, grouped",
                               _ok("List", "the groups"), params=(
                                   _param("group_by", "query", "comma-separated"),
                                   _param("team", "query"), _param("since", "query", since),
                                   _param("until", "query", since))),
        "/admin/report": _admin("get", "report", "The savings report (docs/report.md)",
                                _ok("Object", "the report"), params=(
                                    _param("group_by", "query", "team, route, backend or day"),
                                    _param("team", "query"), _param("route", "query"),
                                    _param("since", "query", since),
                                    _param("until", "query", since))),
        "/admin/backends": _admin("get", "listBackends", "Backends and their health",
                                  _ok("List", "the backends")),
        "/admin/backends/{name}/drain": _admin("post", "drainBackend", "Drain a backend",
                                               _ok("Object", "the backend"), "404",
                                               body="DrainIn", params=(backend,)),
        "/admin/backends/{name}/undrain": _admin("post", "undrainBackend", "Undrain a backend",
                                                 _ok("Object", "the backend"), "404",
                                                 params=(backend,)),
    }


def _dashboard_paths() -> dict[str, Any]:
    """``/dashboard`` (gateway.http.dashboard): HTML pages behind a login form and an
    HttpOnly session cookie; errors in the usual JSON body."""
    html = {"content": {"text/html": {"schema": _STR}}}
    page = {"200": {"description": "the dashboard, or the login form without a session",
                    **html}}
    query = tuple(_param(n, "query") for n in ("since", "until", "team", "route", "group_by"))
    form = {"type": "object", "properties": {"key": _STR, "next": _STR}, "required": ["key"]}
    signed = {"303": {"description": "to /dashboard, with the session cookie (a client that "
                                     "follows it gets the page)"}} | page
    cookie: list[dict[str, list[str]]] = [{"dashboardSession": []}]
    return {
        "/dashboard": {"get": {"summary": "The live savings report (docs/report.md)",
                               "operationId": "dashboard", "tags": ["dashboard"],
                               "security": [{}, *cookie], "parameters": list(query),
                               "responses": page | _errors("400", "403")}},
        "/dashboard/body": {"get": {"summary": "The dashboard's body, for its refresh",
                                    "operationId": "dashboardBody", "tags": ["dashboard"],
                                    "security": cookie, "parameters": list(query),
                                    "responses": {"200": {"description": "the body", **html}}
                                    | _errors("400", "401", "403")}},
        "/dashboard/login": {"post": {
            "summary": "Sign in with the admin key or a team's key (in the body, never a URL)",
            "operationId": "dashboardLogin", "tags": ["dashboard"], "security": [],
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": form}}},
            "responses": signed | {"401": {"description": "not a valid key: the form again",
                                           **html}} | _errors("403", "413")}},
        "/dashboard/logout": {"post": {"summary": "End the session", "tags": ["dashboard"],
                                       "operationId": "dashboardLogout", "security": [],
                                       "responses": signed | _errors("403")}},
    }


def _version() -> str:
    try:
        return version("switchyard")
    except PackageNotFoundError:
        return "0"


def openapi_document() -> dict[str, Any]:
    """The whole document (OpenAPI 3.1, JSON Schema 2020-12 schemas)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchyard", "version": _version(),
                 "description": "OpenAI-compatible LLM gateway. Errors are always "
                                '{"error": {"message", "type", "param", "code"}}.'},
        "paths": _public_paths() | _admin_paths() | _dashboard_paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"dashboardSession": {
                "type": "apiKey", "in": "cookie", "name": "switchyard_dashboard",
                "description": "the session /dashboard/login sets (HttpOnly)"},
                "bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "a virtual key (sk-sy-...) when the gateway has teams; "
                               "the admin key for /admin"}},
        },
    }


def openapi_route() -> Route:
    """``GET /openapi.json``, the document serialised once, here."""
    raw = orjson.dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return Response(raw, media_type=JSON)

    return Route("/openapi.json", openapi, methods=["GET"])
