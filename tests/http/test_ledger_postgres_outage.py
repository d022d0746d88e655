"""A PostgreSQL ledger that is away never fails a request: the gateway starts, answers every
request (no 500), holds records up to ``ledger.buffer_max``, then drops and counts them
(``switchyard_ledger_dropped_records``); once the database is there, what it held lands."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import openai
import psycopg
from pg_support import db_url, drop_database
from support import make_settings, serve, wait_until

from gateway.http.app import create_app
from gateway.ledger_queries import totals


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"no {name} in /metrics"
    return float(found.group(1))


def test_requests_are_served_while_the_ledger_database_is_away(
        tmp_path: Path, pg_admin_url: str) -> None:
    name = f"switchyard_test_{uuid.uuid4().hex[:12]}"  # not created yet: the database is away
    settings = make_settings(
        tmp_path, backends=[{"name": "echo", "plugin": "echo"}],
        ledger={"kind": "postgres", "url": db_url(pg_admin_url, name), "buffer_max": 5,
                "flush_interval_s": 0.05, "connect_timeout_s": 1})
    app = create_app(settings)
    try:
        with serve(app) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0,
                                   timeout=30)
            for i in range(8):
                out = client.chat.completions.create(
                    model="echo-1", max_tokens=3,
                    messages=[{"role": "user", "content": f"hello {i}"}])
                assert out.choices[0].message.content
            client.close()
            assert _metric(srv.url, "switchyard_ledger_buffered_records") == 5
            assert _metric(srv.url, "switchyard_ledger_dropped_records") == 3
            with psycopg.connect(pg_admin_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")  # the database is back
            wait_until(lambda: _metric(srv.url, "switchyard_ledger_buffered_records") == 0,
                       timeout=60, what="the held records written")
        assert totals(app.state.ledger)["requests"] == 5
    finally:
        drop_database(pg_admin_url, name)
