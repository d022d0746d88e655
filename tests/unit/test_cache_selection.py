"""Which stored entry serves when two stored prompts say the same thing (plugins.cache.semantic
with its shipped defaults, the real MiniLM): the nearest entry must pass, and the passing
candidate whose wording the request kept serves when it is worded as the nearest; where
the embedding and the wording pick two differently worded prompts, the lookup is a miss."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.cache.semantic import SemanticIndex, grams, shared_wording
from plugins.minilm import MiniLM


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.shared()


async def test_the_stored_prompt_whose_identifier_the_request_spells_serves(
        model: MiniLM) -> None:
    # MiniLM reads lower case: the two stored prompts get the same vector, so the cosine
    # cannot tell them apart; the request spells the identifier as the second one does
    lower = "You can load a dataset using `imagefolder` by passing the folder in `data_dir`."
    upper = "You can load a dataset using `ImageFolder` by passing the folder in `data_dir`."
    request = "Pass the folder in `data_dir` to load a dataset with `ImageFolder`."
    for first, second in ((lower, upper), (upper, lower)):
        index = SemanticIndex(model)
        index.add("g", first, first, await index.vector(first))
        index.add("g", second, second, await index.vector(second))
        m = await index.lookup("g", request)
        assert m is not None and m.hit and m.entry_id == upper


async def test_when_embedding_and_wording_pick_different_prompts_it_is_a_miss(
        model: MiniLM) -> None:
    written_from = "The `trim` method trims one or more rows and returns a new frame."
    other = "The `trim` method is used to trim one or more rows and return a new frame."
    request = "The `trim` method cuts one or more rows and produces a fresh frame."
    va, vb, vq = model.encode([written_from, other, request])
    # tilt the request's vector a little toward the other prompt: it is now the nearest
    tilted = vq + 0.2 * vb
    tilted /= np.linalg.norm(tilted)
    assert float(vb @ tilted) > float(va @ tilted)
    assert shared_wording(grams(written_from), grams(request)) > \
        shared_wording(grams(other), grams(request))
    served = {}
    for name, options in (("shipped", {}), ("nearest alone", {"select_margin": 0.0}),
                          ("wording serves", {"agreement": False})):
        index = SemanticIndex(model, **options)  # type: ignore[arg-type]
        index.add("g", "written_from", written_from, va)
        index.add("g", "other", other, vb)
        m = await index.lookup("g", request, tilted)
        assert m is not None
        served[name] = m.entry_id if m.hit else None
    assert served == {"shipped": None, "nearest alone": "other",
                      "wording serves": "written_from"}
    # with its own vector the request is nearest to the prompt it was written from: a hit
    index = SemanticIndex(model)
    index.add("g", "written_from", written_from, va)
    index.add("g", "other", other, vb)
    m = await index.lookup("g", request, vq)
    assert m is not None and m.hit and m.entry_id == "written_from"


async def test_the_choice_never_turns_a_miss_into_a_hit(model: MiniLM) -> None:
    near_miss = "Is 100 mg of melatonin safe for adults?"
    same = "Can adults safely take 10 mg of melatonin?"  # farther, and it would pass
    request = "Is 10 mg of melatonin safe for adults?"
    index = SemanticIndex(model)
    index.add("g", "near_miss", near_miss, await index.vector(near_miss))
    index.add("g", "same", same, await index.vector(same))
    m = await index.lookup("g", request)
    assert m is not None and m.entry_id == "near_miss" and not m.hit  # the nearest is vetoed
