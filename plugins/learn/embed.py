"""Prompt embeddings for the learned models, behind one place so the embedder can change:

- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (the shared ``plugins.minilm``): one
  transformer forward pass per prompt;
- ``static``: a bag of MiniLM's own input token embeddings, IDF-weighted (the weights
  fitted on the training prompts and kept in the model file): the tokenizer and one table
  look-up, no forward pass (the idea of model2vec's static distillation, without its
  distillation step), about a hundred times cheaper per prompt and a little less accurate
  (measured in the README).

For evaluation runs, ``encode_cached`` keeps the vectors of a whole data file on disk.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from plugins.learn.features import MAX_TEXT_CHARS

EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDERS = ("minilm", "static")
F32 = NDArray[np.float32]


def encode(texts: Sequence[str]) -> F32:
    """MiniLM: L2-normalised float32 rows, one per text (its first ``MAX_TEXT_CHARS``)."""
    from plugins.minilm import MiniLM

    return MiniLM.shared().encode([t[:MAX_TEXT_CHARS] for t in texts])


class StaticTable:
    """MiniLM's tokenizer and input token-embedding table, loaded once per process from the
    model's own files (``tokenizer.json``, ``model.safetensors``), without torch."""

    _shared: ClassVar[StaticTable | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        from plugins.embeddings import minilm_path

        path = minilm_path()
        self.tokenizer: Any = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(256)
        weights = load_file(str(path / "model.safetensors"))
        key = next(k for k in weights if k.endswith("word_embeddings.weight"))
        self.table: F32 = np.ascontiguousarray(weights[key], dtype=np.float32)

    @classmethod
    def shared(cls) -> StaticTable:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(
            [t[:MAX_TEXT_CHARS] for t in texts], add_special_tokens=False)]

    def idf(self, texts: Sequence[str]) -> F32:
        """Inverse document frequency of every token over ``texts`` (the training prompts)."""
        df = np.zeros(len(self.table))
        for ids in self.ids(texts):
            df[list(set(ids))] += 1
        return (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)

    def encode(self, texts: Sequence[str], idf: F32) -> F32:
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for row, ids in enumerate(self.ids(texts)):
            if ids:
                out[row] = idf[ids] @ self.table[ids]
        unit: F32 = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return unit


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "switchyard" / "embeddings"


def encode_cached(texts: Sequence[str], cache: Path | None = None) -> F32:
    """``encode`` (MiniLM), kept on disk under the hash of all the texts (evaluations
    re-read the same files; the 14,037 MMLU prompts take minutes on two busy cores)."""
    h = hashlib.sha256(EMBEDDER.encode())
    for t in texts:
        h.update(hashlib.sha256(t[:MAX_TEXT_CHARS].encode()).digest())
    path = (cache or cache_dir()) / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        vecs: F32 = np.load(path, allow_pickle=False)
        if vecs.shape[0] == len(texts):
            return vecs
    vecs = encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
    return vecs


class PromptEncoder:
    """How a router model turns prompts into vectors, the same in training and serving:
    ``route_text`` of each prompt, then the embedder the model was trained with."""

    def __init__(self, kind: str = "minilm", idf: F32 | None = None) -> None:
        if kind not in EMBEDDERS:
            raise ValueError(f"unknown embedder {kind!r} (known: {', '.join(EMBEDDERS)})")
        if kind == "static" and idf is None:
            raise ValueError("the static embedder needs its IDF weights")
        self.kind, self.idf = kind, idf

    @classmethod
    def fit(cls, kind: str, prompts: Sequence[str]) -> PromptEncoder:
        from plugins.learn.features import route_text

        idf = StaticTable.shared().idf([route_text(p) for p in prompts]) if kind == "static" else None
        return cls(kind, idf)

    def encode(self, prompts: Sequence[str], *, disk_cache: bool = False,
               cache: Path | None = None) -> F32:
        """``disk_cache``: keep MiniLM's vectors of these prompts on disk (bulk runs)."""
        from plugins.learn.features import route_text

        texts = [route_text(p) for p in prompts]
        if self.kind == "static":
            assert self.idf is not None
            return StaticTable.shared().encode(texts, self.idf)
        return encode_cached(texts, cache) if disk_cache else encode(texts)

    def warm(self) -> None:
        self.encode(["warm up"])
