"""Fuzzing the request path with hypothesis: any JSON value in any field of a valid request,
arbitrary extra fields, arbitrary bodies and headers get a 2xx, or a 4xx with the OpenAI
error body; never a 5xx (nor a server error inside a stream), never a hang.

One gateway on real uvicorn for the module, with fast real backends (the ``echo`` plugin for
chat and completions, the local MiniLM for embeddings) and a team with a budget, so every
request goes through key checks, admission and budget reservation as in production.
Examples are derandomized and no example database is kept: CI runs the same cases each time.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import LiveServer, make_settings, serve

from gateway.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
    SwitchyardOptions,
)

ADMIN = "admin-fuzz-key"
TIMEOUT = httpx.Timeout(15.0)  # a request that takes longer is a hang: the test fails

FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---- the gateway -------------------------------------------------------------------------


class Gateway:
    def __init__(self, srv: LiveServer, key: str) -> None:
        self.srv, self.key = srv, key
        self.http = httpx.Client(base_url=srv.url, timeout=TIMEOUT)

    def post(self, path: str, content: bytes,
             headers: Mapping[str, str | bytes] | None = None) -> httpx.Response:
        h: dict[str, str | bytes] = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        h.update(headers or {})
        with self.http.stream("POST", path, content=content, headers=h) as r:
            r.read()  # a stream is read to its end: an error event in it counts
            return r


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from gateway.http.app import create_app

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = make_settings(
        tmp, admin_key=ADMIN,
        backends=[{"name": "parrot", "plugin": "echo", "model": "echo-1",
                   "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
                  {"name": "minilm", "plugin": "sentence_transformers"}],
        routes=[{"name": "auto", "backends": ["parrot"]}],
    )
    with serve(create_app(settings_)) as srv:
        admin = {"authorization": f"Bearer {ADMIN}"}
        team = {"name": "fuzz", "budget_usd": 1000.0}
        assert httpx.post(srv.url + "/admin/teams", json=team, headers=admin).status_code == 201
        r = httpx.post(srv.url + "/admin/keys", json={"team": "fuzz", "name": "k"}, headers=admin)
        assert r.status_code == 201, r.text
        g = Gateway(srv, r.json()["key"])
        yield g
        g.http.close()


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()  # not orjson: integers past 64 bits are JSON too


def check(r: httpx.Response, sent: Any, stream: bool | None = None) -> None:
    """2xx, or 4xx with exactly the OpenAI error body; a stream holds no error. With
    ``stream``, an accepted request is answered as a stream exactly when the client sent
    ``"stream": true`` (not ``"true"``, not ``1``)."""
    assert r.status_code < 500, f"{r.status_code} for {sent!r}: {r.text}"
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/json", sent
        body = r.json()
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"], err
        assert isinstance(err["type"], str) and err["type"] != "server_error", err
        return
    assert 200 <= r.status_code < 300, (r.status_code, sent)
    streamed = r.headers["content-type"].startswith("text/event-stream")
    if stream is not None:
        assert streamed == stream, f"stream={streamed} for {sent!r}"
    if streamed:
        for line in r.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = orjson.loads(line[6:])
                assert "error" not in event, f"stream error for {sent!r}: {event}"
    else:
        assert isinstance(r.json(), dict), sent


def streams(path: str, body: dict[str, Any]) -> bool:
    return "embeddings" not in path and body.get("stream") is True


# ---- strategies --------------------------------------------------------------------------

# values validation may coerce (lax mode: "5" and 5.0 are integers, "true" a boolean) while
# the body the gateway keeps has the original: half of the values are of this kind
_LAX = (st.integers(-2, 10).map(str) | st.integers(0, 10).map(float) | st.booleans()
        | st.sampled_from(["true", "false", "yes", "off", "1.5", "1e3", " 5", "0x10", "null"]))
_SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from(["auto", "echo-1", "all-MiniLM-L6-v2", "user", "text", "",
                               "stream", -1, 2**63, 1e308]))
JSON = _LAX | st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)

_PART = ("messages", 0, "content", 0)
_BASES: dict[str, tuple[str, dict[str, Any], list[tuple[Any, ...]]]] = {
    "chat": ("/v1/chat/completions", {
        "model": "auto", "max_tokens": 4,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
    }, [(f,) for f in ChatCompletionRequest.model_fields]
       + [("messages", 0), ("messages", 1), _PART, (*_PART, "text"), (*_PART, "type")]
       + [("messages", 0, f) for f in ChatMessage.model_fields]),
    "completions": ("/v1/completions", {"model": "auto", "prompt": "hi there", "max_tokens": 4},
                    [(f,) for f in CompletionRequest.model_fields] + [("prompt", 0)]),
    "embeddings": ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["hi there"]},
                   [(f,) for f in EmbeddingRequest.model_fields] + [("input", 0)]),
}
_NESTED = ([("switchyard", f) for f in SwitchyardOptions.model_fields]
           + [("stream_options", f) for f in StreamOptions.model_fields] + [("logit_bias", "5")])


def put(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set ``body[path] = value``, making (or replacing) the containers on the way: a dict
    for a name, a list for an index; an index past a list's end appends."""
    cur: Any = body
    for key, nxt in itertools.pairwise(path):
        want = list if isinstance(nxt, int) else dict
        if isinstance(cur, list) and key >= len(cur):
            key = len(cur)
            cur.append(want())
        elif isinstance(cur, dict) and key not in cur:
            cur[key] = want()
        if not isinstance(cur[key], want):
            cur[key] = want()
        cur = cur[key]
    last = path[-1]
    if isinstance(cur, list):
        cur[last:last + 1] = [value]
    else:
        cur[last] = value


