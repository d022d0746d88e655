"""``vllm``: an OpenAI-compatible vLLM server, plus what its ``/metrics`` tells.

A background task scrapes the server's Prometheus text every ``scrape_interval_s``:
waiting and running requests, KV-cache use (``vllm:kv_cache_usage_perc``, older
``vllm:gpu_cache_usage_perc``) and the time-to-first-token histogram, so the router sees the
engine's load without any I/O on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from gateway import BackendContext, BackendLoad, hookimpl
from plugins.openai_compatible import OpenAICompatibleBackend, OpenAICompatibleConfig

log = logging.getLogger("switchyard.vllm")


class VLLMConfig(OpenAICompatibleConfig):
    metrics_url: str | None = None  # default: base_url without /v1, plus /metrics
    scrape_interval_s: float = Field(1.0, gt=0)


def parse_vllm_metrics(text: str, model: str | None = None) -> BackendLoad:
    """Read vLLM's metrics (V1 names, with the older ones as fallbacks)."""
    waiting = running = 0.0
    kv: float | None = None
    ttft_sum = ttft_count = 0.0
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
    ttft = ttft_sum / ttft_count if ttft_count else None
    return BackendLoad(queue_depth=int(waiting), running=int(running), kv_cache_usage=kv,
                       ttft_s=ttft, scraped_at=time.monotonic())


class VLLMBackend(OpenAICompatibleBackend):
    config: VLLMConfig

    def __init__(self, config: VLLMConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.metrics_url = config.metrics_url or root + "/metrics"
        self._load = BackendLoad()
        self._ttft_prev: tuple[float, float] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._scrape_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def load(self) -> BackendLoad:
        return self._load

    async def scrape(self) -> BackendLoad:
        async with self.context.http().get(
            self.metrics_url, timeout=aiohttp.ClientTimeout(total=self.config.timeouts.connect_s)
        ) as resp:
            resp.raise_for_status()
            text = await resp.text()
        load = parse_vllm_metrics(text, self.model)
        self._load = load
        return load

    async def _scrape_loop(self) -> None:
        failed = False
        while True:
            try:
                await self.scrape()
                failed = False
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failed:
                    log.warning("cannot scrape %s: %s", self.metrics_url, type(e).__name__)
                failed = True
            await asyncio.sleep(self.config.scrape_interval_s)


@hookimpl(trylast=True)
def switchyard_register_backends(register: Any) -> None:
    register("vllm", VLLMBackend, VLLMConfig)
