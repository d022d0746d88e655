"""Every client error through the official SDK: the SDK's exception class, the status, and the
body {"error": {"message", "type", "param", "code"}}, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import openai
import pytest
from http_helpers import request_id, sdk

from gateway import hookimpl

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hi"}]


def check(exc: openai.APIStatusError, status: int, code: str, param: str | None = None,
          type_: str = "invalid_request_error") -> dict[str, Any]:
    """The error's status and body, as the SDK and the wire show them."""
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code == exc.code
    assert err["type"] == type_ == exc.type
    assert err["param"] == param == exc.param
    assert err["message"] and "Traceback" not in err["message"]
    assert exc.response.headers["content-type"] == "application/json"
    assert exc.response.headers["x-switchyard-request-id"]
    return err


def test_malformed_json(client, embedded_server):
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", content=b'{"model": "auto", "messages": [',
                    cast_to=httpx.Response, options={"headers": {"content-type": "application/json"}})
    assert "not valid JSON" in check(e.value, 400, "invalid_request")["message"]
    for raw in (b"", b"[1, 2]", b"null", b"\xff\xfe"):
        r = httpx.post(embedded_server.url + "/v1/chat/completions", content=raw,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
        assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("kw", "param"), [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"stop": 5}, "stop"),
    ({"stream": "yes please"}, "stream"),
    ({"logit_bias": {"5": 500}}, "logit_bias.5"),
    ({"logit_bias": {"999999999": 5}}, "logit_bias"),
    ({"top_logprobs": 2}, None),  # top_logprobs without logprobs
    ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
])
def test_wrong_types_and_ranges(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=HI, **kw)
    check(e.value, 400, "invalid_request", param)


@pytest.mark.parametrize(("messages", "param", "text"), [
    ([], "messages", "at least one message"),
    ([{"content": "no role"}], "messages.0.role", "Missing required parameter"),
    ([{"role": "wizard", "content": "hi"}], "messages.0.role", "Invalid value"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
     "messages", "text only"),
])
def test_bad_messages(client, messages, param, text):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=messages, max_tokens=2)
    assert text in check(e.value, 400, "invalid_request", param)["message"]


def test_missing_model_and_messages(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"messages": HI}, cast_to=httpx.Response)
    assert "Missing required parameter: 'model'" in check(e.value, 400, "invalid_request", "model")["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"model": "auto"}, cast_to=httpx.Response)
    check(e.value, 400, "invalid_request", "messages")


def test_unknown_model(client):
    for call in (
        lambda: client.chat.completions.create(model="gpt-17", messages=HI),
        lambda: client.completions.create(model="gpt-17", prompt="x"),
        lambda: client.embeddings.create(model="gpt-17", input="x"),
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert "gpt-17" in check(e.value, 404, "model_not_found", "model")["message"]


def test_endpoint_the_model_cannot_serve(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="auto", input="hello")
    check(e.value, 400, "model_not_supported", "model")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="minilm", messages=HI)
    check(e.value, 400, "model_not_supported", "model")


def test_bad_embedding_input(client):
    for bad in ("", [], ["ok", ""]):
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model="minilm", input=bad)
        check(e.value, 400, "invalid_request", "input")
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="x", dimensions=1000)
    check(e.value, 400, "invalid_request", "dimensions")


def test_stream_with_n_2_and_prompt_batches_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=HI, n=2, stream=True, max_tokens=2)
    check(e.value, 400, "invalid_request", "n")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="auto", prompt=["a", "b"], max_tokens=2)
    check(e.value, 400, "invalid_request", "prompt")


def test_prompt_longer_than_the_context(client):
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=long, max_tokens=2)
    assert "context" in check(e.value, 400, "context_length_exceeded")["message"]
    with pytest.raises(openai.BadRequestError) as e:  # streaming: refused before the first byte
        client.chat.completions.create(model="auto", messages=long, max_tokens=2, stream=True)
    check(e.value, 400, "context_length_exceeded")


def test_unknown_path_and_method(client, embedded_server):
    with pytest.raises(openai.NotFoundError) as e:
        client.get("/no/such/thing", cast_to=httpx.Response)
    err = e.value.response.json()["error"]
    assert err["code"] == "not_found" and "/v1/no/such/thing" in err["message"]
    r = httpx.get(embedded_server.url + "/v1/chat/completions")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]


def test_request_id_is_echoed(client):
    rid = request_id()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=HI, extra_headers={"x-request-id": rid})
    assert e.value.response.headers["x-switchyard-request-id"] == rid


def test_body_over_the_size_limit(settings_factory, serve_app):
    from gateway.http.app import create_app

    settings = settings_factory(server={"max_body_bytes": 2000},
                                backends=[{"name": "local-smol", "plugin": "llamacpp"}])
    with serve_app(create_app(settings)) as srv, sdk(srv.url) as c:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="local-smol", max_tokens=2,
                                      messages=[{"role": "user", "content": "x" * 5000}])
        check(e.value, 413, "request_too_large")
        # no content-length: the limit holds while the body streams in
        chunks = iter([b'{"model": "local-smol", "messages": [{"role": "user", "content": "'] +
                      [b"y" * 500] * 10 + [b'"}]}'])
        r = httpx.post(srv.url + "/v1/chat/completions", content=chunks)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        ok = c.chat.completions.create(model="local-smol", messages=HI, max_tokens=2)
        assert ok.choices[0].message.content is not None


class _Bugs:
    """A plugin whose backend and state store fail the way a bug would: a plain exception,
    not a ``SwitchyardError``."""

    @hookimpl
    def switchyard_register_backends(self, register: Any) -> None:
        from plugins.openai_compatible import OpenAICompatibleBackend, OpenAICompatibleConfig

        class LoadBug(OpenAICompatibleBackend):
            def load(self) -> Any:
                raise RuntimeError("bug in load()")

        register("load_bug", LoadBug, OpenAICompatibleConfig)

    @hookimpl
    def switchyard_register_state_stores(self, register: Any) -> None:
        from plugins.state_memory import MemoryStore

        class TeamsBug(MemoryStore):
            async def list_teams(self) -> Any:
                raise KeyError("bug in list_teams()")

        register("teams_bug", lambda config: TeamsBug())


def test_an_unexpected_exception_anywhere_is_the_openai_error_body(
    settings_factory, serve_app, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.http.app import create_app

    settings = settings_factory(
        admin_key="sk-admin-test", state={"kind": "teams_bug"},
        backends=[{"name": "buggy", "plugin": "load_bug", "model": "m",
                   "base_url": "http://127.0.0.1:1/v1"}],
        routes=[{"name": "auto", "backends": ["buggy"]}])
    app = create_app(settings, extra_plugins=[_Bugs()], health_interval_s=3600)
    with serve_app(app) as srv:
        for path, headers in (("/metrics", {}),
                              ("/admin/teams", {"authorization": "Bearer sk-admin-test"})):
            caplog.clear()
            rid = request_id()
            r = httpx.get(srv.url + path, headers={"x-request-id": rid, **headers})
            assert r.status_code == 500, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.headers["x-switchyard-request-id"] == rid
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == "internal_error" and err["type"] == "server_error"
            assert rid in err["message"] and "bug in" not in err["message"]
            errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
            assert len(errors) == 1, [rec.getMessage() for rec in errors]  # ours, not uvicorn's
            assert path in errors[0].getMessage() and rid in errors[0].getMessage()
        assert httpx.get(srv.url + "/healthz").status_code == 200  # the server lives on
