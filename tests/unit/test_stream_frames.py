"""``gateway.SSEFrames``: an upstream's stream body, however its reads fall, becomes blocks
of canonical events; canonical ones pass untouched."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway import SSEFrames, sse_chunks
from gateway.sse import canonical


def _ev(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CHUNKS = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": t}}]}
          for t in ("Hel", "lo\n\n", 'data: "usage" [DONE]', "\u00e9\U0001f600")]
BODY = b"".join(map(_ev, CHUNKS)) + b"data: [DONE]\n\n"


def _feed(frames: SSEFrames, reads: list[bytes]) -> bytes:
    out = b"".join(frames.feed(r) for r in reads)
    return out + frames.close()


def test_a_canonical_block_passes_as_it_came() -> None:
    block = b"".join(map(_ev, CHUNKS))
    f = SSEFrames()
    assert f.feed(block) is block  # not copied, not re-encoded
    assert sse_chunks(block) == CHUNKS
    assert f.feed(b"data: [DONE]\n\n") == b"" and f.done


@pytest.mark.parametrize("body", [
    BODY,
    BODY.replace(b"\n", b"\r\n"),  # CRLF line ends
    re.sub(rb"(^|\n)data: ", rb"\1data:", BODY),  # no space after the colon
    b": keep-alive\n\n" + re.sub(rb"(^|\n)data: ", rb"\1event: message\ndata: ", BODY),
], ids=["canonical", "crlf", "no-space", "comments-and-fields"])
def test_any_split_of_any_framing_gives_the_same_events(body: bytes) -> None:
    want = b"".join(map(_ev, CHUNKS))
    for cut in range(1, len(body)):
        f = SSEFrames()
        got = _feed(f, [body[:cut], body[cut:]])
        assert got == want, cut
        assert f.done and canonical(got)
    f = SSEFrames()
    assert _feed(f, [bytes([b]) for b in body]) == want and f.done  # a byte a read


def test_done_ends_the_stream_and_what_follows_is_ignored() -> None:
    f = SSEFrames()
    assert f.feed(_ev(CHUNKS[0]) + b"data: [DONE]\n\n" + _ev(CHUNKS[1])) == _ev(CHUNKS[0])
    assert f.done and f.feed(_ev(CHUNKS[2])) == b"" and f.close() == b""


def test_an_error_event_stops_the_stream_after_what_came_before_it() -> None:
    f = SSEFrames()
    err = {"error": {"message": "overloaded", "type": "server_error"}}
    assert f.feed(_ev(CHUNKS[0]) + _ev(err) + _ev(CHUNKS[1])) == _ev(CHUNKS[0])
    assert f.error == err
    # "error" inside a chunk's text is text
    text = {"choices": [{"index": 0, "delta": {"content": '"error"'}}]}
    g = SSEFrames()
    assert g.feed(_ev(text)) == _ev(text) and g.error is None


@pytest.mark.parametrize("line", [b"data:{not json}\n\n", b"data: [1, 2]\n\n"])
def test_a_line_read_that_is_not_a_json_object_raises(line: bytes) -> None:
    with pytest.raises(ValueError):
        SSEFrames().feed(_ev(CHUNKS[0]) + line)


def test_a_canonical_event_is_not_parsed() -> None:
    """What passes untouched is not parsed either: bad JSON in the canonical shape reaches
    the client as the upstream sent it, as through any proxy (the relay parses the events
    its record needs, and reports those as malformed)."""
    block = _ev(CHUNKS[0]) + b"data: {not json}\n\n"
    assert SSEFrames().feed(block) is block


def test_a_last_event_without_its_line_end_is_kept() -> None:
    f = SSEFrames()
    assert f.feed(b"data: " + orjson.dumps(CHUNKS[0])) == b""
    assert f.close() == _ev(CHUNKS[0])
