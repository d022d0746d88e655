"""The compression engine (plugins/compress): what it may change, what it must send verbatim,
and that a question's passage survives."""

from __future__ import annotations

import json
import re

import pytest

from plugins.compress.engine import Compressor, eval_messages
from plugins.compress.units import split_content

FILLER = [
    ("Lighthouse", ("A lighthouse is a tower with a lamp that guides ships at night along the "
                   "rocky coast and warns them of shoals and reefs near harbours.")),
    ("Sourdough", ("Sourdough bread is leavened by wild yeast and lactic acid bacteria kept "
                  "alive in a starter that bakers feed with flour and water every day.")),
    ("Glacier", ("A glacier is a persistent body of dense ice that moves slowly under its own "
                "weight, carving valleys and leaving moraines behind as it retreats.")),
    ("Chess opening", ("The Sicilian Defence is a chess opening that begins with the moves e4 "
                      "and c5, and it is the most popular response to the king's pawn.")),
    ("Honeybee", ("Honeybees live in colonies with one queen, thousands of workers and a few "
                 "drones, and they communicate the direction of flowers by dancing.")),
    ("Volcano", ("A volcano is a rupture in the crust of a planet that lets hot lava, ash and "
                "gases escape from a magma chamber below the surface of the earth.")),
    ("Violin", ("The violin is a wooden string instrument played with a bow, the smallest and "
               "highest-pitched member of the violin family used in orchestras.")),
]
GOLD = ("Eiffel Tower", ("The Eiffel Tower is a wrought-iron lattice tower in Paris that was "
                        "designed by the engineer Gustave Eiffel and completed in 1889 for the "
                        "World's Fair held that year."))


def documents(docs: list[tuple[str, str]], repeat: int = 3) -> str:
    """``Document [i](Title: T) text`` lines; each text repeated to make a long context."""
    return "\n".join(f"Document [{i}](Title: {t}) {' '.join([x] * repeat)}"
                     for i, (t, x) in enumerate(docs, 1))


def deletes_only(before: str, after: str) -> bool:
    """``after``'s words are ``before``'s in the same order, some left out: nothing added,
    nothing moved."""
    rest = iter(before.split())
    return all(any(w == b for b in rest) for w in after.split())


def doc_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"Document \[(\d+)\]", text)]


@pytest.fixture
def lexical() -> Compressor:
    """The engine without embeddings (its lexical ranker alone): no model to load."""
    return Compressor(None, min_words=50)


async def test_short_prompt_is_sent_unchanged(lexical: Compressor) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    out = await lexical.compress(messages)
    assert out.messages == messages
    assert out.changed == [] and out.stages == []
    assert out.words_before == out.words_after == 8


async def test_a_rag_prompt_keeps_the_relevant_passage_in_order(lexical: Compressor) -> None:
    docs = [*FILLER[:4], GOLD, *FILLER[4:]]
    context = documents(docs)
    messages = eval_messages("who designed the eiffel tower in paris", context)
    out = await lexical.compress(messages, ratio=4.0)
    sent = out.messages[0]["content"]
    assert "Gustave Eiffel" in sent
    assert out.words_after * 3 < out.words_before
    kept = doc_numbers(sent)
    assert 5 in kept and kept == sorted(kept)   # original order, numbering untouched
    assert out.changed == ["messages[0].content"] and out.stages == ["coarse", "lean"]
    assert out.messages[1] == messages[1]       # the question, verbatim
    assert sent.startswith("Answer the question using the documents below.\n\n")


