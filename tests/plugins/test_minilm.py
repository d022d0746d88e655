"""plugins.minilm: the real all-MiniLM-L6-v2, unit rows, and concurrent ``embed`` callers
batched into one encode that runs off the event loop; the ONNX Runtime path gives
sentence-transformers' embeddings, and without onnxruntime torch serves."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from plugins import minilm
from plugins.minilm import MiniLM


class CountingMiniLM(MiniLM):
    """The real model, counting its encodes and where they run."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(len(texts))
        self.threads.add(threading.current_thread().name)
        return super().encode(texts)


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.shared()


def test_shared_is_one_instance() -> None:
    assert MiniLM.shared() is MiniLM.shared()


def test_rows_are_unit_float32_and_paraphrases_are_closer(model: MiniLM) -> None:
    v = model.encode(["How do I reset my password?", "How can I change my password?",
                      "What is the capital of France?"])
    assert v.shape == (3, model.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > 0.7 > float(v[0] @ v[2])
    assert model.encode([]).shape == (0, model.dim)


async def test_concurrent_embeds_are_one_batch_off_the_loop() -> None:
    m = CountingMiniLM()
    m._model = MiniLM.shared()._load()  # the same weights, no second load
    texts = [f"what is {i} plus {i}?" for i in range(12)]
    vecs = await asyncio.gather(*(m.embed(t) for t in texts))
    assert m.batches == [12]  # one forward pass for the burst
    assert threading.main_thread().name not in m.threads
    assert np.allclose(np.stack(vecs), MiniLM.shared().encode(texts), atol=1e-5)
    one = await m.embed("a later, lone question")  # a later caller is not stuck behind
    assert m.batches == [12, 1] and one.shape == (m.dim,)
    m.close()


async def test_an_encode_error_reaches_every_caller() -> None:
    class Broken(MiniLM):
        def encode(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("no model here")

    b = Broken()
    results = await asyncio.gather(b.embed("a"), b.embed("b"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    b.close()


HELDOUT = Path(__file__).resolve().parents[2] / "bench" / "data" / "cache_heldout.jsonl"


def heldout_texts() -> list[str]:
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    # and the edges: nothing, spaces, accents and CJK, and a prompt past the 256-token cut
    return [str(r[k]) for r in rows for k in ("a", "b")] + [
        "", "  padded  ", "crème brûlée à Tōkyō 東京", "tokens " * 400]


def test_onnx_matches_sentence_transformers(model: MiniLM) -> None:
    if model.runtime != "onnx":
        pytest.skip("onnxruntime is not installed: MiniLM runs on torch")
    texts = heldout_texts()
    torch_path = MiniLM(backend="torch")
    ref = torch_path.encode(texts)
    got = model.encode(texts)
    assert torch_path.runtime == "torch" and got.shape == ref.shape and got.dtype == np.float32
    assert float((ref * got).sum(axis=1).min()) >= 0.9999
    one = model.encode([texts[0]])  # alone (no padding) as in a batch
    assert float(one[0] @ got[0]) >= 0.9999
    torch_path.close()


def test_without_onnxruntime_it_falls_back_to_torch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    monkeypatch.setattr(minilm, "_onnx_failure_logged", False)
    m = MiniLM()
    with caplog.at_level(logging.WARNING, logger="switchyard.minilm"):
        assert m.runtime == "torch"
        v = m.encode(["How do I reset my password?", "How can I change my password?"])
    assert v.shape == (2, m.dim) and float(v[0] @ v[1]) > 0.7
    assert [r for r in caplog.records if "onnxruntime" in r.getMessage()]
    with pytest.raises(ImportError):  # insisting on ONNX says why it cannot
        MiniLM(backend="onnx").encode(["x"])
    m.close()


def test_the_distilled_table_is_minilm_on_each_token_alone(model: MiniLM) -> None:
    """A one-token text's sentence embedding is that token's distilled row, normalised."""
    from tokenizers import Tokenizer

    from plugins.embeddings import minilm_path
    from plugins.minilm_onnx import distilled

    table = distilled(minilm_path())
    assert table.shape == (30522, model.dim) and table.dtype == np.float32
    words = ["cat", "paris", "theorem", "violin"]
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    rows = table[[tok.token_to_id(w) for w in words]]
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cos = np.sum(model.encode(words) * rows, axis=1)
    assert np.all(cos > 0.9999), cos
    assert float(rows[0] @ rows[3]) < 0.9  # and the rows differ
