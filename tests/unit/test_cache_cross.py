"""The semantic cache's opt-in cross-encoder (plugins/cache/cross.py) as a user meets it: the
shipped file loads over the installed MiniLM and tells a paraphrase from a near-miss the
vetoes do not catch; the default decision does not read it; where the base model is missing,
the cache still answers with the vector verifier, and says so once in the log."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from plugins.cache import cross
from plugins.cache.cross import CROSS_FILE, CrossEncoder
from plugins.cache.decide import load_verifier, parse, vetoes
from plugins.cache.semantic import SemanticIndex
from plugins.minilm import MiniLM

PARAPHRASE = ("How can I improve my English speaking skills?",
              "What should I do to speak English better?")
NEAR_MISS = ("What are the side effects of ibuprofen?", "What are the side effects of aspirin?")


@pytest.fixture(scope="module")
def encoder() -> CrossEncoder:
    return CrossEncoder(CROSS_FILE)


def test_the_shipped_file_names_its_calibration_floor_and_threshold() -> None:
    meta = cross.read_meta(CROSS_FILE)
    assert "QQP train half" in meta["fitted_on"]
    assert 0.5 <= meta["threshold"] < 1 and -1 <= meta["floor"] < 1
    assert len(meta["calibration"]) == 2


def test_it_tells_a_paraphrase_from_a_near_miss_no_veto_catches(encoder: CrossEncoder) -> None:
    assert not vetoes(parse(NEAR_MISS[0]), parse(NEAR_MISS[1]))
    same = encoder.probability(*PARAPHRASE)
    other = encoder.probability(*NEAR_MISS)
    assert same is not None and other is not None
    assert same >= encoder.threshold > other


async def test_asked_for_it_serves_a_paraphrase_and_refuses_the_near_miss() -> None:
    index = SemanticIndex(MiniLM.shared(), verifier=load_verifier(cross=CROSS_FILE))
    assert index.verifier.cross is not None
    for a, b, hit in (PARAPHRASE + (True,), NEAR_MISS + (False,)):
        index.add("g", "a", a, await index.vector(a))
        m = await index.lookup("g", b)
        assert m is not None and m.hit is hit, (a, b, m)


def test_the_default_decision_does_not_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_CACHE_CROSS", raising=False)
    assert SemanticIndex(MiniLM.shared()).verifier.cross is None
    monkeypatch.setenv("SWITCHYARD_CACHE_CROSS", str(CROSS_FILE))
    assert load_verifier().cross is not None


async def test_without_the_base_model_the_vector_verifier_decides(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = CrossEncoder(CROSS_FILE, base=Path("/nonexistent/minilm"))
    verifier = load_verifier()
    plain = SemanticIndex(MiniLM.shared(), verifier=verifier)
    assert plain.verifier.cross is None
    index = SemanticIndex(MiniLM.shared(), verifier=replace(verifier, cross=broken))
    caplog.set_level(logging.WARNING, "switchyard.cache.cross")
    for a, b in (PARAPHRASE, NEAR_MISS, ("Who wrote Hamlet?", "Who is the author of Hamlet?")):
        for ix in (index, plain):
            ix.add("g", "a", a, await ix.vector(a))
        got, want = await index.lookup("g", b), await plain.lookup("g", b)
        assert got is not None and want is not None
        assert (got.hit, got.score) == (want.hit, want.score)
    assert broken.probability(*PARAPHRASE) is None
    warnings = [r for r in caplog.records if "cross-encoder is unavailable" in r.getMessage()]
    assert len(warnings) == 1
