"""A fixed-response OpenAI-compatible upstream for benchmarks: raw asyncio + uvloop,
HTTP/1.1 keep-alive, answers every POST with the same chat completion. Fast enough
(tens of thousands of requests/s on one core) that it is never the bottleneck.

A request with ``"stream": true`` gets the same answer as server-sent events (chunked):
``--stream-chunks`` content chunks ``--stream-interval-ms`` apart, then a usage chunk and
``[DONE]``; a client that goes away mid-stream stops it.

    python bench/upstream.py PORT [--stream-chunks 8] [--stream-interval-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

BODY = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
})
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
MODELS = orjson.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]})
MODELS_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(MODELS)).encode() + b"\r\n\r\n" + MODELS
)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _event(obj: object) -> bytes:
    return _http_chunk(b"data: " + orjson.dumps(obj) + b"\n\n")


def stream_events(chunks: int) -> list[bytes]:
    """The SSE events of one streamed answer: ``chunks`` content deltas, a finish chunk, a
    usage chunk (prompt 12 tokens, one completion token per delta) and ``[DONE]``."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "bench-model"}
    out = [_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}]})]
    out += [_event({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                         "finish_reason": None}]}) for i in range(chunks)]
    out.append(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    out.append(_event({**base, "choices": [], "usage": {
        "prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}}))
    out.append(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return out


class Upstream(asyncio.Protocol):
    events: list[bytes] = stream_events(8)
    interval_s = 0.02

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.streaming = False
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._serve()

    def _serve(self) -> None:
        while not self.streaming:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15: j if j >= 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4: total]
            self.buf = self.buf[total:]
            if head.startswith(b"get"):
                self.t.write(MODELS_RESPONSE)
            elif b'"stream"' in body and orjson.loads(body).get("stream"):
                self.streaming = True
                self.task = asyncio.get_running_loop().create_task(self._stream())
            else:
                self.t.write(RESPONSE)

    async def _stream(self) -> None:
        self.t.write(STREAM_HEAD)
        for i, ev in enumerate(self.events):
            if i:  # between events only: a request kept alive behind the stream is not held
                await asyncio.sleep(self.interval_s)
            if self.closed:
                return
            self.t.write(ev)
        self.streaming = False
        self._serve()  # a request that came in behind the stream (keep-alive)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("--stream-chunks", type=int, default=8)
    ap.add_argument("--stream-interval-ms", type=float, default=20.0)
    args = ap.parse_args()
    Upstream.events = stream_events(args.stream_chunks)
    Upstream.interval_s = args.stream_interval_ms / 1000
    uvloop.install()
    try:
        asyncio.run(main(args.port))
    except KeyboardInterrupt:
        pass
