"""all-MiniLM-L6-v2 through ONNX Runtime: the same embeddings as sentence-transformers (its
BERT forward pass exported once with ``torch.onnx.export``, then the model's own mean pooling
and L2 norm in NumPy), without torch on the request path.

The export is kept under ``~/.cache/switchyard/minilm-onnx/<hash of the model files>/``
(``SWITCHYARD_CACHE_DIR`` moves the root), written to a temporary name and renamed, so
processes starting together never read half a file. ``plugins.minilm.MiniLM`` uses this when
``onnxruntime`` imports and the export works, and sentence-transformers otherwise.

``distilled(path)``: a static table distilled from the model (model2vec's method): every
vocabulary token run alone through the exported body, ``[CLS] token [SEP]``, its output
mean-pooled; (vocabulary, dim) float32, computed once (about 15 s of CPU) and kept beside
the export as ``distilled.npy``. A bag of these rows embeds a prompt with the tokenizer and
a table look-up. The default embeddings (``OnnxMiniLM.encode``) do not use it.

``quantized(path)``: the export with its weight matrices in int8 (ONNX Runtime's dynamic
quantisation: int8 weights, each MatMul's input quantised to uint8 per call), kept beside the
export as ``model.int8-<QUANT_VERSION>.onnx``; ``OnnxMiniLM(path, int8=True)`` runs it. Its
vectors are close to the fp32 ones, not equal (and depend a little on the CPU's int8
kernels), so nothing that was fitted on the default vectors (the semantic cache's verifier)
reads them: only a learned router trained with them (``switchyard train router --embedder
minilm-int8``) and the prompt compressor (``plugins.compress.embedder``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("switchyard.minilm")

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json",
               "1_Pooling/config.json")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_VERSION = "1"  # bump when the export itself changes: a new cache key
QUANT_VERSION = "2"  # bump when the int8 recipe changes: a new file name


def cache_root() -> Path:
    root = os.environ.get("SWITCHYARD_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "switchyard"


def model_hash(path: Path) -> str:
    """sha256 over the model's files (weights, config, tokenizer, pooling): the cache key."""
    h = hashlib.sha256(EXPORT_VERSION.encode())
    for name in MODEL_FILES:
        f = path / name
        if not f.exists():
            continue
        h.update(name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def export(path: Path, dest: Path) -> None:
    """Export the transformer (token embeddings out) with dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), local_files_only=True,
                                      attn_implementation="eager").eval()

    class _Body(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    export_onnx(_Body(), dest, "token_embeddings", {0: "batch", 1: "seq"})


def write_atomic(dest: Path, write: Callable[[str], None], suffix: str) -> None:
    """``write(tmp)`` into a temporary file beside ``dest``, then renamed to it: a process
    starting meanwhile finds the whole file or none. ``suffix`` ends the temporary name
    (``np.save`` appends ``.npy`` to a name without it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_onnx(module: Any, dest: Path, output: str, output_axes: dict[int, str]) -> None:
    """Export a torch ``module`` that takes BERT's three ``INPUTS`` (batch and sequence axes
    dynamic) and returns ``output`` to ``dest``, atomically."""
    import torch

    ids = torch.ones(2, 8, dtype=torch.long)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "seq"} for name in INPUTS}
    axes[output] = output_axes

    def write(tmp: str) -> None:
        # the tracer's advisories (advanced indexing, constant folding) are about the graph,
        # not the caller: under a warnings-as-errors filter (pytest's here, or -W error) they
        # would fail the export, and the embedder would fall back to torch
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (ids, ids, torch.zeros_like(ids)), tmp,
                              input_names=list(INPUTS), output_names=[output],
                              dynamic_axes=axes, opset_version=17, dynamo=False)

    write_atomic(dest, write, ".onnx.tmp")


