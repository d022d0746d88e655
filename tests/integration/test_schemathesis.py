"""schemathesis against the gateway's own ``/openapi.json``: valid and invalid requests
generated from the document, for every operation, on real uvicorn. No answer is a 5xx,
every answer matches the schema the document gives for its status (errors: the OpenAI
error body), and every status is one the document lists.

The gateway serves fast real backends (``echo`` for chat and completions, the local MiniLM
for embeddings); a team with a key exists from the start, so inference requests go through
key checks and budget reservation. Cases are derandomized and bounded: CI runs the same few
hundred each time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import make_settings, serve

from gateway.http.openapi import openapi_document
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

ADMIN = "admin-schemathesis-key"


@dataclass
class Served:
    url: str
    keys: dict[str, str]  # the admin key for /admin, a team's key for the rest
    app: Any


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from gateway.http.app import create_app

    settings_ = make_settings(
        tmp_path_factory.mktemp("schemathesis"), admin_key=ADMIN,
        backends=[{"name": "parrot", "plugin": "echo", "model": "echo-1",
                   "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
                  {"name": "minilm", "plugin": "sentence_transformers"}],
        routes=[{"name": "auto", "backends": ["parrot"]}],
    )
    app = create_app(settings_)
    with serve(app) as srv:
        admin = {"authorization": f"Bearer {ADMIN}"}
        r = httpx.post(srv.url + "/admin/teams", json={"name": "st", "budget_usd": 1e6},
                       headers=admin)
        assert r.status_code == 201, r.text
        r = httpx.post(srv.url + "/admin/keys", json={"team": "st", "name": "k"}, headers=admin)
        assert r.status_code == 201, r.text
        yield Served(srv.url, {"/admin": ADMIN, "/": r.json()["key"]}, app)


@pytest.fixture(scope="module")
def api(gateway: Served) -> Any:
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json")


MODELS = {"/v1/chat/completions": ["auto", "echo-1", "parrot"],
          "/v1/completions": ["auto", "echo-1", "parrot"],
          "/v1/embeddings": ["all-MiniLM-L6-v2", "minilm"]}


def served(cases: st.SearchStrategy[Any], path: str) -> st.SearchStrategy[Any]:
    """Valid inference bodies name a model the gateway serves (else nearly every one is
    a 404 that never reaches routing, budgets or a backend)."""
    if path not in MODELS:
        return cases

    def name_a_model(pair: tuple[Any, str]) -> Any:
        case, model = pair
        if isinstance(case.body, dict):
            case.body["model"] = model
        return case

    return st.tuples(cases, st.sampled_from(MODELS[path])).map(name_a_model)


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]
# one test per operation of the document (schemathesis' own pytest loader needs a pytest
# older than ours: it sets a node's private ``_nodeid``)
OPERATIONS = [f"{method.upper()} {path}" for path, ops in openapi_document()["paths"].items()
              for method in ops]


@pytest.mark.parametrize("label", OPERATIONS)
def test_the_openapi_document_holds(label: str, api: Any, gateway: Served) -> None:
    url, keys = gateway.url, gateway.keys
    op = api.find_operation_by_label(label)
    assert op is not None, f"{label} is not in the served document"
    key = keys["/admin"] if op.path.startswith("/admin") else keys["/"]
    cases = st.one_of(served(op.as_strategy(GenerationMode.POSITIVE), op.path),
                      op.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=40 if op.path in MODELS else 10, deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case: Any) -> None:
        case.call_and_validate(base_url=url, headers={"authorization": f"Bearer {key}"},
                               checks=CHECKS, timeout=15)

    run()


def test_every_endpoint_is_documented(gateway: Served) -> None:
    """The served document lists exactly the app's routes, and says what validation says."""
    r = httpx.get(gateway.url + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = {(m, re.sub(r"{(\w+):\w+}", r"{\1}", route.path))
              for route in gateway.app.routes for m in route.methods or () if m != "HEAD"}
    assert documented == routes
    schemas = doc["components"]["schemas"]
    for model in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest):
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert chat["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
