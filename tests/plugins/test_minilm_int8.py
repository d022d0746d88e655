"""plugins.minilm_onnx's int8 option (the learned router's ``minilm-int8`` embedder): its own
file beside the fp32 export, unit rows close to the fp32 vectors (which stay as they were),
and a token cap that truncates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plugins.embeddings import minilm_path
from plugins.minilm_onnx import OnnxMiniLM, exported, quantized

HELDOUT = Path(__file__).resolve().parents[2] / "bench" / "data" / "cache_heldout.jsonl"


def _texts() -> list[str]:
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    return [str(r[k]) for r in rows[:40] for k in ("a", "b")] + ["", "tokens " * 400]


@pytest.fixture(scope="module")
def fp32() -> OnnxMiniLM:
    return OnnxMiniLM(minilm_path(), threads=1)


@pytest.fixture(scope="module")
def int8() -> OnnxMiniLM:
    return OnnxMiniLM(minilm_path(), threads=1, int8=True)


def test_the_int8_file_sits_beside_the_export_and_is_smaller(int8: OnnxMiniLM) -> None:
    q, f = quantized(minilm_path()), exported(minilm_path())
    assert q.parent == f.parent and q != f
    assert q.stat().st_size < 0.7 * f.stat().st_size  # int8 weights (the embedding table stays fp32)
    assert quantized(minilm_path()) == q  # made once


def test_int8_rows_are_unit_and_close_to_fp32(fp32: OnnxMiniLM, int8: OnnxMiniLM) -> None:
    texts = _texts()
    ref, got = fp32.encode(texts), int8.encode(texts)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(ref * got, axis=1)
    assert float(cos.mean()) > 0.98 and float(cos.min()) > 0.9, (cos.mean(), cos.min())
    assert not np.allclose(ref, got, atol=1e-4)  # other vectors: the default ones are fp32's
    v = int8.encode(["How do I reset my password?", "How can I change my password?",
                     "What is the capital of France?"])
    assert float(v[0] @ v[1]) > 0.7 > float(v[0] @ v[2])


def test_a_token_cap_truncates(fp32: OnnxMiniLM) -> None:
    capped = OnnxMiniLM(minilm_path(), threads=1, max_tokens=8)
    long = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat."
    head = " ".join(long.split()[:6])  # 6 words, 6 word pieces: [CLS] + 6 + [SEP] = 8 tokens
    assert float(capped.encode([long])[0] @ fp32.encode([head])[0]) > 0.9999
    assert float(fp32.encode([long])[0] @ fp32.encode([head])[0]) < 0.99
    with pytest.raises(ValueError, match="max_tokens"):
        OnnxMiniLM(minilm_path(), max_tokens=2)
