"""all-MiniLM-L6-v2 for the gateway's own use (the semantic cache, the learned routers): one
model per process, loaded on first use, never run on the event loop.

``MiniLM.encode`` is synchronous (scripts, evaluation commands, worker threads).
``MiniLM.embed`` is for the request path: callers on one event loop that ask at the same time
are batched into one ``encode`` in the model's worker thread, so a burst of lookups costs one
forward pass, not one each (vLLM's and TEI's dynamic batching, in miniature).

The forward pass runs in ONNX Runtime when it is installed (``plugins.minilm_onnx``: the same
embeddings, cosine >= 0.9999 to sentence-transformers', and faster: bench/embed_speed.py), and
in sentence-transformers/torch otherwise or when ``backend="torch"``
(``SWITCHYARD_MINILM_BACKEND=torch``); a failed ONNX load is logged once and falls back."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from plugins.embeddings import minilm_path
from plugins.minilm_onnx import OnnxMiniLM

log = logging.getLogger("switchyard.minilm")

_Pending = list[tuple[str, "asyncio.Future[np.ndarray]"]]
_onnx_failure_logged = False


class _LoopQueue:
    """The texts waiting on one event loop, and whether a drain task is running there."""

    __slots__ = ("draining", "pending")

    def __init__(self) -> None:
        self.pending: _Pending = []
        self.draining = False


class MiniLM:
    """Sentence embeddings, float32 rows of length ``dim``, L2-normalised."""

    dim: int = 384
    _shared: ClassVar[MiniLM | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str | Path | None = None, *, max_batch: int = 64,
                 threads: int | None = 1, backend: str | None = None,
                 int8: bool = False) -> None:
        """``int8``: the int8 ONNX export (``OnnxMiniLM(int8=True)``: about half the CPU per
        token, vectors close to fp32's but not equal), fp32 where it cannot load. Keep it a
        separate instance: whatever was fitted on the shared fp32 vectors (the cache's
        verifier, trained routers) must keep reading those."""
        self.path = Path(path) if path is not None else None
        self.int8 = int8
        self.max_batch = max_batch
        self.threads = threads
        # "auto": ONNX Runtime when it loads, else torch; "onnx" or "torch" to insist.
        self.backend = backend or os.environ.get("SWITCHYARD_MINILM_BACKEND", "auto")
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm")
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary())

    @classmethod
    def shared(cls) -> MiniLM:
        """The process's one instance (the model is loaded on its first use, not here)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None and self.backend != "torch":
                self._model = self._load_onnx()
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                if self.threads:
                    # torch's intra-op pool is per process. One thread per forward pass: a
                    # sentence gains nothing from more, and on a busy machine a second
                    # thread waiting for a core made one encode 10x slower (18 ms -> 260 ms
                    # p50 measured on 2 shared cores); concurrency comes from batching.
                    torch.set_num_threads(self.threads)
                path = self.path or minilm_path()
                t0 = time.perf_counter()
                self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
                log.info("loaded %s in %.2f s", path, time.perf_counter() - t0)
            return self._model

    def _load_onnx(self) -> Any:
        """The ONNX Runtime path, or None (logged once) where it cannot load."""
        global _onnx_failure_logged
        path = self.path or minilm_path()
        t0 = time.perf_counter()
        if self.int8:
            try:
                return OnnxMiniLM(path, threads=self.threads, batch_size=self.max_batch,
                                  int8=True)
            except Exception as e:  # noqa: BLE001 - no quantiser: the fp32 export serves
                log.warning("int8 MiniLM unavailable (%s: %s); using fp32", type(e).__name__, e)
        try:
            model = OnnxMiniLM(path, threads=self.threads, batch_size=self.max_batch)
        except Exception as e:  # no onnxruntime, a failed export: torch serves
            if self.backend == "onnx":
                raise
            if not _onnx_failure_logged:
                _onnx_failure_logged = True
                log.warning("MiniLM through ONNX Runtime unavailable (%s: %s); using "
                            "sentence-transformers", type(e).__name__, e)
            return None
        log.info("loaded %s in ONNX Runtime in %.2f s", path, time.perf_counter() - t0)
        return model

    @property
    def runtime(self) -> str:
        """Which forward pass serves: "onnx" or "torch" (loads the model)."""
        return "onnx" if isinstance(self._load(), OnnxMiniLM) else "torch"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array (len(texts), dim), each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        if isinstance(model, OnnxMiniLM):
            return np.ascontiguousarray(model.encode(list(texts)), dtype=np.float32)
        vecs = model.encode(list(texts), batch_size=self.max_batch, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """``encode(texts)`` and each text's output token vectors (``OnnxMiniLM.encode_tokens``),
        from one forward pass over them as one batch, in the calling thread; None where the
        model runs in sentence-transformers (torch). Added for the prompt compressor."""
        model = self._load()
        if not isinstance(model, OnnxMiniLM):
            return None
        return model.encode_tokens(list(texts))

    async def embed(self, text: str) -> np.ndarray:
        """One text's embedding, computed in the worker thread; concurrent callers on this
        loop share one ``encode``."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        queue.pending.append((text, fut))
        if not queue.draining:
            queue.draining = True
            loop.create_task(self._drain(queue))
        return await fut

    async def _drain(self, queue: _LoopQueue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.pending:
                batch = queue.pending[: self.max_batch]
                del queue.pending[: self.max_batch]
                texts = [t for t, _ in batch]
                try:
                    vecs = await loop.run_in_executor(self._pool, self.encode, texts)
                except Exception as e:  # noqa: BLE001 - every waiting caller gets the error
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), vec in zip(batch, vecs, strict=True):
                    if not fut.done():
                        fut.set_result(vec)
        finally:
            queue.draining = False

    def close(self) -> None:
        self._pool.shutdown(wait=True)