async def test_minilm_ranks_a_passage_that_shares_no_words_with_the_question() -> None:
    """Every passage gets a MiniLM probe (its title and first words), so the one that answers
    is found even where BM25 puts it last, behind passages that share the question's words."""
    from plugins.minilm import MiniLM

    decoys = [("Naval manual", ("A French naval engineer wrote the best-known manual on rope "
                                "knots, still printed for sailors in every port.")),
              ("Venture capital", ("Venture capital funds pay an engineer well; the best-known "
                                   "fund backs software start-ups in California.")),
              ("Stone masonry", ("A stone wall needs a mason more than an engineer, say the "
                                 "best-known builders of dry walls in the French hills."))]
    gold = ("Paris landmark", ("Its iron lattice was put up by Gustave Eiffel's company for the "
                               "exhibition of 1889, and it still draws millions of visitors."))
    messages = eval_messages("which engineer is behind the best-known monument of the French capital",
                             documents([*decoys[:2], *FILLER, gold, decoys[2]], 3))
    out = await Compressor(MiniLM.shared(), min_words=50).compress(messages, ratio=5.0)
    assert "Gustave Eiffel" in out.messages[0]["content"]
    assert out.words_after * 4 < out.words_before
    lexical = await Compressor(None, min_words=50).compress(messages, ratio=5.0)
    assert "Gustave Eiffel" not in lexical.messages[0]["content"], "BM25 alone misses it"


async def test_lean_drops_function_words_and_nothing_else() -> None:
    """The fine stage leaves out articles, forms of be and have, it/this/that/which...: the
    kept text is the original's words in order, some left out; names stay whole; ``lean:
    false`` sends kept sentences verbatim."""
    text = ("The Who were an English rock band that was formed in London in 1964. It is known "
            "for the album Tommy, which has sold millions. Vitamin A is a nutrient.")
    docs = [*FILLER, ("The Who", text)]
    messages = eval_messages("when was the who formed", documents(docs, 1))
    out = await Compressor(None, min_words=50).compress(messages, ratio=3.0)
    sent = out.messages[0]["content"]
    assert "The Who English rock band formed in London in 1964." in sent
    assert "known for album Tommy, sold millions." in sent and "Vitamin A nutrient." in sent
    assert deletes_only(messages[0]["content"], sent) and out.stages == ["coarse", "lean"]
    verbatim = await Compressor(None, min_words=50, lean=False).compress(messages, ratio=3.0)
    assert text in verbatim.messages[0]["content"] and verbatim.stages == ["coarse"]


async def test_protected_parts_go_out_verbatim(lexical: Compressor) -> None:
    code = "```python\n" + "\n".join(f"x{i} = compute({i})  # step {i}" for i in range(40)) + "\n```"
    payload = json.dumps({"rows": [{"id": i, "name": f"item {i}"} for i in range(30)]})
    tool_call = {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": json.dumps({"q": "tower"})}}
    history = " ".join(x for _, x in FILLER)
    system = "You are a careful assistant. Cite the document you use."
    question = "Given all that, who designed the Eiffel Tower?"
    messages = [
        {"role": "system", "content": f"{system}\n\n{documents([*FILLER, GOLD])}"},
        {"role": "user", "content": f"{history}\n\n{code}\n\n{payload}\n\n{history}"},
        {"role": "assistant", "content": history, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": history},
        {"role": "user", "content": question},
    ]
    out = await lexical.compress(messages, ratio=5.0)
    assert out.words_after < out.words_before
    sent = out.messages
    assert sent[0]["content"].startswith(system + "\n\n")
    assert code in sent[1]["content"] and payload in sent[1]["content"]
    assert sent[2]["tool_calls"] == [tool_call]
    assert sent[3] == messages[3]                 # tool results are not compressed
    assert sent[4] == messages[4]                 # the last user question
    assert [m["role"] for m in sent] == [m["role"] for m in messages]
    assert "messages[4].content" in out.kept_verbatim
    assert "messages[2].tool_calls" in out.kept_verbatim
    assert {"messages[1].content:code", "messages[1].content:json"} <= set(out.kept_verbatim)
    assert "messages[0].content" in out.changed and "messages[4].content" not in out.changed


async def test_a_prompt_of_code_and_json_only_is_unchanged(lexical: Compressor) -> None:
    code = "```\n" + "\n".join(f"line {i} of a long program listing" for i in range(60)) + "\n```"
    messages = [{"role": "user", "content": code},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "What does it do?\n\n" + code}]
    out = await lexical.compress(messages)
    assert out.messages == messages and out.changed == []


async def test_earlier_turns_shrink_and_keep_their_order(lexical: Compressor) -> None:
    turns: list[dict[str, str]] = []
    for i, (_, text) in enumerate(FILLER * 2):
        turns.append({"role": "user" if i % 2 == 0 else "assistant",
                      "content": f"Turn {i}. {text}\n\nMore on turn {i}: {text}"})
    messages = [*turns, {"role": "user", "content": "Tell me about glaciers and moraines."}]
    out = await lexical.compress(messages, ratio=3.0)
    assert len(out.messages) == len(messages)
    assert out.messages[-1] == messages[-1]
    assert out.words_after * 2 < out.words_before
    assert any("moraines" in m["content"] for m in out.messages[:-1])
    for before, after in zip(messages, out.messages, strict=True):
        assert after["role"] == before["role"]
        assert after["content"] == "…" or deletes_only(before["content"], after["content"])


def test_documents_split_back_to_the_same_text() -> None:
    text = "Intro line.\n\n" + documents([*FILLER[:3], GOLD], 1) + "\n\nQuestion: who?"
    segments = split_content(text, paragraphs_are_units=False)
    assert "".join(s.header + s.text for s in segments) == text
    assert [s.title for s in segments if s.unit] == ["Lighthouse", "Sourdough", "Glacier",
                                                     "Eiffel Tower"]
    assert not segments[-1].unit and "Question: who?" in segments[-1].text


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError, match="ratoi"):
        Compressor(None, ratoi=4)


