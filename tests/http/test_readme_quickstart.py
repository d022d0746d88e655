"""The README's quick start, run as written against a live gateway (the echo backend, so no
model is needed): the streaming loop prints only the answer and the usage, never a literal
``None``, and a non-streaming response carries exactly the headers the README's table
lists."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from support import serve

from gateway.http.app import create_app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _quick_start() -> ast.Module:
    section = README.split("## Quick start with the OpenAI SDK", 1)[1]
    return ast.parse(re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1))


@pytest.fixture
def client(settings_factory: Any) -> Iterator[openai.OpenAI]:
    settings = settings_factory(
        backends=[{"name": "parrot", "plugin": "echo"}],
        routes=[{"name": "auto", "backends": ["parrot"]}],
    )
    with serve(create_app(settings)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        yield c
        c.close()


def test_the_streaming_quick_start_prints_the_answer_and_no_none(client, capsys) -> None:
    loop = next(n for n in _quick_start().body
                if isinstance(n, ast.For) and "stream=True" in ast.unparse(n.iter))
    exec(compile(ast.Module([loop], []), "README.md", "exec"), {"client": client})  # noqa: S102
    out = capsys.readouterr().out
    assert out.startswith("Count to five"), out  # the echo backend says it back
    assert "None" not in out
    assert re.search(r"\n\d+ prompt, \d+ completion tokens\n$", out), "the usage is printed"


def test_a_response_carries_the_headers_the_readme_lists(client) -> None:
    section = README.split("### What every response tells", 1)[1]
    table = re.search(r"^\|.*?\n\n", section, re.MULTILINE | re.DOTALL).group(0)
    listed = set(re.findall(r"`(x-switchyard-[a-z0-9-]+)`", table))
    assert "x-switchyard-ttft-ms" not in listed
    r = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    sent = {h for h in r.headers if h.startswith("x-switchyard-")}
    assert sent == listed