def quantize_file(src: Path, dest: Path) -> None:
    """``src`` with every MatMul that has constant weights in int8, one scale per output
    column (ONNX Runtime's dynamic quantisation), written to ``dest`` atomically."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # a ModelProto, not the path: given a path, quantize_dynamic writes its shape-inferred
    # copy beside the source under a fixed name, which processes starting together share
    write_atomic(dest, lambda tmp: quantize_dynamic(
        onnx.load(str(src)), tmp, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
        per_channel=True, extra_options={"MatMulConstBOnly": True}), ".onnx.tmp")


def exported(path: Path) -> Path:
    """The ONNX file for the model at ``path``, exported on first use."""
    dest = cache_root() / "minilm-onnx" / model_hash(path) / "model.onnx"
    if not dest.exists():
        t0 = time.perf_counter()
        export(path, dest)
        log.info("exported %s to %s in %.1f s", path, dest, time.perf_counter() - t0)
    return dest


def _save_atomic(dest: Path, array: np.ndarray) -> None:
    write_atomic(dest, lambda tmp: np.save(tmp, array, allow_pickle=False), ".tmp.npy")


def distilled(path: Path, batch: int = 1024) -> np.ndarray:
    """The model's static table (see the module's doc), from the cache or computed now."""
    dest = cache_root() / "minilm-onnx" / model_hash(path) / "distilled.npy"
    if dest.exists():
        table: np.ndarray = np.load(dest, allow_pickle=False)
        return table
    t0 = time.perf_counter()
    model = OnnxMiniLM(path, threads=1)
    size = model.tokenizer.get_vocab_size(with_added_tokens=True)
    ends = [model.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")]
    if None in ends:
        raise ValueError(f"{path}: the tokenizer has no [CLS]/[SEP] to distil with")
    table = np.empty((size, model.dim), dtype=np.float32)
    for start in range(0, size, batch):
        ids = np.arange(start, min(size, start + batch), dtype=np.int64)
        n = len(ids)
        feed = {"input_ids": np.stack([np.full(n, ends[0]), ids, np.full(n, ends[1])], axis=1),
                "attention_mask": np.ones((n, 3), dtype=np.int64),
                "token_type_ids": np.zeros((n, 3), dtype=np.int64)}
        table[ids] = np.asarray(model.session.run(None, feed)[0], dtype=np.float32).mean(axis=1)
    _save_atomic(dest, table)
    log.info("distilled a static table of %d tokens from %s in %.1f s", size, path,
             time.perf_counter() - t0)
    return table


def quantized(path: Path) -> Path:
    """The int8 ONNX file for the model at ``path`` (see the module's doc), made on first use
    from ``exported(path)``: every MatMul with a constant weight (the attention projections
    and the feed-forward layers, nearly all the compute) gets int8 weights, one scale per
    output column (per channel: mean cosine 0.993 to the fp32 vectors on 150 MMLU prompts,
    against 0.951 with one scale per matrix, at the same speed); the attention's activation
    products, the embeddings and the layer norms stay fp32."""
    src = exported(path)
    dest = src.with_name(f"model.int8-{QUANT_VERSION}.onnx")
    if dest.exists():
        return dest
    t0 = time.perf_counter()
    quantize_file(src, dest)
    log.info("quantised %s to int8 in %.1f s", src, time.perf_counter() - t0)
    return dest


class OnnxMiniLM:
    """Tokenise (the model's fast tokenizer, truncated at its ``max_seq_length``), run the
    exported body, mean-pool over the attention mask and L2-normalise: sentence-transformers'
    Transformer -> Pooling(mean) -> Normalize, step for step.

    ``int8``: run ``quantized(path)`` instead (other vectors: see the module's doc);
    ``max_tokens``: truncate at fewer tokens than the model's ``max_seq_length``."""

    def __init__(self, path: Path, *, threads: int | None = 1, batch_size: int = 64,
                 int8: bool = False, max_tokens: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.batch_size = batch_size
        self.dim = int(json.loads((path / "config.json").read_text())["hidden_size"])
        max_len = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        if max_tokens is not None:
            if max_tokens < 3:
                raise ValueError(f"max_tokens {max_tokens}: [CLS] and [SEP] need room")
            max_len = min(max_len, max_tokens)
        self.int8 = int8
        pooling = json.loads((path / "1_Pooling/config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
                v for k, v in pooling.items() if k.startswith("pooling_mode_") and
                k != "pooling_mode_mean_tokens"):
            raise ValueError(f"{path}: only mean pooling is reproduced here, not {pooling}")
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
        self.tokenizer.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")  # to the longest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, every core
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(quantized(path) if int8 else exported(path)), opts,
                                            providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Similar lengths together, as sentence-transformers does: less padding per batch.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._batch([texts[i] for i in idx])
        return out

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``encode(texts)`` and, from the same forward pass (one batch), each text's output
        token vectors without [CLS], [SEP] and padding, each of unit length: what a
        late-interaction score (ColBERT's MaxSim) reads. Added for the prompt compressor."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        pooled, enc, out = self._forward(list(texts))
        tokens = []
        for e, t in zip(enc, out, strict=True):
            keep = [i for i, (m, sp) in enumerate(zip(e.attention_mask, e.special_tokens_mask,
                                                       strict=True)) if m and not sp]
            v = t[keep]
            tokens.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
        return pooled, tokens

    def _batch(self, texts: list[str]) -> np.ndarray:
        return self._forward(texts)[0]

    def _forward(self, texts: list[str]) -> tuple[np.ndarray, list[Any], np.ndarray]:
        """One forward pass over ``texts`` as one batch: their pooled unit vectors, their
        encodings, and the output token vectors (padded to the longest)."""
        enc = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        tokens = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: np.ndarray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit, enc, tokens