async def test_shortlist_zero_is_lexical_only() -> None:
    """``shortlist: 0`` (a config option) turns the MiniLM pass off: no embedding is asked."""

    class NoEmbedder:
        async def embed(self, text: str) -> object:
            raise AssertionError("embedded with shortlist 0")

    comp = Compressor(NoEmbedder(), min_words=50, shortlist=0)  # type: ignore[arg-type]
    out = await comp.compress(eval_messages("who designed the eiffel tower",
                                            documents([*FILLER, GOLD])), ratio=4.0)
    assert "Gustave Eiffel" in out.messages[0]["content"]


def test_a_cut_unit_keeps_the_sentence_nearest_in_meaning_where_sentences_were_embedded() -> None:
    """Where the probe was unsure the engine embeds the first units' sentences: a unit cut to
    fit then keeps the sentence MiniLM puts nearest the question, not the one that merely
    shares its words (BM25 decides only where nothing was embedded)."""
    from plugins.compress import rank

    sents = ["The tower was painted red by the town council in 1950. ",
             "Gustave Eiffel's company drew up its plans and put it up for the exhibition. "]
    question = "who designed the tower the town council painted"
    w = rank.Weights()
    assert rank.best_sentences(question, sents, 12, w) == [0]
    assert rank.best_sentences(question, sents, 12, w, cosines=[0.21, 0.58]) == [1]


def test_the_compressor_embeds_with_its_own_int8_minilm() -> None:
    """The compressor's MiniLM is the int8 export, one instance of its own (the shared fp32
    vectors, which the cache and routers were fitted on, are not touched); ``int8: false``
    gives the shared one. Its vectors stay close to the fp32 ones."""
    import numpy as np

    from plugins.compress import make_compressor
    from plugins.compress.embedder import embedder
    from plugins.minilm import MiniLM

    assert embedder(False) is MiniLM.shared()
    assert embedder() is embedder() and embedder().int8 and embedder() is not MiniLM.shared()
    assert make_compressor({"int8": False}).embedder is MiniLM.shared()
    assert make_compressor({}).embedder is embedder()
    texts = ["who designed the eiffel tower", GOLD[1]]
    fp32, int8 = MiniLM.shared().encode(texts), embedder().encode(texts)
    assert (fp32 * int8).sum(axis=1).min() > 0.97
    assert not np.array_equal(fp32, int8)  # the int8 export, not the fp32 one
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)