@st.composite
def field_cases(draw: st.DrawFn, endpoint: str) -> tuple[str, dict[str, Any]]:
    """A valid body with one field (or a nested one) replaced by any JSON value, maybe a
    second one too, maybe streamed."""
    path, base, fields = _BASES[endpoint]
    body = json.loads(json.dumps(base))
    where = st.sampled_from(fields + (_NESTED if endpoint != "embeddings" else []))
    for p in draw(st.lists(where, min_size=1, max_size=2, unique=True)):
        put(body, p, draw(JSON))
    if endpoint != "embeddings" and "stream" not in body and draw(st.booleans()):
        body["stream"] = True
    return path, body


@st.composite
def extra_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid body of any endpoint with arbitrary extra fields."""
    path, base, _ = _BASES[draw(st.sampled_from(sorted(_BASES)))]
    extra = draw(st.dictionaries(st.text(max_size=12), JSON, min_size=1, max_size=3))
    return path, {**base, **{k: v for k, v in extra.items() if k not in base}}


# ---- the properties ----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", sorted(_BASES))
@FUZZ
@given(data=st.data())
def test_any_json_in_any_field(gw: Gateway, endpoint: str, data: st.DataObject) -> None:
    path, body = data.draw(field_cases(endpoint))
    check(gw.post(path, dumps(body)), body, streams(path, body))


@settings(FUZZ, max_examples=30)
@given(case=extra_cases())
def test_extra_fields(gw: Gateway, case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    check(gw.post(path, dumps(body)), body, streams(path, body))


# what the fuzzing found (each a 5xx, a 502 or a stream the client did not ask for, before
# validation became strict): kept as explicit cases, so they run on every commit
_HI = [{"role": "user", "content": "hi"}]
FOUND = [
    ("/v1/chat/completions", {"model": "auto", "messages": [
        {"role": "user", "content": [{"type": "text", "text": None}]}]}),
    ("/v1/chat/completions", {"model": "auto", "messages": [
        {"role": "user", "content": [{"text": {"a": 1}}]}]}),
    ("/v1/completions", {"model": "auto", "prompt": "hi", "max_tokens": "4"}),
    ("/v1/chat/completions", {"model": "auto", "messages": _HI, "max_completion_tokens": "5"}),
    ("/v1/completions", {"model": "auto", "prompt": "hi", "switchyard": {"ttft_slo_ms": "3"}}),
    ("/v1/chat/completions", {"model": "auto", "messages": _HI, "switchyard": [1]}),
    ("/v1/chat/completions", {"model": "auto", "messages": _HI, "stream": "false"}),
    ("/v1/completions", {"model": "auto", "prompt": "hi", "stream": "0"}),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["hi"], "dimensions": 4.0}),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["hi"], "dimensions": "4"}),
]


@pytest.mark.parametrize(("path", "body"), FOUND,
                         ids=[f"{i}-{p.rsplit('/', 1)[1]}" for i, (p, _) in enumerate(FOUND)])
def test_what_fuzzing_found(gw: Gateway, path: str, body: dict[str, Any]) -> None:
    check(gw.post(path, dumps(body)), body, streams(path, body))


_PATHS = st.sampled_from([p for p, _, _ in _BASES.values()])
_RAW = (st.binary(max_size=64)
        | JSON.map(lambda v: json.dumps(v).encode())  # any JSON, objects and not
        | st.sampled_from([b"NaN", b'{"model": NaN}', b'{"model": "auto", "max_tokens": 1e999}',
                           b'{"model": "auto", "messages": [{"role": "user", "content": "\\ud800"}]}',
                           b'{"model": "auto", "model": 1}', b"\xef\xbb\xbf{}", b"{" * 10_000,
                           b'{"model": "auto", "prompt": "x", "max_tokens": 99999999999999999999}']))


@settings(FUZZ, max_examples=50)
@given(path=_PATHS, raw=_RAW)
def test_any_body(gw: Gateway, path: str, raw: bytes) -> None:
    check(gw.post(path, raw), raw)


_TOKEN = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True)
_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                 max_size=40).map(str.strip)
_NAMES = _TOKEN.filter(lambda n: n.lower() not in {"content-length", "transfer-encoding", "host",
                                                   "connection", "expect", "upgrade"})
_KNOWN = st.sampled_from(["authorization", "content-type", "x-switchyard-policy", "x-request-id",
                          "accept", "accept-encoding", "content-encoding", "x-forwarded-for"])


@settings(FUZZ, max_examples=50)
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       headers=st.dictionaries(_KNOWN | _NAMES, _VALUE, max_size=4), stream=st.booleans())
def test_any_headers(gw: Gateway, path: str, headers: dict[str, str], stream: bool) -> None:
    body = dict(_BASES["chat" if "chat" in path else "completions"][1], stream=stream)
    sent = {k: v.encode("latin-1") for k, v in headers.items()}
    check(gw.post(path, dumps(body), sent), headers, stream)
