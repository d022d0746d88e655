"""Input that validation must refuse, and budgets that must hold whatever the backend reports.

Every malformed value is a 400 naming its parameter, through the official SDK, and nothing
reaches the backend (the recording upstream sees no request); ``"stream": "false"`` does not
stream. A budget holds when the backend bills far more prompt tokens than the prompt's text
suggests: many concurrent requests against a small budget never spend more than it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.openai_upstream import RecordingUpstream
from support import make_settings, serve

from gateway.http.app import create_app

ADMIN = "admin-secret-for-bad-input"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    rec = RecordingUpstream("up-model")
    with serve(rec.app) as srv:
        srv.rec = rec
        yield srv


def _backend(upstream: Any, **kw: Any) -> dict[str, Any]:
    return {"name": "up", "plugin": "openai_compatible", "base_url": upstream.url + "/v1",
            "model": "up-model", "embeddings": True, **kw}


@pytest.fixture(scope="module")
def gw(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = make_settings(tmp_path_factory.mktemp("bad-input"), backends=[_backend(upstream)])
    with serve(create_app(settings)) as srv:
        yield srv


@pytest.fixture
def rec(upstream: Any) -> Iterator[RecordingUpstream]:
    r: RecordingUpstream = upstream.rec
    r.reset()
    yield r
    r.reset()


def sdk(srv: Any, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30)


def refused(exc: openai.APIStatusError, param: str | None, code: str = "invalid_request") -> str:
    assert exc.status_code == 400
    assert exc.response.headers["content-type"] == "application/json"  # not a stream
    err = exc.response.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    assert "Traceback" not in err["message"]
    return str(err["message"])


CHAT = [
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_completion_tokens": "5"}, "max_completion_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 10.0}, "max_tokens"),
    ({"max_tokens": 2**31}, "max_tokens"),
    ({"stream": "false"}, "stream"),
    ({"stream": 0}, "stream"),
    ({"n": True}, "n"),
    ({"temperature": "0.5"}, "temperature"),
    ({"logprobs": 1}, "logprobs"),
    ({"stream_options": {"include_usage": "false"}}, "stream_options.include_usage"),
    ({"switchyard": [1]}, "switchyard"),
    ({"switchyard": "fast"}, "switchyard"),
    ({"switchyard": {"max_cost_usd": "0.5"}}, "switchyard.max_cost_usd"),
    ({"switchyard": {"include_co2": "yes"}}, "switchyard.include_co2"),
    ({"switchyard": {"no_such_option": 1}}, "switchyard.no_such_option"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
     "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "text": ["x"],
                                                 "image_url": {"url": "http://x/y.png"}}]}]},
     "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
     "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": ["bare string"]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
]


@pytest.mark.parametrize(("kw", "param"), CHAT)
def test_chat_refuses_what_would_crash_later(gw: Any, rec: RecordingUpstream,
                                             kw: dict[str, Any], param: str) -> None:
    messages = kw.pop("messages", HI)
    with sdk(gw) as c, pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="up-model", messages=messages, extra_body=kw)
    assert f"'{param}'" in refused(e.value, param)
    assert rec.requests == []


@pytest.mark.parametrize(("kw", "param"), [
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_completion_tokens": "5"}, "max_completion_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"stream": "false"}, "stream"),
    ({"best_of": "2"}, "best_of"),
    ({"switchyard": [1]}, "switchyard"),
    ({"prompt": ["a", 5]}, "prompt.1"),
])
def test_completions_refuse_what_would_crash_later(gw: Any, rec: RecordingUpstream,
                                                   kw: dict[str, Any], param: str) -> None:
    with sdk(gw) as c, pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="up-model", prompt="say hi", extra_body=kw)
    refused(e.value, param)
    assert rec.requests == []


@pytest.mark.parametrize(("kw", "param"), [
    ({"max_completion_tokens": "5"}, "max_completion_tokens"),  # a stray field, typed
    ({"max_tokens": "10"}, "max_tokens"),
    ({"switchyard": [1]}, "switchyard"),
    ({"switchyard": {"policy": 5}}, "switchyard.policy"),
])
def test_embeddings_refuse_what_would_crash_later(gw: Any, rec: RecordingUpstream,
                                                  kw: dict[str, Any], param: str) -> None:
    with sdk(gw) as c, pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="up-model", input="hello", extra_body=kw)
    refused(e.value, param)
    assert rec.requests == []


def test_raw_bodies_never_stream_on_a_string(gw: Any, rec: RecordingUpstream) -> None:
    """Without the SDK in between: a string ``"false"`` is refused before any byte streams."""
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30,
                      json={"model": "up-model", "messages": HI, "stream": "false"}) as r:
        r.read()
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["param"] == "stream"
    assert rec.requests == []


def test_typed_values_pass_and_options_are_not_forwarded(gw: Any, rec: RecordingUpstream) -> None:
    with sdk(gw) as c:
        out = c.chat.completions.create(
            model="up-model", max_completion_tokens=3, stream=False, temperature=1,
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            extra_body={"switchyard": {"max_cost_usd": 1, "latency_target": "total"},
                        "vendor_flag": "kept"})
        assert out.choices[0].message.content == "Hello from the"
        sent = rec.last.body
        assert "switchyard" not in sent and sent["vendor_flag"] == "kept"
        assert sent["max_completion_tokens"] == 3 and sent["temperature"] == 1
        chunks = list(c.completions.create(model="up-model", prompt="x", max_tokens=2,
                                           stream=True))
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Hello from"


def test_max_tokens_past_every_context_window_is_a_400(
        upstream: Any, rec: RecordingUpstream, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backends=[_backend(upstream, context_window=8192)])
    with serve(create_app(settings)) as srv, sdk(srv) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="up-model", messages=HI, max_tokens=10**9)
        assert "8192 tokens" in refused(e.value, "max_tokens", "context_length_exceeded")
    assert rec.requests == []


# ---- budgets -----------------------------------------------------------------------------


def _budget_gateway(upstream: Any, tmp_path: Path, state: dict[str, Any],
                    **backend: Any) -> Any:
    priced = _backend(upstream, pricing={"input_per_mtok": 100, "output_per_mtok": 1000},
                      **backend)
    return create_app(make_settings(tmp_path, backends=[priced], admin_key=ADMIN, state=state))


def _team(srv: Any, budget_usd: float, name: str = "acme") -> str:
    auth = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(srv.url + "/admin/teams", headers=auth, timeout=30,
                   json={"name": name, "budget_usd": budget_usd, "period": "day"})
    assert r.status_code == 201, r.text
    r = httpx.post(srv.url + "/admin/keys", headers=auth, json={"team": name, "name": "k"},
                   timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def _spend(srv: Any, name: str = "acme") -> dict[str, Any]:
    r = httpx.get(f"{srv.url}/admin/teams/{name}/spend", timeout=30,
                  headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {"kind": "memory"}
    return {"kind": "redis", "url": request.getfixturevalue("redis_url"),
            "prefix": request.getfixturevalue("redis_prefix")}


def test_a_huge_max_tokens_is_refused_as_the_cause_not_as_a_spent_budget(
        upstream: Any, rec: RecordingUpstream, tmp_path: Path) -> None:
    """No context window is known: the hold is what makes the request impossible, and the
    error says so (400 naming max_tokens), instead of "the team used its budget"."""
    with serve(_budget_gateway(upstream, tmp_path, {"kind": "memory"})) as srv:
        key = _team(srv, budget_usd=0.1)
        with sdk(srv, key) as c:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="up-model", messages=HI, max_tokens=10**6)
            msg = refused(e.value, "max_tokens", "request_exceeds_budget")
            assert "max_tokens=1000000" in msg and "whole day budget" in msg
            with pytest.raises(openai.BadRequestError) as e:  # the same before a stream
                c.chat.completions.create(model="up-model", messages=HI, max_tokens=10**6,
                                          stream=True)
            refused(e.value, "max_tokens", "request_exceeds_budget")
            assert rec.requests == []
            # $0.03 of $0.10 spent: a request that would fit the whole budget but not what is
            # left ($0.027 for the prompt's bytes, $0.05 for max_tokens) is a 429 that says so
            rec.behave(usage=(0, 30))
            c.chat.completions.create(model="up-model", messages=HI, max_tokens=30)
            with pytest.raises(openai.RateLimitError) as e429:
                c.chat.completions.create(model="up-model", messages=HI, max_tokens=50)
            assert e429.value.code == "team_budget_exceeded"
            assert "$0.070000 left of its day budget" in e429.value.message
            assert "max_tokens=50" in e429.value.message
        assert _spend(srv)["spent_usd"] == pytest.approx(0.03)


def test_spend_never_exceeds_the_budget_when_the_backend_over_reports(
        upstream: Any, rec: RecordingUpstream, tmp_path: Path, state: dict[str, Any]) -> None:
    """The gateway estimates 4 prompt tokens for "hi"; the backend bills 200 (as a model
    with a long chat template might). 100 concurrent requests, half of them streams, against
    a budget for 8 of them: each success is billed in full and the spend stays within the
    budget (holds counted at the gateway's estimate let about 37 through: $0.93 spent)."""
    cost = 200 * 100e-6 + 5 * 1000e-6  # $0.025 a request
    budget = 0.2
    rec.behave("slow", delay_s=0.3, usage=(200, 5))
    with serve(_budget_gateway(upstream, tmp_path, state)) as srv:
        key = _team(srv, budget_usd=budget)
        statuses = asyncio.run(_storm(srv.url, key, 100))
        spend = _spend(srv)
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    assert 1 <= ok <= int(budget / cost), statuses
    assert spend["reserved_usd"] == 0
    assert spend["spent_usd"] == pytest.approx(ok * cost)  # billed what the backend reported
    assert spend["spent_usd"] <= budget


def test_spend_never_exceeds_the_budget_whatever_the_backend_reports(
        upstream: Any, rec: RecordingUpstream, tmp_path: Path, state: dict[str, Any]) -> None:
    """The backend bills a million prompt and a million completion tokens for "hi" with
    max_tokens=5 ($1,100 a request), beyond any hold. 40 concurrent requests, half streams,
    against $0.20: each success is charged its hold, so the spend stays within the budget;
    the ledger keeps what the backend reported, and what was not charged is counted in
    switchyard_budget_overrun_usd_total for the backend."""
    reported = 10**6 * 100e-6 + 10**6 * 1000e-6
    budget = 0.2
    rec.behave("slow", delay_s=0.3, usage=(10**6, 10**6))
    app = _budget_gateway(upstream, tmp_path, state)
    with serve(app) as srv:
        key = _team(srv, budget_usd=budget)
        statuses, messages = zip(*asyncio.run(_storm(srv.url, key, 40, with_messages=True)),
                                 strict=True)
        spend = _spend(srv)
        metrics = httpx.get(srv.url + "/metrics", timeout=30).text
    ok = statuses.count(200)
    assert set(statuses) == {200, 429}, statuses
    hold = float(re.findall(r"this request may cost up to \$([0-9.]+)", messages[
        statuses.index(429)])[0])
    assert ok == int(budget / hold), (ok, hold)
    assert spend["reserved_usd"] == 0
    assert spend["spent_usd"] == pytest.approx(ok * hold, abs=ok * 1e-6)
    assert spend["spent_usd"] <= budget
    costs = [r["cost_usd"] for r in app.state.ledger.query(
        "SELECT cost_usd FROM requests WHERE team = 'acme' AND status = 200")]
    assert costs == [pytest.approx(reported)] * ok, "the ledger keeps the cost reported"
    overrun = float(re.findall(r'^switchyard_budget_overrun_usd_total\{backend="up"\} (\S+)$',
                               metrics, re.MULTILINE)[0])
    assert overrun == pytest.approx(sum(costs) - spend["spent_usd"])


async def _storm(url: str, key: str, n: int, with_messages: bool = False) -> list[Any]:
    """``n`` concurrent requests, half streams: their statuses (with each error's message
    when ``with_messages``)."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                                  timeout=60) as c:
        async def one(i: int) -> Any:
            try:
                if i % 2:
                    stream = await c.chat.completions.create(
                        model="up-model", messages=HI, max_tokens=5, stream=True)
                    async for _ in stream:
                        pass
                else:
                    await c.chat.completions.create(model="up-model", messages=HI, max_tokens=5)
            except openai.APIStatusError as e:
                return (e.status_code, e.message) if with_messages else e.status_code
            return (200, "") if with_messages else 200

        return await asyncio.gather(*(one(i) for i in range(n)))
