"""Prompt embeddings for the learned models, behind one place so the embedder can change:

- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (the shared ``plugins.minilm``): one
  transformer forward pass per prompt;
- ``minilm-int8``: the same model with int8 weights (``plugins.minilm_onnx.quantized``, ONNX
  Runtime's dynamic quantisation), its own instance, one intra-op thread: the same forward
  pass in a fraction of the CPU time, vectors close to ``minilm``'s (README);
- ``static``: a bag of MiniLM's own input token embeddings, IDF-weighted (the weights
  fitted on the training prompts and kept in the model file): the tokenizer and one table
  look-up, no forward pass (the idea of model2vec's static distillation, without its
  distillation step), about a hundred times cheaper per prompt and a little less accurate
  (measured in the README);
- ``distilled``: the same bag, IDF-weighted, over MiniLM's distilled static table (each
  vocabulary token's own MiniLM output, ``plugins.minilm_onnx.distilled``: model2vec's
  distillation, computed once per machine, about 15 s of CPU, and cached), whose rows for
  the training prompts' tokens are then fitted so that each training prompt's bag points
  where its MiniLM sentence vector does (``fit_rows``: tokenlearn's idea, as one ridge
  regression); the fitted rows are kept in the model file. As cheap as ``static`` per prompt,
  and nearly as good as ``minilm`` for routing MMLU (README).

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
EMBEDDERS = ("minilm", "minilm-int8", "static", "distilled", "distilled+int8")
STATIC = ("static", "distilled")  # a bag of table rows, IDF-weighted
BLENDS = {"distilled+int8": ("distilled", "minilm-int8")}  # both vectors, side by side
DEFAULT_EMBEDDER = "distilled"  # what `switchyard train router` and `eval router` use unasked:
# the best train CV of MMLU (APGR minus CPT(50 %)) and a decision under 5 ms (README)


def parts(kind: str) -> tuple[str | None, str | None]:
    """(the bag of table rows, the forward pass) an embedder is made of, either may be None."""
    if kind in BLENDS:
        return BLENDS[kind]
    return (kind, None) if kind in STATIC else (None, kind)
F32 = NDArray[np.float32]


_int8_lock = threading.Lock()
_int8_models: dict[int | None, Any] = {}


def int8_model(max_tokens: int | None = None) -> Any:
    """The process's int8 MiniLM (``plugins.minilm_onnx.OnnxMiniLM``, one thread; one per
    token cap), loaded on first use; the shared fp32 ``MiniLM`` is not touched."""
    with _int8_lock:
        if max_tokens not in _int8_models:
            from plugins.embeddings import minilm_path
            from plugins.minilm_onnx import OnnxMiniLM

            _int8_models[max_tokens] = OnnxMiniLM(minilm_path(), threads=1, int8=True,
                                                  max_tokens=max_tokens)
        return _int8_models[max_tokens]


def encode(texts: Sequence[str], kind: str = "minilm", max_tokens: int | None = None) -> F32:
    """MiniLM (``kind`` ``minilm`` or ``minilm-int8``): L2-normalised float32 rows, one per
    text (its first ``MAX_TEXT_CHARS``; int8: its first ``max_tokens`` tokens, where set)."""
    cut = [t[:MAX_TEXT_CHARS] for t in texts]
    if kind == "minilm-int8":
        vecs: F32 = np.ascontiguousarray(int8_model(max_tokens).encode(cut), dtype=np.float32)
        return vecs
    if kind != "minilm" or max_tokens is not None:
        raise ValueError(f"encode: {kind!r} (max_tokens {max_tokens}) is not a MiniLM forward pass")
    from plugins.minilm import MiniLM

    return MiniLM.shared().encode(cut)


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
        self.path = path
        self.table: F32 = np.ascontiguousarray(weights[key], dtype=np.float32)
        self._distilled: F32 | None = None

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

    def distilled(self) -> F32:
        """MiniLM's distilled table (computed on the first call, then from the disk cache)."""
        with self._lock:
            if self._distilled is None:
                from plugins.minilm_onnx import distilled

                table = distilled(self.path)
                if table.shape != self.table.shape:
                    raise ValueError(f"the distilled table is {table.shape}, the vocabulary "
                                     f"{self.table.shape}")
                self._distilled = np.ascontiguousarray(table, dtype=np.float32)
            return self._distilled

    def encode(self, texts: Sequence[str], idf: F32, table: F32 | None = None) -> F32:
        """The IDF-weighted sum of ``table``'s rows (the input embeddings by default) for each
        text's tokens, L2-normalised."""
        table = self.table if table is None else table
        out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
        for row, ids in enumerate(self.ids(texts)):
            if ids:
                out[row] = idf[ids] @ table[ids]
        unit: F32 = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return unit


