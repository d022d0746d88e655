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

import threading

from plugins.minilm import MiniLM

_lock = threading.Lock()
_int8: MiniLM | None = None


def embedder(int8: bool = True) -> MiniLM:
    """The process's compressor embedder: one int8 instance (loaded on first use), or the
    shared fp32 ``MiniLM``."""
    global _int8
    if not int8:
        return MiniLM.shared()
    with _lock:
        if _int8 is None:
            _int8 = MiniLM(int8=True)
        return _int8
