"""The cache runtime's pure parts: what makes two requests the same (exact key, semantic
group, namespace), which answers are reusable, the request's controls, a stream assembled
and replayed, and the in-process entries' limits and expiry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from gateway import CacheConfig, Exchange, InvalidRequest, RequestContext, UsageRecord
from gateway.interfaces import Usage
from gateway.pipeline.replay import Assembler, chunks
from gateway.protocol import validate
from plugins.cache.entries import Entry, MemoryEntries
from plugins.cache.keys import answer_reusable, keys, why_not_reusable
from plugins.cache.runtime import controls


def exchange(body: dict[str, Any], team: str | None = "red", key_id: str | None = "k1",
             endpoint: str = "chat", headers: dict[str, str] | None = None) -> Exchange:
    ctx = RequestContext(request_id="r1", team=team, key_id=key_id, cache_headers=headers)
    x = Exchange(endpoint, body, validate(endpoint, body), ctx)  # type: ignore[arg-type]
    x.forwarded = {k: v for k, v in body.items() if k != "switchyard"}
    x.record = UsageRecord(request_id="r1", endpoint=endpoint, requested=body["model"])
    return x


def chat(text: str = "How do I reset my password?", system: str | None = None,
         **params: Any) -> dict[str, Any]:
    head = [{"role": "system", "content": system}] if system else []
    return {"model": "auto", "messages": [*head, {"role": "user", "content": text}],
            "temperature": 0, **params}


def test_the_exact_key_ignores_delivery_and_order_but_not_what_changes_the_answer() -> None:
    base = keys(exchange(chat()), "team", True)
    same = {"temperature": 0, "stream": True, "user": "bob", "top_p": None,
            "messages": chat()["messages"], "model": "auto"}
    assert keys(exchange(same), "team", True).exact == base.exact
    for other in (chat(temperature=0.5), chat(seed=3), chat(max_tokens=5),
                  chat(tools=[{"type": "function", "function": {"name": "f"}}]),
                  {**chat(), "model": "other"}, chat("How do I reset my password"),
                  chat(system="Be brief.")):
        assert keys(exchange(other), "team", True).exact != base.exact, other


def test_the_semantic_group_is_everything_but_the_last_user_turn() -> None:
    a = keys(exchange(chat("How do I reset my password?")), "team", True)
    b = keys(exchange(chat("How can I change my password?")), "team", True)
    assert a.group == b.group and a.exact != b.exact and b.text == "How can I change my password?"
    assert keys(exchange(chat(system="Be brief.")), "team", True).group != a.group
    assert keys(exchange(chat(temperature=0.1)), "team", True).group != a.group
    assert keys(exchange(chat()), "team", False).group is None
    assert keys(exchange(chat("x" * 1001)), "team", True).group is None, "too long to embed"
    image = chat()
    image["messages"][0]["content"] = [{"type": "image_url", "image_url": {"url": "u"}}]
    assert keys(exchange(image), "team", True).group is None


def test_namespaces_never_meet() -> None:
    red = keys(exchange(chat(), team="red"), "team", True)
    blue = keys(exchange(chat(), team="blue"), "team", True)
    assert red.exact != blue.exact and red.group != blue.group
    assert keys(exchange(chat(), key_id="k2"), "team", True).exact == red.exact
    assert keys(exchange(chat(), key_id="k2"), "key", True).exact != \
        keys(exchange(chat()), "key", True).exact
    assert keys(exchange(chat(), team=None, key_id=None), "team", True).namespace == "anonymous"


def test_what_is_never_reused() -> None:
    def why(body: dict[str, Any]) -> str | None:
        return why_not_reusable(exchange(body), 0.0, 2)

    assert why(chat()) is None
    assert why(chat(temperature=0.2)) == "temperature"
    assert why({k: v for k, v in chat().items() if k != "temperature"}) == "temperature"
    assert why(chat(n=2)) == "n"
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
    assert why({**chat(), "messages": [*turns, {"role": "user", "content": "c"}]}) == "turns"
    call = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}}]}
    assert not answer_reusable(call)
    assert not answer_reusable({"choices": [{"message": {"content": "a"}}] * 2})
    assert answer_reusable({"choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"content": "a"}}]})


def test_a_request_narrows_its_routes_controls() -> None:
    cfg = CacheConfig(enabled=True, ttl_s=100)
    assert controls(exchange(chat()), cfg) == (True, True, 100, None)
    assert controls(exchange(chat(), headers={"cache-control": "no-cache"}), cfg)[:2] == \
        (False, True)
    assert controls(exchange(chat(), headers={"cache-control": "max-age=0, no-store"}),
                    cfg)[:2] == (False, False)
    body = {**chat(), "switchyard": {"cache": {"mode": "refresh", "ttl_s": 500,
                                               "threshold": 0.7}}}
    ro = CacheConfig(enabled=True, ttl_s=100, mode="read_only")
    assert controls(exchange(body), ro) == (False, False, 100, 0.7), "never wider"
    h = {"x-switchyard-cache-ttl": "5", "x-switchyard-cache-mode": "read-only"}
    assert controls(exchange(chat(), headers=h), cfg) == (True, False, 5.0, None)
    for bad in ({"x-switchyard-cache-ttl": "soon"}, {"x-switchyard-cache-threshold": "2"},
                {"x-switchyard-cache-mode": "sometimes"}):
        with pytest.raises(InvalidRequest):
            controls(exchange(chat(), headers=bad), cfg)


def _stream(words: list[str], finish: str | None = "stop") -> list[dict[str, Any]]:
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]}]
    out += [{**head, "choices": [{"index": 0, "delta": {"content": w},
                                  "finish_reason": None}]} for w in words]
    if finish:
        out.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return out


def test_a_stream_assembled_replays_in_the_same_chunks() -> None:
    asm = Assembler()
    words = ["Hel", "lo", " there", ",", " friend"]
    for c in _stream(words):
        asm.add(c)
    body = asm.body("chat", Usage(3, 5))
    assert body is not None and body["choices"][0]["message"]["content"] == "Hello there, friend"
    assert body["usage"]["completion_tokens"] == 5 and body["id"] == "c1"
    again = chunks(body, "chat", asm.pieces)
    assert [c["choices"][0]["delta"].get("content") for c in again[:-1]] == ["", *words]
    assert again[0]["choices"][0]["delta"]["role"] == "assistant"
    assert again[-1]["choices"][0]["finish_reason"] == "stop"
    plain = chunks(body, "chat")  # stored from a non-streaming answer: a word a chunk
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in plain) == \
        "Hello there, friend"


def test_a_stream_that_is_not_one_plain_answer_is_not_assembled() -> None:
    cut = Assembler()
    for c in _stream(["a", "b"], finish=None):
        cut.add(c)
    assert cut.body("chat", Usage()) is None
    tools = Assembler()
    for c in _stream(["a"]):
        tools.add(c)
    tools.add({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"id": "t"}]},
                                        "finish_reason": "tool_calls"}]})
    assert tools.body("chat", Usage()) is None
    two = Assembler()
    two.add({"id": "c1", "choices": [{"index": 1, "delta": {"content": "x"}}]})
    assert two.body("chat", Usage()) is None


def _entry(i: int, size: int = 100, ttl: float = 60.0) -> Entry:
    now = time.time()
    return Entry(id=f"e{i}", body=orjson.dumps({"x": "y" * size}), origin=f"r{i}",
                 backend="b", model="m", completion_tokens=1, cost_usd=0.1, energy_j=1.0,
                 co2_g=0.1, transfer_bytes=10, created=now, expires=now + ttl)


def test_memory_entries_evict_the_least_recently_used_and_expire() -> None:
    async def run() -> None:
        dropped: list[str] = []
        m = MemoryEntries(max_entries=3, max_bytes=10_000, on_drop=dropped.append)
        for i in range(3):
            await m.put(_entry(i), None)
        assert (await m.get("e0"))[0] is not None  # e0 is now the most recent
        await m.put(_entry(3), None)
        assert dropped == ["e1"] and len(m) == 3
        big = MemoryEntries(max_entries=100, max_bytes=3 * _entry(0, 1000).size(),
                            on_drop=dropped.append)
        for i in range(5):
            await big.put(_entry(10 + i, 1000), None)
        assert len(big) == 3 and big.bytes <= big.max_bytes
        await m.put(_entry(9, ttl=0.05), None)
        await asyncio.sleep(0.1)
        assert (await m.get("e9"))[0] is None and "e9" in dropped

    asyncio.run(run())


def test_a_role_only_first_chunk_adds_no_piece() -> None:
    """llama.cpp's first chunk carries the role and no content: the replay's deltas with
    content are the original's, no empty one added."""
    asm = Assembler()
    stream = _stream(["I", " am"])
    del stream[0]["choices"][0]["delta"]["content"]
    for c in stream:
        asm.add(c)
    body = asm.body("chat", Usage())
    assert body is not None and asm.pieces == [1, 3]
    assert [c["choices"][0]["delta"].get("content") for c in chunks(body, "chat", asm.pieces)
            ][:-1] == ["I", " am"]
