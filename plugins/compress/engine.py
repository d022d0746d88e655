"""The prompt compressor: question-aware coarse selection (and, optionally, LLMLingua-style token
dropping) over a chat request's messages.

``Compressor.compress`` takes the messages of a chat request and returns what to send instead,
with what changed and what was kept verbatim. It never runs its work on the event loop: the
parsing and ranking run in a worker thread, and the embeddings go through
``MiniLM.embed`` (batched with every other caller on the loop). ``eval_messages`` is the shape
``switchyard eval compress`` sends, the shape a RAG application sends: documents in a system
message, the question as the last user message."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from plugins.compress import rank
from plugins.compress.units import Part, Segment, last_user_index, question_of, split_messages

if TYPE_CHECKING:
    from plugins.minilm import MiniLM

DEFAULT_RATIO = 15.0      # words before / words after aimed at (whole prompt)
DEFAULT_MIN_WORDS = 300   # prompts shorter than this are sent as they are
MIN_CONTEXT_WORDS = 24    # the least context kept, however small the budget
WORDS_PER_TOKEN = 0.75    # to turn a token budget into words (English, BPE tokenizers)
EVAL_SYSTEM = "Answer the question using the documents below."


@dataclass(slots=True)
class Compressed:
    messages: list[dict[str, Any]]
    words_before: int
    words_after: int
    changed: list[str]
    kept_verbatim: list[str]
    ms: float
    stages: list[str] = field(default_factory=list)


def eval_messages(question: str, context: str) -> list[dict[str, Any]]:
    """An evaluation item as a chat request: the documents after a one-line instruction in the
    system message, the question as the user message (docs/compression.md)."""
    return [{"role": "system", "content": f"{EVAL_SYSTEM}\n\n{context}"},
            {"role": "user", "content": question}]


def count_words(messages: list[dict[str, Any]]) -> int:
    return sum(rank.words(m["content"]) for m in messages if isinstance(m.get("content"), str))


def _labels(messages: list[dict[str, Any]], parts: list[Part], changed: set[int]) -> list[str]:
    """What went out verbatim: whole messages, or the protected segments of changed ones."""
    last = last_user_index(messages)
    out = []
    for part in parts:
        k, m = part.index, messages[part.index]
        if k in changed:
            kinds = {("question" if k == last else "instructions" if part.role == "system"
                      else "text") if s.kind == "text" else s.kind
                     for s in part.segments if not s.unit and s.text.strip()}
            out += [f"messages[{k}].content:{kind}" for kind in sorted(kinds)]
        elif isinstance(m.get("content"), str) or m.get("content") is not None:
            out.append(f"messages[{k}].content")
        if m.get("tool_calls") or m.get("function_call"):
            out.append(f"messages[{k}].tool_calls")
    return out


@dataclass(slots=True)
class _Plan:
    """The parsed request: its parts, its units (in order), the word budget for them, their
    lexical scores and the units to probe with MiniLM."""
    parts: list[Part]
    units: list[Segment]
    question: str
    budget: int
    lexical: np.ndarray
    probe: list[int]

    def unit(self, i: int) -> rank.Unit:
        s = self.units[i]
        return rank.Unit(s.text, s.header, s.title)


@dataclass(slots=True)
class _Cosines:
    """MiniLM's cosines to the question: each probed unit's probe, the shortlist's whole text,
    and the sentences of the first units where the probe was unsure."""
    ranked: list[int] = field(default_factory=list)
    probe: dict[int, float] = field(default_factory=dict)
    whole: dict[int, float] = field(default_factory=dict)
    sentence: dict[int, list[float]] = field(default_factory=dict)


class Compressor:
    """Built once at start-up. Options: ``ratio`` (default target, words before / after),
    ``min_words``, ``shortlist`` (units embedded whole; 0, or no embedder: lexical only, no
    MiniLM pass), ``probe_words`` and ``probe_units`` (every unit's probe embedding),
    ``lean`` (drop function words from kept text: the fine stage), ``weights``
    (rank.Weights), ``workers`` (threads)."""

    name = "switchyard"

    def __init__(self, embedder: MiniLM | None = None, **options: Any) -> None:
        self.embedder = embedder
        self.ratio = float(options.pop("ratio", DEFAULT_RATIO))
        self.min_words = int(options.pop("min_words", DEFAULT_MIN_WORDS))
        self.lean = bool(options.pop("lean", True))
        self.weights: rank.Weights = options.pop("weights", rank.Weights())
        sizes = {k: int(options.pop(k)) for k in ("shortlist", "probe_words", "probe_units")
                 if k in options}
        if sizes:  # from config: shortlist 0 = lexical only, no MiniLM pass (about 1 ms)
            self.weights = dataclasses.replace(self.weights, **sizes)
        workers = int(options.pop("workers", 2))
        if options:
            raise TypeError(f"unknown compressor options: {', '.join(sorted(options))}")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compress")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def compress(self, messages: list[dict[str, Any]], *, ratio: float | None = None,
                       token_budget: int | None = None,
                       min_words: int | None = None) -> Compressed:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        before = count_words(messages)
        floor = self.min_words if min_words is None else min_words
        plan = None
        if before >= floor:
            plan = await loop.run_in_executor(self._pool, self._plan, messages, before,
                                              ratio, token_budget)
        if plan is None:
            return self._unchanged(messages, before, t0)
        cos = _Cosines()
        if self.embedder is not None and plan.probe:
            cos = await self._cosines(self.embedder, plan)
        return await loop.run_in_executor(self._pool, self._apply, messages, plan, cos,
                                          before, t0)

    async def _cosines(self, embedder: MiniLM, plan: _Plan) -> _Cosines:
        """Batches through ``MiniLM.embed``: the question and every probe; then, unless the
        probes are clear enough, the shortlist's whole units, and the sentences of the
        ``sentences`` first units in that order (title + sentence), which choose what a cut
        unit keeps. These two passes read the model's output tokens too (their MaxSim to the
        question's, ``rank.maxsim``), so each runs as one batch in a worker thread
        (``MiniLM.encode_tokens``) rather than through ``embed``'s queue; where the tokens
        cannot be read (sentence-transformers, an embedder without them), they go through
        ``embed`` and cosines alone rank (the shortlist's units only where longer than their
        probe)."""
        w = self.weights
        units = {i: plan.unit(i) for i in plan.probe}
        probes = [units[i].probe_text(w.probe_words) for i in plan.probe]
        vecs = await asyncio.gather(*(embedder.embed(t) for t in (plan.question, *probes)))
        q = vecs[0]
        out = _Cosines(probe={i: float(v @ q) for i, v in zip(plan.probe, vecs[1:], strict=True)})
        out.ranked, short = rank.shortlist(plan.lexical, plan.probe,
                                           [out.probe[i] for i in plan.probe], w)
        out.whole = {i: out.probe[i] for i in short}
        late = None
        if short and w.maxsim > 0:
            late = await asyncio.get_running_loop().run_in_executor(
                self._pool, _token_pass, embedder, plan.question,
                [units[i].embed_text() for i in short])
        if late is not None:
            q_tokens, pooled, tokens = late
            out.whole = {i: rank.whole_score(float(v @ q), rank.maxsim(q_tokens, t), w)
                         for i, v, t in zip(short, pooled, tokens, strict=True)}
        else:
            longer = [i for i, p in zip(plan.probe, probes, strict=True)
                      if i in short and p != units[i].embed_text()]
            whole = await asyncio.gather(*(embedder.embed(units[i].embed_text()) for i in longer))
            out.whole.update({i: float(v @ q) for i, v in zip(longer, whole, strict=True)})
        if short and w.sentences > 0:
            order, _ = rank.fuse(plan.lexical, out.ranked, out.probe, out.whole, w)
            first = order[: w.sentences]
            texts = {i: units[i].sentence_texts() for i in first}
            flat = [t for i in first for t in texts[i]]
            scores: list[float] | None = None
            if late is not None and w.sentence_maxsim > 0:
                got = await asyncio.get_running_loop().run_in_executor(
                    self._pool, _encode_tokens, embedder, flat)
                if got is not None:
                    scores = [rank.sentence_score(float(v @ q), rank.maxsim(late[0], t), w)
                              for v, t in zip(got[0], got[1], strict=True)]
            if scores is None:
                vecs = await asyncio.gather(*(embedder.embed(t) for t in flat))
                scores = [float(v @ q) for v in vecs]
            at = 0
            for i in first:
                n = len(texts[i])
                out.sentence[i] = scores[at:at + n]
                at += n
        return out

    def _unchanged(self, messages: list[dict[str, Any]], before: int, t0: float) -> Compressed:
        parts = split_messages(messages)
        return Compressed(messages, before, before, [], _labels(messages, parts, set()),
                          (time.perf_counter() - t0) * 1e3, [])

    def _plan(self, messages: list[dict[str, Any]], before: int, ratio: float | None,
              token_budget: int | None) -> _Plan | None:
        parts = split_messages(messages)
        units = [s for p in parts for s in p.segments if s.unit]
        if not units:
            return None
        unit_words = sum(rank.words(s.header) + rank.words(s.text) for s in units)
        if token_budget is not None:
            target = int(token_budget * WORDS_PER_TOKEN)
        else:
            target = math.ceil(before / (ratio or self.ratio))
        budget = max(MIN_CONTEXT_WORDS, target - (before - unit_words))
        if unit_words <= budget:
            return None
        question = question_of(messages, parts)
        ranked = [rank.Unit(s.text, s.header, s.title) for s in units]
        lex = rank.lexical(question, ranked, self.weights)
        probe = rank.probed(lex, self.weights) if self.embedder is not None else []
        return _Plan(parts, units, question, budget, lex, probe)

    def _apply(self, messages: list[dict[str, Any]], plan: _Plan, cos: _Cosines,
               before: int, t0: float) -> Compressed:
        units = [plan.unit(i) for i in range(len(plan.units))]
        order, lead = rank.fuse(plan.lexical, cos.ranked, cos.probe, cos.whole, self.weights)
        bodies = [rank.sentences(u.text) for u in units]
        if self.lean:
            bodies = [[rank.lean(x) for x in b] for b in bodies]
        kept = dict(rank.select(plan.question, units, bodies, order, plan.budget, self.weights,
                                lead, cos.sentence))
        new_text = {id(s): _rewrite(s, bodies[i], kept[i]) if i in kept else ""
                    for i, s in enumerate(plan.units)}
        out = [dict(m) for m in messages]
        changed: set[int] = set()
        for part in plan.parts:
            if not any(s.unit for s in part.segments):
                continue
            text = "".join(new_text.get(id(s), s.text) for s in part.segments)
            if text != messages[part.index]["content"]:
                out[part.index]["content"] = text if text.strip() else "…"
                changed.add(part.index)
        after = count_words(out)
        stages = ["coarse", "lean"] if self.lean else ["coarse"]
        return Compressed(out, before, after, [f"messages[{k}].content" for k in sorted(changed)],
                          _labels(messages, plan.parts, changed),
                          (time.perf_counter() - t0) * 1e3, stages)


def _encode_tokens(embedder: Any, texts: list[str]) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """``texts``' pooled vectors and output tokens in one forward pass
    (``MiniLM.encode_tokens``), or None where ``embedder`` cannot give them."""
    encode = getattr(embedder, "encode_tokens", None)
    if encode is None:
        return None
    got: tuple[np.ndarray, list[np.ndarray]] | None = encode(texts)
    return got


def _token_pass(embedder: Any, question: str, texts: list[str],
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """The question's output tokens, and ``texts``' pooled vectors and output tokens (one
    forward pass each), or None where ``embedder`` cannot give them."""
    q = _encode_tokens(embedder, [question])
    units = _encode_tokens(embedder, texts) if q is not None else None
    if q is None or units is None:
        return None
    return q[1][0], units[0], units[1]


def _rewrite(seg: Segment, body: list[str], kept: list[int] | None) -> str:
    """A kept unit as sent: its header, then its sentences (``body``, lean or not), all of them
    (``kept`` None) or the kept ones, ending as the unit ended (its line break)."""
    text = "".join(body if kept is None else (body[j] for j in kept)).rstrip()
    tail = seg.text[len(seg.text.rstrip()):]
    return f"{seg.header}{text}{tail}"