def test_maxsim_reads_each_question_token_s_best_match() -> None:
    """``rank.maxsim``: every question token's best cosine among the unit's tokens, averaged;
    ``rank.whole_score`` fuses it with the cosine on the cosine's scale (none read: the cosine)."""
    import numpy as np

    from plugins.compress import rank

    eye = np.eye(4, dtype=np.float32)
    question = eye[[0, 1]]                      # two tokens
    both = eye[[0, 1, 2]]                       # a unit holding both
    one = eye[[0, 3, 3]]                        # a unit holding one of them
    assert rank.maxsim(question, both) == 1.0 and rank.maxsim(question, one) == 0.5
    assert rank.maxsim(question, eye[:0]) == 0.0
    w = rank.Weights()
    assert w.maxsim == 0.5
    assert rank.whole_score(0.6, None, w) == 0.6
    assert rank.whole_score(0.6, 0.9, w) == pytest.approx((0.6 + 0.5 * 0.9) / 1.5)
    assert rank.whole_score(0.6, 0.9, rank.Weights(maxsim=0.0)) == 0.6
    assert w.sentence_maxsim == 1.0 and rank.sentence_score(0.6, 0.9, w) == 0.9
    assert rank.sentence_score(0.6, None, w) == 0.6
    assert rank.sentence_score(0.6, 0.9, rank.Weights(sentence_maxsim=0.5)) == pytest.approx(0.75)


def test_encode_tokens_is_encode_with_the_output_tokens() -> None:
    """``MiniLM.encode_tokens``: the same pooled vectors as ``encode`` from one pass, and each
    text's output tokens (no [CLS]/[SEP], no padding), of unit length."""
    import numpy as np

    from plugins.compress.embedder import embedder

    model = embedder()
    texts = ["who designed the eiffel tower", GOLD[1]]
    got = model.encode_tokens(texts)
    assert got is not None
    pooled, tokens = got
    assert np.allclose(pooled, model.encode(texts), atol=1e-4)
    ids = model._load().tokenizer.encode(texts[0])
    assert tokens[0].shape == (len(ids.ids) - 2, model.dim)  # the question's tokens, no padding
    assert all(np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-4) for t in tokens)


async def test_the_shortlist_is_ranked_by_cosine_and_maxsim_together() -> None:
    """Where the probe is unsure, the shortlist's order is its cosine fused with its MaxSim
    (``weights.maxsim``): a unit a little behind by cosine but far ahead by MaxSim goes first;
    with ``maxsim`` 0, or an embedder without token vectors, the cosine alone ranks."""
    import numpy as np

    from plugins.compress import rank

    docs = [("Alpha", "alpha " * 60), ("Beta", "beta " * 60), ("Gamma", "gamma " * 60)]
    q = np.array([1.0, 0, 0, 0], dtype=np.float32)
    cos = {"Alpha": 0.60, "Beta": 0.55, "Gamma": 0.1}  # by cosine Alpha leads, narrowly
    late = {"Alpha": 0.2, "Beta": 0.9, "Gamma": 0.1}    # by MaxSim Beta, far ahead

    def vec(c: float) -> np.ndarray:
        return np.array([c, np.sqrt(1 - c * c), 0, 0], dtype=np.float32)

    class Fake:
        dim = 4

        async def embed(self, text: str) -> np.ndarray:
            name = text.split("\n")[0]
            return q if name not in cos else vec(cos[name] - 0.3)  # probes: all unsure

        def encode_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
            names = [t.split("\n")[0] for t in texts]
            if names[0] not in cos:  # the question: one token, the question's vector
                return np.stack([q]), [q[None, :]]
            return (np.stack([vec(cos[n]) for n in names]),
                    [np.stack([vec(late[n])]) for n in names])

    class NoTokens(Fake):
        encode_tokens = None  # type: ignore[assignment]

    messages = eval_messages("which one", documents(docs, repeat=1))
    for fake, weights, first in ((Fake(), rank.Weights(), "Beta"),
                                 (Fake(), rank.Weights(maxsim=0.0), "Alpha"),
                                 (NoTokens(), rank.Weights(), "Alpha")):
        comp = Compressor(fake, min_words=50, weights=weights,  # type: ignore[arg-type]
                          lean=False)
        out = await comp.compress(messages, ratio=3.0)
        kept = re.findall(r"Title: (\w+)", out.messages[0]["content"])
        assert kept and kept[0] == first, (weights.maxsim, kept)
