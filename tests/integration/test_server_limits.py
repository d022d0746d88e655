"""The server's limits, on the server ``switchyard serve`` runs (``gateway.http.server``),
with raw sockets as the client: what a slow, broken or hostile client meets.

A head larger than ``server.max_header_bytes`` or with more than ``server.max_headers``
headers gets 431 and a closed connection, however long the client goes on sending; a head
or a body that stops arriving gets 408 after its timeout and a closed connection, and a
body cut short leaves a ledger record (408 when the server gave up on it, 499 when the
client left), never a 500 or an ERROR log line. Idle connections are closed while the
gateway keeps answering, and a normal request on a kept-alive connection is unaffected.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer, make_settings, serve, wait_until

from gateway.http.app import create_app

ADMIN = "admin-secret-for-server-limits"
MAX_HEAD = 8192  # small enough that an oversized head reaches the server in one read
TIMEOUT_S = 1.0  # header, body and keep-alive timeouts of the server under test
CHAT = json.dumps({"model": "up", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 4}).encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    upstream = RecordingUpstream("up-model")
    with serve(upstream.app) as up:
        backend = {"name": "up", "plugin": "openai_compatible", "base_url": up.url + "/v1",
                   "model": "up-model"}
        server = {"max_header_bytes": MAX_HEAD, "header_timeout_s": TIMEOUT_S,
                  "body_timeout_s": TIMEOUT_S, "keep_alive_s": TIMEOUT_S}
        settings = make_settings(tmp_path_factory.mktemp("limits"), backends=[backend],
                                 server=server, admin_key=ADMIN)
        with serve(create_app(settings)) as srv:
            yield srv


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Every record from INFO up, of the gateway and of uvicorn (whose loggers do not
    propagate to the root): the tests look for ERROR among them."""
    caplog.set_level(logging.INFO)
    recorder = Recorder()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for lg in loggers:
        lg.addHandler(recorder)
    try:
        yield recorder.records
    finally:
        for lg in loggers:
            lg.removeHandler(recorder)


def connect(srv: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=30)


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (30 s at most)."""
    out = b""
    with sock:
        while chunk := sock.recv(65536):
            out += chunk
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def partial_post(rid: str, declared: int = 1000, sent: int = 10) -> bytes:
    """A chat request that declares ``declared`` body bytes and carries ``sent`` of them."""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nx-request-id: " + rid.encode() +
            b"\r\nContent-Length: %d\r\n\r\n" % declared + CHAT[:sent])


def ledger_row(srv: LiveServer, rid: str) -> dict[str, Any]:
    rows = wait_until(lambda: srv.app.state.ledger.query(
        "SELECT * FROM requests WHERE request_id = ?", (rid,)), what=f"the row of {rid}")
    return dict(rows[0])


def test_a_normal_request_works_and_its_connection_is_reused_then_closed_when_idle(
        gw: LiveServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", CHAT, {"content-type": "application/json"})
    first = conn.getresponse()
    assert first.status == 200 and json.loads(first.read())["choices"]
    sock = conn.sock
    conn.request("GET", "/healthz")
    second = conn.getresponse()
    assert second.status == 200 and second.read() == b'{"status":"ok"}'
    assert conn.sock is sock  # the same connection: kept alive
    assert until_closed(sock) == b""  # idle past server.keep_alive_s: closed, nothing said


def test_an_oversized_head_gets_431_and_the_connection_closes(gw: LiveServer) -> None:
    big = b"a" * (MAX_HEAD + 1000)
    complete = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + big + b"\r\n\r\n"
    incomplete = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + big  # still coming
    for head in (complete, incomplete):
        sock = connect(gw)
        sock.sendall(head)
        response = until_closed(sock)
        assert status_of(response) == 431, response[:200]
        error = json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_headers_too_large"
        assert f"{MAX_HEAD}-byte" in error["message"]


def test_a_20_mb_header_is_not_taken(gw: LiveServer) -> None:
    """The server stops reading at the limit and closes: the client cannot send it all."""
    sock = connect(gw)
    sent, total, closed = 0, 20 * 1024 * 1024, False
    chunk = b"a" * 65536
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        sock.close()
    assert closed and sent < total, f"the server took {sent} bytes of one header"


def test_too_many_headers_get_431(gw: LiveServer) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100))  # 101 with Host
    sock = connect(gw)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n")
    response = until_closed(sock)
    assert status_of(response) == 431
    assert b"at most 100 headers" in response


def test_a_head_that_stalls_gets_408_after_the_header_timeout(gw: LiveServer) -> None:
    sock = connect(gw)
    t0 = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\n")  # and no more
    response = until_closed(sock)
    assert status_of(response) == 408 and b"request_timeout" in response
    assert time.monotonic() - t0 >= TIMEOUT_S * 0.9  # it had its time


def test_a_body_shorter_than_its_content_length_gets_408_and_a_ledger_record(
        gw: LiveServer, logged: list[logging.LogRecord]) -> None:
    sock = connect(gw)
    sock.sendall(partial_post("req-short-body"))  # declares 1000 bytes, sends 10
    response = until_closed(sock)
    assert status_of(response) == 408 and b"request_timeout" in response
    row = ledger_row(gw, "req-short-body")
    assert (row["status"], row["error_code"]) == (408, "request_timeout")
    assert row["endpoint"] == "chat" and row["backend"] in (None, "")
    assert not [r for r in logged if r.levelno >= logging.ERROR]


def test_a_client_that_leaves_mid_body_is_a_499_not_a_server_error(
        gw: LiveServer, logged: list[logging.LogRecord]) -> None:
    sock = connect(gw)
    sock.sendall(partial_post("req-gone-mid-body"))
    sock.close()
    row = ledger_row(gw, "req-gone-mid-body")
    assert (row["status"], row["error_code"]) == (499, "client_disconnected")
    assert 'status="499"' in wait_until(lambda: _metrics_with(gw, 'status="499"'))
    # the admin API's body reads, the same way
    sock = connect(gw)
    sock.sendall(b"POST /admin/teams HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " +
                 ADMIN.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"name\": ")
    sock.close()
    gone = wait_until(lambda: [r for r in logged if "disconnected" in r.getMessage()
                               and "/admin/teams" in r.getMessage()], what="the admin's log line")
    said = [r for r in logged if "disconnected" in r.getMessage()]
    assert {r.levelno for r in said} == {logging.INFO} and not any(r.exc_info for r in said)
    assert gone and not [r for r in logged if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in logged if r.levelno >= logging.ERROR]


def _metrics_with(srv: LiveServer, text: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    return body if text in body else ""


def test_many_idle_and_partial_connections_are_closed_while_the_gateway_answers(
        gw: LiveServer) -> None:
    socks = []
    for i in range(200):
        sock = connect(gw)
        if i % 3 == 1:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        elif i % 3 == 2:
            sock.sendall(partial_post(f"req-idle-{i}"))
        socks.append((i, sock))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200  # served while 200 connections hang
    conn.close()
    for i, sock in socks:
        response = until_closed(sock)  # each one closed by the server, none left open
        if i % 3 == 0:
            assert response == b""  # sent nothing: closed without a word
        else:
            assert status_of(response) == 408
    assert ledger_row(gw, "req-idle-2")["status"] == 408