UNSEEN = "max"  # the weight of a token no training prompt holds (weigh_unseen)


def weigh_unseen(idf: F32, how: str = UNSEEN) -> F32:
    """``idf`` (``StaticTable.idf`` of the training prompts) with the weight of the tokens none
    of them holds (the largest weight, ``log(1 + n) + 1``) kept (``max``), set to 0 (``zero``:
    left out of a prompt's bag) or to the median weight of the tokens seen (``median``).
    Those tokens' distilled rows were never fitted."""
    unseen = idf >= idf.max()
    if how == "max" or unseen.all():
        return idf
    out = idf.copy()
    out[unseen] = 0.0 if how == "zero" else float(np.median(idf[~unseen]))
    return out


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "switchyard" / "embeddings"


def encode_cached(texts: Sequence[str], cache: Path | None = None, kind: str = "minilm",
                  max_tokens: int | None = None) -> F32:
    """``encode``, kept on disk under the hash of all the texts (evaluations re-read the
    same files; the 14,037 MMLU prompts take minutes on two busy cores)."""
    from plugins.minilm_onnx import QUANT_VERSION

    h = hashlib.sha256(EMBEDDER.encode() if kind == "minilm" else
                       f"{EMBEDDER}/{kind}/{QUANT_VERSION}/{max_tokens}".encode())
    for t in texts:
        h.update(hashlib.sha256(t[:MAX_TEXT_CHARS].encode()).digest())
    path = (cache or cache_dir()) / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        vecs: F32 = np.load(path, allow_pickle=False)
        if vecs.shape[0] == len(texts):
            return vecs
    vecs = encode(texts, kind, max_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
    return vecs


# 5-fold CV on MMLU's train half, APGR 0.664 / 0.666 / 0.666 / 0.666 / 0.663 / 0.656 at ridge
# 0.001 / 0.003 / 0.01 / 0.03 / 0.3 / 3: a plateau (the system's diagonal averages 0.0026)
FIT_L2 = 0.03
FIT_MAX = 8000  # prompts the fit reads at most (its dual system is n x n)


def fit_rows(ids: Sequence[Sequence[int]], idf: F32, base: F32, targets: F32,
             l2: float = FIT_L2, max_examples: int = FIT_MAX,
             seed: int = 0) -> tuple[NDArray[np.int64], NDArray[np.float16]]:
    """Rows of ``base`` for the tokens in ``ids``, moved so that each prompt's IDF-weighted
    bag, scaled to unit length by its norm under ``base``, lands near its ``targets`` row
    (MiniLM's sentence vector): ridge regression towards ``base``, solved in the dual
    (one n x n system, n the prompts). Returns (token ids, their rows, float16 as stored)."""
    import scipy.linalg  # scipy: installed with sentence-transformers, which needs it
    import scipy.sparse as sp

    n = len(ids)
    keep = (np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
            if n > max_examples else np.arange(n))
    rows = np.concatenate([np.full(len(ids[i]), r) for r, i in enumerate(keep)] + [np.zeros(0)])
    toks = np.concatenate([np.asarray(ids[i], dtype=np.int64) for i in keep] + [np.zeros(0, np.int64)])
    used = np.unique(toks)
    W = sp.csr_matrix((idf[toks].astype(np.float64), (rows.astype(np.int64), np.searchsorted(used, toks))),
                      shape=(len(keep), len(used)))  # repeated tokens add up
    B = base[used].astype(np.float64)
    norms = np.linalg.norm(W @ B, axis=1)
    A = sp.diags(np.where(norms > 1e-12, 1.0 / np.maximum(norms, 1e-12), 0.0)) @ W
    K = (A @ A.T).toarray()
    K[np.diag_indices_from(K)] += l2
    Z = scipy.linalg.solve(K, targets[keep].astype(np.float64) - A @ B, assume_a="pos",
                           overwrite_a=True, overwrite_b=True)
    return used, np.asarray(B + A.T @ Z, dtype=np.float16)


class PromptEncoder:
    """How a router model turns prompts into vectors, the same in training and serving:
    ``route_text`` of each prompt, then the embedder the model was trained with."""

    def __init__(self, kind: str = "minilm", idf: F32 | None = None,
                 rows: NDArray[np.int64] | None = None,
                 fitted: NDArray[np.float16] | None = None,
                 max_tokens: int | None = None) -> None:
        if kind not in EMBEDDERS:
            raise ValueError(f"unknown embedder {kind!r} (known: {', '.join(EMBEDDERS)})")
        self.max_tokens = max_tokens
        self.bag, self.forward = parts(kind)
        if self.bag and idf is None:
            raise ValueError(f"the {kind} embedder needs its IDF weights")
        if self.bag == "distilled" and (rows is None or fitted is None or len(rows) != len(fitted)):
            raise ValueError(f"the {kind} embedder needs its fitted rows")
        if max_tokens is not None and (self.forward != "minilm-int8" or max_tokens < 3):
            raise ValueError(f"a token cap ({max_tokens}) is for int8 MiniLM, at least 3")
        self.kind, self.idf, self.rows, self.fitted = kind, idf, rows, fitted
        self._table: F32 | None = None

    @classmethod
    def fit(cls, kind: str, prompts: Sequence[str], *, disk_cache: bool = False,
            cache: Path | None = None, max_tokens: int | None = None) -> PromptEncoder:
        """``distilled`` embeds ``prompts`` with MiniLM to fit its rows (``disk_cache``,
        ``cache``: as in ``encode``); ``max_tokens``: int8 MiniLM's token cap."""
        from plugins.learn.features import route_text

        bag, _ = parts(kind)
        if bag is None:
            return cls(kind, max_tokens=max_tokens)
        static = StaticTable.shared()
        texts = [route_text(p) for p in prompts]
        idf = static.idf(texts)
        if bag == "distilled":
            idf = weigh_unseen(idf)
        if bag == "static":
            return cls(kind, idf, max_tokens=max_tokens)
        rows, fitted = fit_rows(static.ids(texts), idf, static.distilled(),
                                encode_cached(texts, cache) if disk_cache else encode(texts))
        return cls(kind, idf, rows, fitted, max_tokens)

    def table(self) -> F32 | None:
        """The token table a static kind sums (None: MiniLM's input embeddings)."""
        if self.bag != "distilled":
            return None
        if self._table is None:
            assert self.rows is not None and self.fitted is not None
            table = StaticTable.shared().distilled().copy()
            if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= len(table)) or \
                    self.fitted.shape[1:] != table.shape[1:]:
                raise ValueError("the fitted rows do not match MiniLM's vocabulary and width")
            table[self.rows] = self.fitted
            self._table = table
        return self._table

    def encode(self, prompts: Sequence[str], *, disk_cache: bool = False,
               cache: Path | None = None) -> F32:
        """``disk_cache``: keep MiniLM's vectors of these prompts on disk (bulk runs). A blend:
        its parts' unit vectors side by side, each scaled by 1/sqrt(2) (a unit row whose dot
        products are the mean of the parts' cosines)."""
        from plugins.learn.features import route_text

        texts = [route_text(p) for p in prompts]
        out: list[F32] = []
        if self.bag:
            assert self.idf is not None
            out.append(StaticTable.shared().encode(texts, self.idf, self.table()))
        if self.forward:
            out.append(encode_cached(texts, cache, self.forward, self.max_tokens) if disk_cache
                       else encode(texts, self.forward, self.max_tokens))
        if len(out) == 1:
            return out[0]
        both: F32 = (np.hstack(out) / np.float32(np.sqrt(len(out)))).astype(np.float32)
        return both

    def warm(self) -> None:
        self.encode(["warm up"])
