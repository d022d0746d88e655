"""POST /v1/chat/completions through the official openai SDK, against SmolLM2 on real uvicorn:
every OpenAI parameter a client may send, streaming and not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from http_helpers import json_events, sse_events

pytestmark = pytest.mark.slow

COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def chat(client: Any, **kw: Any) -> Any:
    kw.setdefault("messages", COUNT)
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model="auto", **kw)


def test_non_streaming_response_shape(client):
    out = chat(client, temperature=0)  # counting to 10 takes more than the 8 tokens allowed
    assert out.object == "chat.completion"
    assert out.id
    assert out.model == "smollm2-135m-instruct"
    (choice,) = out.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    u = out.usage
    assert u.prompt_tokens > 0 and u.completion_tokens == 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


@pytest.mark.parametrize("include_usage", [None, False, True])
def test_stream_ends_with_done_and_usage_only_when_asked(embedded_server, include_usage):
    body: dict[str, Any] = {"model": "auto", "messages": COUNT, "max_tokens": 6, "stream": True,
                            "temperature": 0}  # greedy: counting to 10 runs past 6 tokens
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    events = sse_events(embedded_server.url, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = json_events(events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    with_usage = [c for c in chunks if c.get("usage")]
    if include_usage:
        (last,) = with_usage
        assert last is chunks[-1] and last["choices"] == []
        assert last["usage"]["completion_tokens"] == 6
        assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    else:
        assert with_usage == []
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and not any(finishes[:-1])


def test_sdk_stream_matches_non_streaming_text(client):
    """Greedy decoding: the streamed deltas join to the same text as the plain answer."""
    plain = chat(client, temperature=0).choices[0].message.content
    chunks = list(chat(client, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_token_limits(client, no_eos, param):
    out = client.chat.completions.create(model="auto", messages=COUNT, logit_bias=no_eos,
                                         **{param: 5})
    assert out.usage.completion_tokens == 5
    assert out.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(
        model="auto", messages=COUNT, logit_bias=no_eos, stream=True,
        stream_options={"include_usage": True}, **{param: 4}))
    assert chunks[-1].usage.completion_tokens == 4
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4


def test_temperature_zero_is_deterministic_and_top_p_accepted(client):
    a = chat(client, temperature=0, max_tokens=10).choices[0].message.content
    b = chat(client, temperature=0, top_p=0.5, max_tokens=10).choices[0].message.content
    assert a == b  # top_p only narrows the candidates; greedy picks the same token


def test_stop_sequence_ends_the_text(client):
    free = chat(client, temperature=0, max_tokens=12).choices[0]
    assert "," in free.message.content
    stopped = chat(client, temperature=0, max_tokens=12, stop=[","]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == free.message.content.split(",")[0]
    single = chat(client, temperature=0, max_tokens=12, stop=",").choices[0]
    assert single.message.content == stopped.message.content


def test_seed_makes_sampling_repeatable(client):
    story = [{"role": "user", "content": "Write a sentence about a cat."}]

    def text(seed: int) -> str:
        return chat(client, messages=story, temperature=1.3, seed=seed, max_tokens=12).choices[0].message.content

    assert text(7) == text(7)
    assert len({text(s) for s in (1, 2, 3, 4)}) > 1  # the seed is what made them equal


def test_n_gives_several_choices(client):
    out = chat(client, n=2, temperature=1.0, max_tokens=6)
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.message.content is not None for c in out.choices)
    assert 2 <= out.usage.completion_tokens <= 12


def test_chat_logprobs_with_top_logprobs(client):
    plain = chat(client, temperature=0, max_tokens=5)
    out = chat(client, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    # the second, logits_all instance (opened lazily) gives the same greedy answer
    assert out.choices[0].message.content == plain.choices[0].message.content
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(t.token for t in content) == out.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.logprob <= 0
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the likeliest
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
    no = chat(client, max_tokens=3)
    assert no.choices[0].logprobs is None


def test_response_format_json_object(client):
    out = chat(client, messages=[{"role": "user", "content": 'Return {"ok": true} as JSON.'}],
               response_format={"type": "json_object"}, temperature=0, max_tokens=60)
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    out = chat(client, messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=0,
               max_tokens=40, response_format={"type": "json_schema",
                                               "json_schema": {"name": "answer", "schema": schema}})
    assert json.loads(out.choices[0].message.content)["answer"] in ("yes", "no")


def test_tools_and_tool_choice(client):
    forced = chat(client, tools=[WEATHER_TOOL], max_tokens=30,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert choice.message.tool_calls[0].id
    for tool_choice in ("auto", "none"):
        # counting needs no weather: greedy, the model writes text until max_tokens
        out = chat(client, tools=[WEATHER_TOOL], tool_choice=tool_choice, max_tokens=6,
                   temperature=0)
        (choice,) = out.choices
        assert choice.message.tool_calls is None and choice.message.content
        assert choice.finish_reason == "length" and out.usage.completion_tokens == 6


def test_logit_bias_steers_tokens(client, vocab):
    (bang,) = vocab.tokenize(b"!", add_bos=False, special=False)
    out = chat(client, logit_bias={str(bang): 100}, max_tokens=5)
    assert out.choices[0].message.content == "!!!!!"


def test_user_and_unknown_fields_are_accepted_and_passed_on(client):
    """``user`` and a field no backend knows change nothing for the local model (that
    ``user`` reaches an upstream is in tests/plugins/test_openai_compatible.py)."""
    plain = chat(client, temperature=0, max_tokens=3).choices[0].message.content
    assert plain
    assert chat(client, temperature=0, max_tokens=3, user="user-1234").choices[0].message.content == plain
    unknown = chat(client, temperature=0, max_tokens=3, extra_body={"x_unknown_field": {"a": 1}})
    assert unknown.choices[0].message.content == plain
    # top_k is not an OpenAI parameter; llama.cpp takes it: top_k=1 makes hot sampling greedy
    greedy = chat(client, temperature=0, max_tokens=10).choices[0].message.content
    hot = {chat(client, temperature=1.5, seed=s, max_tokens=10, extra_body={"top_k": 1})
           .choices[0].message.content for s in (1, 2, 3)}
    assert hot == {greedy}


def test_multi_turn_and_system_messages(client):
    out = chat(client, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Say yes."}]},
    ], max_tokens=4)
    assert out.choices[0].message.content
