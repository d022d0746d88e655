"""The compressor's MiniLM: the int8 export by default (``int8: false`` in ``compress.options``
for the shared fp32 one).

The compressor spends nearly all its time in MiniLM's forward passes (about 2,000 tokens per
long prompt where its first pass is unsure). The int8 export (``plugins.minilm_onnx``,
``OnnxMiniLM(int8=True)``: int8 weights per output column, ONNX Runtime's dynamic
quantisation) runs them in well under half the CPU on this machine's int8 kernels, and on the
NQ train items the compressor keeps as many gold answers with its vectors
(docs/compression.md). Its vectors are close to the fp32 ones, not equal, so it is a second
instance of ``MiniLM`` with a model of its own: the semantic cache and the learned routers
keep reading the shared fp32 vectors they were fitted on. Where the int8 export cannot load,
the fp32 model serves (logged once)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from plugins.minilm import MiniLM

log = logging.getLogger("switchyard.compress")

_lock = threading.Lock()
_int8: MiniLM | None = None
_failure_logged = False


class Int8MiniLM(MiniLM):
    """``MiniLM`` whose ONNX model is the int8 export; fp32 (ONNX or torch) if that fails."""

    def _load_onnx(self) -> Any:
        global _failure_logged
        from plugins.embeddings import minilm_path
        from plugins.minilm_onnx import OnnxMiniLM

        try:
            return OnnxMiniLM(self.path or minilm_path(), threads=self.threads,
                              batch_size=self.max_batch, int8=True)
        except Exception as e:  # noqa: BLE001 - no quantiser, an old minilm_onnx: fp32 serves
            if not _failure_logged:
                _failure_logged = True
                log.warning("int8 MiniLM unavailable for compression (%s: %s); using fp32",
                            type(e).__name__, e)
            return super()._load_onnx()


def embedder(int8: bool = True) -> MiniLM:
    """The process's compressor embedder: one int8 instance (loaded on first use), or the
    shared fp32 ``MiniLM``."""
    global _int8
    if not int8:
        return MiniLM.shared()
    with _lock:
        if _int8 is None:
            _int8 = Int8MiniLM()
        return _int8
