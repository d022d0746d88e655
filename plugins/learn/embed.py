"""Prompt embeddings for the learned models: the shared MiniLM (``plugins.minilm``), behind
one function so that the embedder can change in one place; for evaluation runs, a disk cache
of the vectors of a whole data file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from plugins.learn.features import MAX_TEXT_CHARS

EMBEDDER = "all-MiniLM-L6-v2"


def encode(texts: Sequence[str]) -> NDArray[np.float32]:
    """L2-normalised float32 rows, one per text (its first ``MAX_TEXT_CHARS`` characters)."""
    from plugins.minilm import MiniLM

    return MiniLM.shared().encode([t[:MAX_TEXT_CHARS] for t in texts])


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "switchyard" / "embeddings"


def encode_cached(texts: Sequence[str], cache: Path | None = None) -> NDArray[np.float32]:
    """``encode``, kept on disk under the hash of all the texts (evaluations re-read the
    same files many times; the 14,037 MMLU prompts take minutes on two cores)."""
    h = hashlib.sha256(EMBEDDER.encode())
    for t in texts:
        h.update(hashlib.sha256(t[:MAX_TEXT_CHARS].encode()).digest())
    path = (cache or cache_dir()) / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        vecs: NDArray[np.float32] = np.load(path, allow_pickle=False)
        if vecs.shape[0] == len(texts):
            return vecs
    vecs = encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
    return vecs
