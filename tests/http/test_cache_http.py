"""The response cache end to end: a real gateway (uvicorn, the official openai SDK) with
``cache: {enabled: true}`` in front of a recording OpenAI-compatible upstream, so every test
can see whether the backend was called. A repeat is an exact hit that costs nothing and is
in the ledger with its savings; a different system prompt, model or team is a miss; a
streamed answer is stored and replayed in the same chunks; the client's controls (headers,
``extra_body``) and the TTL work as documented in docs/cache.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.harness import upstream_server
from fakes.openai_upstream import RecordingUpstream
from http_helpers import ledger_row
from support import LiveServer, make_settings, serve

from gateway.errors import ConfigError
from gateway.http.app import create_app

GENEROUS = {"connect_s": 5.0, "first_token_s": 60.0, "total_s": 120.0}
PRICES = {"input_per_mtok": 3.0, "output_per_mtok": 7.0}
ADMIN = "admin-secret-for-cache-tests"
HELLO = [{"role": "user", "content": "Say hello to the whole team"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RecordingUpstream, LiveServer]]:
    rec = RecordingUpstream(model="upstream-model")
    with upstream_server(rec.app) as srv:
        yield rec, srv


def _backend(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "plugin": "openai_compatible", "base_url": url + "/v1",
            "model": "upstream-model", "timeouts": GENEROUS, "pricing": PRICES,
            "energy": {"watts_busy": 100.0}}


def _gateway(tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer],
             cache: dict[str, Any] | None = None, **settings: Any) -> Any:
    upstream[0].reset()
    url = upstream[1].url
    settings.setdefault("backends", [_backend("up", url), _backend("up2", url)])
    settings.setdefault("routes", [{"name": "auto", "backends": ["up"]},
                                   {"name": "other", "backends": ["up2"]}])
    cfg = {"enabled": True, "semantic": False, **(cache or {})}
    return serve(create_app(make_settings(tmp_path, cache=cfg, **settings)))


def _client(srv: LiveServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _ask(c: openai.OpenAI, messages: list[dict[str, Any]] = HELLO, model: str = "auto",
         **kw: Any) -> Any:
    kw.setdefault("temperature", 0)
    return c.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                       max_tokens=8, **kw)


def test_a_repeat_is_an_exact_hit_that_costs_nothing_and_is_in_the_ledger(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        first = _ask(c)
        assert first.headers["x-switchyard-cache"] == "miss"
        assert float(first.headers["x-switchyard-cost-usd"]) > 0
        hit = _ask(c)
        assert len(rec.requests) == 1, "a hit must not reach the backend"
        assert hit.headers["x-switchyard-cache"] == "hit-exact"
        assert float(hit.headers["x-switchyard-cost-usd"]) == 0
        assert float(hit.headers["x-switchyard-energy-joules"]) == 0
        assert hit.parse().choices[0].message.content == first.parse().choices[0].message.content
        paid = ledger_row(gw.app, first.headers["x-switchyard-request-id"])
        row = ledger_row(gw.app, hit.headers["x-switchyard-request-id"])
        assert paid["cache"] == "miss" and paid["cost_usd"] > 0 and paid["energy_j"] > 0
        assert row["cache"] == "hit-exact" and row["backend"] == "cache"
        assert row["cost_usd"] == 0 and row["energy_j"] == 0 and row["attempts"] == 0
        assert row["cache_entry"] == hit.headers["x-switchyard-cache-entry"]
        assert row["saved_cost_usd"] == pytest.approx(paid["cost_usd"])
        assert row["saved_energy_j"] == pytest.approx(paid["energy_j"])
        assert row["saved_co2_g"] == pytest.approx(paid["co2_g"])
        assert row["saved_bytes"] == paid["bytes_sent"] + paid["bytes_received"] > 0


def test_a_different_system_prompt_model_or_parameter_is_a_miss(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        _ask(c)
        sys_a = [{"role": "system", "content": "Answer in French."}, *HELLO]
        assert _ask(c, sys_a).headers["x-switchyard-cache"] == "miss"
        assert _ask(c, model="other").headers["x-switchyard-cache"] == "miss"
        assert _ask(c, seed=7).headers["x-switchyard-cache"] == "miss"
        assert len(rec.requests) == 4
        assert _ask(c, sys_a).headers["x-switchyard-cache"] == "hit-exact"
        assert len(rec.requests) == 4


def _team_key(srv: LiveServer, team: str, **limits: Any) -> str:
    auth = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(srv.url + "/admin/teams", json={"name": team, **limits}, headers=auth,
                   timeout=30)
    assert r.status_code == 201, r.text
    r = httpx.post(srv.url + "/admin/keys", json={"team": team, "name": "ci"}, headers=auth,
                   timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def test_another_teams_identical_request_is_a_miss(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream, admin_key=ADMIN) as gw:
        red, blue = _team_key(gw, "red"), _team_key(gw, "blue")
        with _client(gw, red) as r, _client(gw, blue) as b:
            assert _ask(r).headers["x-switchyard-cache"] == "miss"
            assert _ask(r).headers["x-switchyard-cache"] == "hit-exact"
            assert _ask(b).headers["x-switchyard-cache"] == "miss"
            assert len(rec.requests) == 2, "blue's identical request went to the backend"
            assert _ask(b).headers["x-switchyard-cache"] == "hit-exact"
            assert len(rec.requests) == 2


def test_a_hit_still_counts_against_the_rate_limit(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    with _gateway(tmp_path, upstream, admin_key=ADMIN) as gw:
        key = _team_key(gw, "small", rpm=2)
        with _client(gw, key) as c:
            _ask(c)
            assert _ask(c).headers["x-switchyard-cache"] == "hit-exact"
            with pytest.raises(openai.RateLimitError):
                _ask(c)


def _deltas(chunks: list[Any]) -> list[str]:
    return [ch.choices[0].delta.content for ch in chunks if ch.choices
            and ch.choices[0].delta.content is not None]


def test_a_streamed_answer_is_stored_and_replayed_in_the_same_chunks(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        opts = {"include_usage": True}
        first = list(c.chat.completions.create(model="auto", messages=HELLO, max_tokens=8,
                                               temperature=0, stream=True,
                                               stream_options=opts))
        with c.chat.completions.with_streaming_response.create(
                model="auto", messages=HELLO, max_tokens=8, temperature=0, stream=True,
                stream_options=opts) as resp:
            assert resp.headers["x-switchyard-cache"] == "hit-exact"
            again = list(resp.parse())
        assert len(rec.requests) == 1
        assert _deltas(again) == _deltas(first) and len(_deltas(first)) > 1
        assert [ch.choices[0].finish_reason for ch in again if ch.choices][-1] == \
            [ch.choices[0].finish_reason for ch in first if ch.choices][-1]
        assert again[-1].usage is not None and first[-1].usage is not None
        assert again[-1].usage.completion_tokens == first[-1].usage.completion_tokens
        assert {ch.id for ch in again} == {first[0].id}
        plain = list(c.chat.completions.create(model="auto", messages=HELLO, max_tokens=8,
                                               temperature=0, stream=True))
        assert all(ch.usage is None for ch in plain), "usage only when asked for"
        whole = _ask(c)  # the stream's entry answers the same question asked without one
        assert whole.headers["x-switchyard-cache"] == "hit-exact"
        assert whole.parse().choices[0].message.content == "".join(_deltas(first))
        assert len(rec.requests) == 1


def test_a_stream_that_breaks_off_is_not_stored(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        rec.behave("break_stream", chunks=2)
        with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a cut stream
            list(c.chat.completions.create(model="auto", messages=HELLO, max_tokens=8,
                                           temperature=0, stream=True))
        rec.behave("ok")
        assert _ask(c).headers["x-switchyard-cache"] == "miss"
        assert len(rec.requests) == 2


def test_cache_control_no_cache_refreshes_and_no_store_bypasses(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        _ask(c)
        fresh = _ask(c, extra_headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-switchyard-cache"] == "bypass" and len(rec.requests) == 2
        assert fresh.headers["x-switchyard-cache-reason"].startswith("refresh")
        hit = _ask(c)
        assert hit.headers["x-switchyard-cache"] == "hit-exact"
        assert hit.parse().id == fresh.parse().id, "the refreshed answer replaced the old one"
        other = [{"role": "user", "content": "Never keep this one"}]
        assert _ask(c, other, extra_headers={"Cache-Control": "no-store"}).headers[
            "x-switchyard-cache"] == "bypass"
        assert _ask(c, other).headers["x-switchyard-cache"] == "miss"
        assert len(rec.requests) == 4


def test_extra_body_controls_read_only_off_and_ttl(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        ro = {"switchyard": {"cache": {"mode": "read_only"}}}
        assert _ask(c, extra_body=ro).headers["x-switchyard-cache"] == "miss"
        assert _ask(c).headers["x-switchyard-cache"] == "miss", "read_only stored nothing"
        assert _ask(c, extra_body=ro).headers["x-switchyard-cache"] == "hit-exact"
        off = {"switchyard": {"cache": {"mode": "off"}}}
        assert _ask(c, extra_body=off).headers["x-switchyard-cache"] == "bypass"
        assert len(rec.requests) == 3
        short = [{"role": "user", "content": "A question that expires"}]
        ttl = {"switchyard": {"cache": {"ttl_s": 0.5}}}
        _ask(c, short, extra_body=ttl)
        assert _ask(c, short).headers["x-switchyard-cache"] == "hit-exact"
        time.sleep(0.7)
        assert _ask(c, short).headers["x-switchyard-cache"] == "miss", "expired"
        assert len(rec.requests) == 5


def test_only_reusable_answers_are_stored(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream, cache={"max_turns": 2}) as gw, _client(gw) as c:
        warm = _ask(c, temperature=0.7)
        assert warm.headers["x-switchyard-cache"] == "bypass"
        assert "max_temperature 0" in warm.headers["x-switchyard-cache-reason"]
        assert _ask(c, temperature=0.7).headers["x-switchyard-cache"] == "bypass"
        unset = c.chat.completions.with_raw_response.create(model="auto", messages=HELLO,
                                                             max_tokens=8)
        assert unset.headers["x-switchyard-cache"] == "bypass", "no temperature: sampled at 1"
        long = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "five"}]
        too_long = _ask(c, long)
        assert too_long.headers["x-switchyard-cache"] == "bypass"
        assert too_long.headers["x-switchyard-cache-reason"] == "more than max_turns 2 user turns"
        assert len(rec.requests) == 4


def test_a_bad_cache_control_value_is_a_400(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    with _gateway(tmp_path, upstream) as gw, _client(gw) as c:
        with pytest.raises(openai.BadRequestError) as e:
            _ask(c, extra_headers={"x-switchyard-cache-ttl": "soon"})
        assert "x-switchyard-cache-ttl" in str(e.value)
        with pytest.raises(openai.BadRequestError):
            _ask(c, extra_body={"switchyard": {"cache": {"mode": "sometimes"}}})


def test_a_route_may_turn_the_cache_off(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    routes = [{"name": "auto", "backends": ["up"]},
              {"name": "other", "backends": ["up2"], "cache": {"enabled": False}}]
    with _gateway(tmp_path, upstream, routes=routes) as gw, _client(gw) as c:
        _ask(c, model="other")
        again = _ask(c, model="other")
        assert "x-switchyard-cache" not in again.headers and len(rec.requests) == 2


# ---- the semantic tier (MiniLM and the shipped decision) ---------------------------------

PASSWORD = "How do I reset my password?"


def _user(text: str, system: str | None = None) -> list[dict[str, Any]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": text}]


@pytest.mark.slow
def test_a_paraphrase_is_a_semantic_hit_and_a_near_miss_is_a_miss(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    rec = upstream[0]
    with _gateway(tmp_path, upstream, cache={"semantic": True}, admin_key=ADMIN) as gw:
        red, blue = _team_key(gw, "red"), _team_key(gw, "blue")
        with _client(gw, red) as c, _client(gw, blue) as other:
            first = _ask(c, _user(PASSWORD))
            hit = _ask(c, _user("How can I reset my password?"))
            assert hit.headers["x-switchyard-cache"] == "hit-semantic"
            assert 0.9 < float(hit.headers["x-switchyard-cache-similarity"]) < 1.0
            assert hit.parse().choices[0].message.content == \
                first.parse().choices[0].message.content
            assert len(rec.requests) == 1
            row = ledger_row(gw.app, hit.headers["x-switchyard-request-id"])
            assert row["cache"] == "hit-semantic" and row["cost_usd"] == 0
            assert row["saved_cost_usd"] > 0 and row["cache_similarity"] > 0.9
            _ask(c, _user("Show flights from Boston to Denver"))
            near = _ask(c, _user("Show flights from Denver to Boston"))
            assert near.headers["x-switchyard-cache"] == "miss"
            assert float(near.headers["x-switchyard-cache-similarity"]) > 0.9
            assert near.headers["x-switchyard-cache-reason"] == \
                "the nearest stored prompt differs: direction"
            assert "x-switchyard-cache-reason" not in hit.headers
            reason = ledger_row(gw.app, near.headers["x-switchyard-request-id"])["decision"]
            assert "direction" in str(reason)
            _ask(c, _user("Why did the teacher thank the student?"))
            swap = _ask(c, _user("Why did the student thank the teacher?"))
            assert swap.headers["x-switchyard-cache"] == "miss", "who thanked whom is swapped"
            assert float(swap.headers["x-switchyard-cache-similarity"]) > 0.9
            assert _ask(c, _user("How can I reset my password?", "Answer in French.")).headers[
                "x-switchyard-cache"] == "miss", "another system prompt: another group"
            assert _ask(c, _user("How can I reset my password?"), model="other").headers[
                "x-switchyard-cache"] == "miss", "another route: another group"
            blue_miss = _ask(other, _user("How can I reset my password?"))
            assert blue_miss.headers["x-switchyard-cache"] == "miss", \
                "another team never sees red's entries"
            assert blue_miss.headers["x-switchyard-cache-reason"] == \
                "nothing stored for this model, context and team yet"
            assert "x-switchyard-cache-similarity" not in blue_miss.headers
            assert len(rec.requests) == 8


def test_cache_options_are_checked_at_start(tmp_path: Path,
                                            upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    for options, says in (({"judge": "strict"}, "cache.options: unknown 'judge'"),
                          ({"verifier": str(tmp_path / "none.json")}, "no file at"),
                          ({"cross_encoder": 3}, "a file path, not 3")):
        with pytest.raises(ConfigError) as e:
            _gateway(tmp_path, upstream, cache={"semantic": True, "options": options})
        assert any(says in msg for _, msg in e.value.errors), e.value.errors


@pytest.mark.slow
def test_the_cross_encoder_option_makes_the_decision_stricter(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    stored, asked = "How many calories are in a banana?", "What is the calorie count of a banana?"
    seen = {}
    for options in ({}, {"cross_encoder": "qqp"}):
        with _gateway(tmp_path, upstream, cache={"semantic": True, "options": options}) as gw, \
                _client(gw) as c:
            _ask(c, _user(stored))
            seen[bool(options)] = _ask(c, _user(asked)).headers
    assert seen[False]["x-switchyard-cache"] == "hit-semantic"
    assert seen[True]["x-switchyard-cache"] == "miss"
    assert "cross-encoder score" in seen[True]["x-switchyard-cache-reason"]


# ---- two gateway processes sharing one Redis ---------------------------------------------


def _config(path: Path, upstream_url: str, redis_url: str, prefix: str, port: int) -> Path:
    import yaml

    cfg = {"server": {"port": port},
           "backends": [_backend("up", upstream_url)],
           "routes": [{"name": "auto", "backends": ["up"]}],
           "state": {"kind": "redis", "url": redis_url, "prefix": prefix},
           "cache": {"enabled": True},
           "ledger": {"path": str(path / "ledger-b.sqlite3")}}
    file = path / "replica-b.yaml"
    file.write_text(yaml.safe_dump(cfg))
    return file


@pytest.mark.slow
def test_an_entry_stored_through_one_gateway_process_is_found_through_another(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer], redis_url: str,
        redis_prefix: str) -> None:
    import subprocess
    import sys

    from support import free_port, wait_until

    rec, state = upstream[0], {"kind": "redis", "url": redis_url, "prefix": redis_prefix}
    port = free_port()
    file = _config(tmp_path, upstream[1].url, redis_url, redis_prefix, port)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                             str(file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with _gateway(tmp_path, upstream, cache={"semantic": True}, state=state,
                      backends=[_backend("up", upstream[1].url)],
                      routes=[{"name": "auto", "backends": ["up"]}]) as a, _client(a) as ca:
            stored = _ask(ca, _user(PASSWORD))
            assert stored.headers["x-switchyard-cache"] == "miss" and len(rec.requests) == 1

            def ready() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).is_success
                except httpx.HTTPError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    return False

            wait_until(ready, timeout=180, what="replica B to start")
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                               max_retries=0, timeout=60) as cb:
                exact = _ask(cb, _user(PASSWORD))
                assert exact.headers["x-switchyard-cache"] == "hit-exact"
                assert exact.parse().id == stored.parse().id
                later = _ask(ca, _user("What is the boiling point of water at sea level?"))
                assert later.headers["x-switchyard-cache"] == "miss"
                para = _ask(cb, _user("At sea level, what is the boiling point of water?"))
                assert para.headers["x-switchyard-cache"] == "hit-semantic", \
                    "B's index learned A's entry, stored after B started"
                assert para.parse().id == later.parse().id
                assert len(rec.requests) == 2
    finally:
        proc.terminate()
        proc.wait(30)


def test_in_redis_an_entry_expires_with_its_ttl(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer], redis_url: str,
        redis_prefix: str) -> None:
    rec, state = upstream[0], {"kind": "redis", "url": redis_url, "prefix": redis_prefix}
    with _gateway(tmp_path, upstream, cache={"ttl_s": 0.5}, state=state) as gw, \
            _client(gw) as c:
        assert _ask(c).headers["x-switchyard-cache"] == "miss"
        assert _ask(c).headers["x-switchyard-cache"] == "hit-exact"
        time.sleep(0.7)
        assert _ask(c).headers["x-switchyard-cache"] == "miss", "Redis expired the entry"
        assert len(rec.requests) == 2


def test_a_hit_at_a_cost_fraction_is_charged_to_the_budget_once(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    auth = {"authorization": f"Bearer {ADMIN}"}
    with _gateway(tmp_path, upstream, cache={"hit_cost_fraction": 0.5},
                  admin_key=ADMIN) as gw:
        key = _team_key(gw, "payers", budget_usd=10.0)

        def spent() -> float:
            r = httpx.get(gw.url + "/admin/teams/payers/spend", headers=auth, timeout=30)
            return float(r.json()["spent_usd"])

        with _client(gw, key) as c:
            paid = float(_ask(c).headers["x-switchyard-cost-usd"])
            before = spent()
            assert before == pytest.approx(paid, rel=1e-6)
            hit = _ask(c)
            assert hit.headers["x-switchyard-cache"] == "hit-exact"
            assert float(hit.headers["x-switchyard-cost-usd"]) == pytest.approx(paid / 2)
            assert spent() == pytest.approx(1.5 * paid, rel=1e-6)


@pytest.mark.slow
def test_embeddings_get_the_exact_tier(tmp_path: Path,
                                       upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    backends = [{"name": "minilm", "plugin": "sentence_transformers"}]
    with _gateway(tmp_path, upstream, backends=backends,
                  routes=[{"name": "embed", "backends": ["minilm"]}]) as gw, _client(gw) as c:
        first = c.embeddings.with_raw_response.create(model="embed", input=["a cat", "a dog"])
        again = c.embeddings.with_raw_response.create(model="embed", input=["a cat", "a dog"])
        other = c.embeddings.with_raw_response.create(model="embed", input=["a cow"])
        assert first.headers["x-switchyard-cache"] == "miss"
        assert again.headers["x-switchyard-cache"] == "hit-exact"
        assert other.headers["x-switchyard-cache"] == "miss"
        assert again.parse().data[1].embedding == first.parse().data[1].embedding
        row = ledger_row(gw.app, again.headers["x-switchyard-request-id"])
        assert row["backend"] == "cache" and row["saved_energy_j"] > 0


@pytest.mark.slow
def test_the_embedded_models_stream_is_stored_and_replayed(
        tmp_path: Path, upstream: tuple[RecordingUpstream, LiveServer]) -> None:
    """The same through llama.cpp's own chunks (SmolLM2): a repeat never reaches the model
    (the ledger row of the replay is the cache's, with the model call's energy saved)."""
    backends = [{"name": "local-smol", "plugin": "llamacpp"}]
    with _gateway(tmp_path, upstream, backends=backends,
                  routes=[{"name": "auto", "backends": ["local-smol"]}]) as gw, \
            _client(gw) as c:
        def stream() -> tuple[list[Any], str]:
            with c.chat.completions.with_streaming_response.create(
                    model="auto", messages=HELLO, max_tokens=8, temperature=0, stream=True,
                    stream_options={"include_usage": True}) as resp:
                return list(resp.parse()), resp.headers["x-switchyard-request-id"]

        first, paid = stream()
        again, rid = stream()
        assert _deltas(again) == _deltas(first) and "".join(_deltas(first))
        assert again[-1].usage.completion_tokens == first[-1].usage.completion_tokens
        row = ledger_row(gw.app, rid)
        assert row["cache"] == "hit-exact" and row["backend"] == "cache"
        assert row["saved_energy_j"] == pytest.approx(ledger_row(gw.app, paid)["energy_j"])
        assert _ask(c).parse().choices[0].message.content == "".join(_deltas(first))
