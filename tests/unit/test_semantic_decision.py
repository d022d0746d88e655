"""The semantic tier's decision (plugins.cache.semantic with its shipped defaults, the real
MiniLM): paraphrases hit, the issue's near-misses miss however close their cosine, and a
lookup never sees another group's entries."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.cache import semantic
from plugins.cache.decide import parse, vetoes
from plugins.cache.semantic import SemanticIndex
from plugins.minilm import MiniLM

NEAR_MISSES = [
    ("Flights from Boston to Denver", "Flights from Denver to Boston"),
    ("Is 10 mg of melatonin safe for adults?", "Is 100 mg of melatonin safe for adults?"),
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
    ("Which foods are high in iron?", "Which foods are low in iron?"),
    ("What should I eat before a run?", "What should I not eat before a run?"),
    ("What year did World War I end?", "What year did World War II end?"),
    ("Why did the teacher thank the student?", "Why did the student thank the teacher?"),
    ("Best pizza places in Brooklyn", "Best pizza places in Manhattan"),
    ("Which is a good rehab center near Edgar County IL?",
     "Which is a good rehab center near Marshall County IL?"),
]
PARAPHRASES = [
    ("How do I reset my password?", "I forgot my password, how can I reset it?"),
    ("Flights from Boston to Denver next Friday",
     "Find me a flight from Boston to Denver for next Friday"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
]


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.shared()


async def _pair(model: MiniLM, a: str, b: str) -> semantic.Match | None:
    index = SemanticIndex(model)
    index.add("g", "a", a, await index.vector(a))
    return await index.lookup("g", b)


@pytest.mark.parametrize(("a", "b"), NEAR_MISSES)
async def test_a_near_miss_is_a_miss_though_its_cosine_is_high(model: MiniLM, a: str,
                                                                b: str) -> None:
    m = await _pair(model, a, b)
    assert m is not None and m.entry_id == "a"
    assert m.similarity > 0.8  # plain cosine at 0.8 would serve the wrong answer
    assert not m.hit and m.score < SemanticIndex(model).threshold
    assert vetoes(parse(a), parse(b))  # and a check says why


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
async def test_a_paraphrase_is_a_hit(model: MiniLM, a: str, b: str) -> None:
    m = await _pair(model, a, b)
    assert m is not None and m.hit and m.entry_id == "a"


async def test_an_identical_prompt_never_crosses_groups(model: MiniLM) -> None:
    index = SemanticIndex(model)
    text = "Summarise our Q3 revenue report"
    vec = await index.vector(text)
    index.add("team-a", "a1", text, vec)
    assert await index.lookup("team-b", text, vec) is None
    hit = await index.lookup("team-a", text, vec)
    assert hit is not None and hit.hit and hit.similarity > 0.999
    index.add("team-b", "b1", "What is the capital of France?", await index.vector("Paris?"))
    other = await index.lookup("team-b", text, vec)
    assert other is not None and other.entry_id == "b1" and not other.hit


async def test_add_is_idempotent_remove_forgets_and_the_oldest_is_evicted(
        model: MiniLM) -> None:
    index = SemanticIndex(model, max_entries=2)
    vecs = model.encode(["one question", "another question", "a third question"])
    index.add("g", "e1", "one question", vecs[0])
    index.add("g", "e1", "one question", vecs[0])
    assert len(index) == 1
    index.add("g", "e2", "another question", vecs[1])
    index.add("g", "e3", "a third question", vecs[2])  # e1, the oldest, goes
    assert len(index) == 2
    m = await index.lookup("g", "one question", vecs[0])
    assert m is not None and m.entry_id != "e1"
    index.remove("e2")
    index.remove("e3")
    assert len(index) == 0 and await index.lookup("g", "x", vecs[0]) is None


async def test_a_large_group_is_searched_through_its_graph_with_the_same_answers(
        model: MiniLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "ANN_MIN", 64)
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((200, model.dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    index = SemanticIndex(model)
    for i, v in enumerate(noise):
        index.add("g", f"n{i}", f"noise {i}", v)
    q = "How do I reset my password?"
    index.add("g", "pw", q, await index.vector(q))
    assert index._groups["g"].ann is not None
    m = await index.lookup("g", "I forgot my password, how can I reset it?")
    assert m is not None and m.entry_id == "pw" and m.hit
    index.remove("pw")
    m = await index.lookup("g", "I forgot my password, how can I reset it?")
    assert m is not None and m.entry_id != "pw" and not m.hit


def test_one_name_for_another_is_vetoed_two_spellings_of_one_are_not() -> None:
    assert vetoes(parse("What is the capital of Austria?"),
                  parse("What is the capital of Australia?")) == ["names"]
    assert vetoes(parse("GATE exam CE cut-off marks"), parse("GATE exam EE cut-off marks")) == [
        "names"]
    assert vetoes(parse("How many names had Arjun?"), parse("How many names had Arjuna?")) == []
    assert vetoes(parse("What is Bernoullis equation?"),
                  parse("What is Bernoulli's equation?")) == []
    # a name for a common word, or two words changed, is the verifier's to judge
    assert vetoes(parse("Best hotels in Paris"), parse("Best hotels in town")) == []
    assert vetoes(parse("Flights to Paris from Rome"), parse("Flights to Lyon from Milan")) == []


def test_a_scale_word_is_a_number_only_after_a_number() -> None:
    assert vetoes(parse("A builder for several thousand audio files"),
                  parse("A builder for thousands of audio files")) == []
    assert vetoes(parse("Is a thousand steps a day enough?"),
                  parse("Is a hundred steps a day enough?")) == ["numbers"]
    assert vetoes(parse("Is 5 million users a lot?"), parse("Is 5 billion users a lot?")) == [
        "numbers"]


async def test_a_miss_says_why(model: MiniLM) -> None:
    index = SemanticIndex(model)
    for i, text in enumerate(("Is 10 mg of melatonin safe for adults?",
                              "How do I bake sourdough bread?")):
        index.add("g", f"e{i}", text, await index.vector(text))
    m = await index.lookup("g", "Is 100 mg of melatonin safe for adults?")
    assert m is not None and not m.hit and m.why == "the nearest stored prompt differs: numbers"
    m = await index.lookup("g", "What is the best sourdough starter to buy?")
    assert m is not None and not m.hit and m.entry_id == "e1"
    assert m.why.startswith("the nearest stored prompt's score ") and "below 0.667" in m.why
    assert (await index.lookup("g", "How do I bake sourdough bread?")).why == ""  # type: ignore[union-attr]


def test_a_rewording_whose_words_cross_a_to_by_chance_is_no_reversed_direction() -> None:
    # the direction check reads prompts that are otherwise the same words; two rewordings of
    # one sentence, four content words apart, cross "to" by chance and still ask one thing
    saved = parse("The report can be saved to disk using export()")
    reworded = parse("export() can be used to store the report on disk")
    assert "direction" not in vetoes(saved, reworded)
    assert "direction" in vetoes(parse("How do I convert Celsius to Fahrenheit?"),
                                 parse("How do I convert Fahrenheit to Celsius?"))


def test_boosted_trees_are_read_as_exported() -> None:
    # two stumps and one two-level tree over three features; a leaf points at itself
    from plugins.cache.decide import Trees

    trees = Trees(baseline=-0.5,
                  feature=np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 2, 0, 0, 0]]),
                  threshold=np.array([[0.5, 0, 0, 0, 0], [0.2, 0, 0, 0, 0],
                                      [0.9, 0.3, 0, 0, 0]]),
                  left=np.array([[1, 1, 2, 3, 4], [1, 1, 2, 3, 4], [1, 3, 2, 3, 4]]),
                  right=np.array([[2, 1, 2, 3, 4], [2, 1, 2, 3, 4], [2, 4, 2, 3, 4]]),
                  value=np.array([[0, -1.0, 1.0, 0, 0], [0, 0.25, -0.25, 0, 0],
                                  [0, 0, 2.0, 0.5, -0.5]]),
                  depth=2)
    assert trees.logit(np.array([0.4, 0.1, 0.1])) == -0.5 - 1.0 + 0.25 + 0.5
    assert trees.logit(np.array([0.6, 0.3, 0.5])) == -0.5 + 1.0 - 0.25 - 0.5
    assert trees.logit(np.array([0.95, 0.3, 0.0])) == -0.5 + 1.0 - 0.25 + 2.0


def test_the_alignment_reads_only_the_words_on_one_side() -> None:
    from plugins.cache.decide import alignment

    same = alignment(parse("How do I learn Python quickly?"),
                     parse("How can I learn Python quickly?"))
    assert same == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # no content word on one side only
    swapped = alignment(parse("How do I learn Python quickly?"),
                        parse("How do I learn Java quickly?"))
    assert 0.0 < swapped[0] < 1.0 and swapped[0] == swapped[1]  # min = mean of the two
    assert swapped[5] == 1.0  # "Python", "Java": names on one side only, unaligned
