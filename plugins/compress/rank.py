"""The coarse stage's ranker: which units (and which of their sentences) to keep for a question,
and the fine stage's function words.

MiniLM over every whole unit is too slow here (all-MiniLM-L6-v2 in ONNX Runtime: about
580 ms of CPU for 20 passages of 100 words on this machine, three times the time goal), and
over a lexical shortlist it never sees the passages BM25 misses. So three passes, the cost
going to the units that may be kept:

1. ``lexical``: every unit scored by BM25 against the question (terms weighted by their
   rarity across this prompt's units, title included) plus the share of question terms in
   its title (about 1 ms).
2. ``probe``: every unit (the ``probe_units`` best lexical ones, in a long context) embedded
   by its title and first ``probe_words`` words, one batch (about 30 tokens each); its
   cosine to the question plus its lexical score ranks them.
3. ``shortlist``: where the probe rank is unsure (its first leads its second by less than
   ``confident``), the ``shortlist`` best of those embedded whole; their cosine, fused with
   their MaxSim to the question (``maxsim``: every question token's best cosine among the
   unit's output tokens, read from the same forward pass), puts them first, in that order.
   Where it is sure (about half the NQ items), no second pass.
4. ``sentences``: where the probe was unsure, every sentence of the first ``sentences`` units
   in that order embedded after its unit's title (``Unit.sentence_texts``), a third batch;
   its output tokens' MaxSim to the question's (``sentence_maxsim``) scores each sentence.

``select`` then keeps units whole in that order while the word budget holds (the first one at
most ``hedge_share`` of it when it leads the second by less than ``hedge_lead``) and cuts the
first one that does not fit to its best sentences (their MaxSim to the question where pass 4
ran, their cosine where it ran without tokens, else BM25 against it; a bonus for what the question asks for, earlier sentences first on
ties) within what is left. Kept text goes back
in its original order. ``lean`` (the fine stage) drops function words from each sentence
first: articles, forms of *be* and *have*, pronouns such as *it*, *this*, *that*, *which*,
the words a reader restores without noticing and that hardly ever are an answer; the budget
counts the words left.

The weights were fitted on the train half of the NQ items (bench/nq_compress_items.py,
bench/compress_fit.py); docs/compression.md says what each pass is worth."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_SENT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
_NUMBER = re.compile(r"\b\d[\d,.]*\b|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|"
                     r"eleven|twelve|hundred|thousand|million|billion)\b", re.IGNORECASE)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+")

_STOP = """a about above after again against all am an and any are as at be because
been before being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself no nor not now of off on once only or other our ours out
over own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours s t don"""
STOPWORDS = frozenset(_STOP.split())


def terms(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.replace("’", "'").split("'")[0]
        if w in STOPWORDS or not w:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences that join back to it exactly (whitespace stays with the
    sentence before it)."""
    out, pos = [], 0
    for m in _SENT.finditer(text):
        out.append(text[pos:m.end()])
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out or [text]


def bm25(query: Sequence[str], docs: Sequence[Sequence[str]], k1: float = 1.2,
         b: float = 0.75) -> np.ndarray:
    n = len(docs)
    if not n or not query:
        return np.zeros(n, dtype=np.float64)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))
    avg = max(1.0, sum(len(d) for d in docs) / n)
    qset = set(query)
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in qset}
    out = np.zeros(n, dtype=np.float64)
    for i, d in enumerate(docs):
        tf = Counter(t for t in d if t in qset)
        norm = k1 * (1 - b + b * len(d) / avg)
        out[i] = sum(idf[t] * c * (k1 + 1) / (c + norm) for t, c in tf.items())
    return out


def _scaled(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else x


def asks_for(question: str) -> str | None:
    q = question.lower()
    if re.search(r"\bwhen\b|\bwhat year\b|\bwhich year\b|\bwhat date\b", q):
        return "year"
    if re.search(r"\bhow (?:many|much|long|old|far|tall|big|high|fast)\b|\bwhat percentage\b", q):
        return "number"
    if re.search(r"\bwho\b|\bwhom\b", q):
        return "name"
    return None


def fits(kind: str | None, text: str) -> bool:
    if kind == "year":
        return bool(_YEAR.search(text))
    if kind == "number":
        return bool(_NUMBER.search(text))
    if kind == "name":
        return bool(_NAME.search(text))
    return False


@dataclass(frozen=True, slots=True)
class Weights:
    probe_words: int = 20      # a unit's words (after its title) in its probe embedding
    probe_units: int = 32      # units probed at most, best lexical first (the rest: lexical order)
    shortlist: int = 8         # best probed units embedded whole (0: no MiniLM pass at all)...
    confident: float = 0.35    # ...unless the best probe rank leads the next by this much
    bm25: float = 0.25         # a unit's BM25 (scaled to the prompt's best), title included
    title: float = 0.25        # share of question terms in the unit's title
    probe_lexical: float = 1.0  # probe rank: probe cosine + this x lexical score
    cosine: float = 1.0        # shortlist rank: whole unit's cosine (title + text)...
    maxsim: float = 0.5        # ...(its cosine and this x its MaxSim to the question, over
                               # 1 + this, where the model's token vectors can be read)...
    probe: float = 0.0         # ...+ this x the probe's cosine...
    lexical: float = 0.0       # ...+ this x lexical score
    hedge_lead: float = 0.08   # the first unit leads the second by less than this (fused score):
    hedge_share: float = 0.8   # ...it keeps at most this share of the budget
    sentences: int = 3         # where the probe is unsure, the first units whose sentences are
                               # embedded (title + sentence) to choose the sentences of a cut
    sentence_maxsim: float = 1.0  # a sentence's score: this share its MaxSim to the question,
                                  # the rest its cosine (1: MaxSim alone), tokens permitting
    kind: float = 0.1          # a sentence holds what the question asks for (year, number, name)
    position: float = 0.05     # earlier sentences of a unit first


@dataclass(slots=True)
class Unit:
    text: str
    header: str = ""
    title: str = ""

    def embed_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text

    def sentence_texts(self) -> list[str]:
        """Each of ``sentences(text)`` as embedded: after the title, which names its subject."""
        return [f"{self.title}\n{x.strip()}" if self.title else x.strip()
                for x in sentences(self.text)]

    def probe_text(self, n_words: int) -> str:
        """The title and the first ``n_words`` words: the whole ``embed_text`` when that is all."""
        head = self.text.split(maxsplit=n_words)
        if len(head) <= n_words:
            return self.embed_text()
        body = " ".join(head[:n_words])
        return f"{self.title}\n{body}" if self.title else body


def words(text: str) -> int:
    return len(text.split())


_FUNCTION = """a an the is was were are be been being has have had it its this these those that
which whose whom there then also"""
FUNCTION_WORDS = frozenset(_FUNCTION.split())
_FW = "|".join(sorted(FUNCTION_WORDS, key=len, reverse=True))
# a function word in lower case between whitespace (or at the start) and a space or tab; one
# capitalised as a sentence's first word before a word in lower case. Never one before a line
# break: lines stay lines.
_LEAN = re.compile(rf"(?<!\S)(?:{_FW})[ \t]+(?=\S)")
_LEAN_FIRST = re.compile(rf"^(\s*)(?:{'|'.join(w.capitalize() for w in _FW.split('|'))})"
                         r"[ \t]+(?=\S)(?![A-Z])")


def lean(sentence: str) -> str:
    """``sentence`` without its function words (``FUNCTION_WORDS``); a capitalised one only as
    its first word and before a word in lower case, so names stay whole (*Vitamin A*, *The
    Who*, *The Halvorsen Bridge*)."""
    return _LEAN.sub("", _LEAN_FIRST.sub(r"\1", sentence))


def lexical(question: str, units: Sequence[Unit], weights: Weights) -> np.ndarray:
    """Each unit's lexical score: scaled BM25 (title included) plus title overlap."""
    q = terms(question)
    qset = set(q)
    out = weights.bm25 * _scaled(bm25(q, [terms(f"{u.title} {u.text}") for u in units]))
    if qset:
        out += weights.title * np.array([len(qset & set(terms(u.title))) / len(qset)
                                         for u in units])
    return out


def maxsim(question: np.ndarray, unit: np.ndarray) -> float:
    """Late interaction (ColBERT's MaxSim): each question token's best cosine among the
    unit's output tokens, averaged over the question's tokens. Both are (tokens, dim) arrays
    of unit rows from one MiniLM forward pass each (``MiniLM.encode_tokens``)."""
    if not len(question) or not len(unit):
        return 0.0
    return float((question @ unit.T).max(axis=1).mean())


def whole_score(cosine: float, late: float | None, weights: Weights) -> float:
    """A shortlisted unit's score from its whole text: its cosine to the question, fused
    with its MaxSim where that was read (``weights.maxsim``), on the cosine's scale."""
    if late is None or weights.maxsim <= 0:
        return cosine
    return (cosine + weights.maxsim * late) / (1 + weights.maxsim)


def sentence_score(cosine: float, late: float | None, weights: Weights) -> float:
    """A sentence's score where its tokens were read: ``weights.sentence_maxsim`` of its
    MaxSim, the rest its cosine."""
    if late is None:
        return cosine
    share = min(1.0, max(0.0, weights.sentence_maxsim))
    return (1 - share) * cosine + share * late


def probed(lex: np.ndarray, weights: Weights) -> list[int]:
    """The units given a probe embedding: the ``probe_units`` best lexical ones (all, usually)."""
    if weights.shortlist <= 0:
        return []
    return [int(i) for i in np.argsort(-lex, kind="stable")[: weights.probe_units]]


def shortlist(lex: np.ndarray, probe: Sequence[int], probe_cos: Sequence[float],
              weights: Weights) -> tuple[list[int], list[int]]:
    """The probed units by their probe rank, best first, and the shortlist: the first
    ``weights.shortlist`` of them, to be embedded whole; none when the first leads the second
    by ``weights.confident`` or more (the probe is sure enough: half the NQ items)."""
    rank1 = {i: float(c) + weights.probe_lexical * float(lex[i])
             for i, c in zip(probe, probe_cos, strict=True)}
    ranked = sorted(probe, key=lambda i: -rank1[i])
    if len(ranked) > 1 and rank1[ranked[0]] - rank1[ranked[1]] >= weights.confident:
        return ranked, []
    return ranked, ranked[: weights.shortlist]


def fuse(lex: np.ndarray, ranked: Sequence[int], probe_cos: Mapping[int, float],
         whole_cos: Mapping[int, float], weights: Weights) -> tuple[list[int], float]:
    """All units, best first: those with a whole-unit cosine by their fused score, then the rest
    of ``ranked`` (the probed units by probe rank), then the others by lexical score; and the
    first's lead over the second (``inf`` without two fused scores to compare)."""
    fused = {i: weights.cosine * c + weights.probe * probe_cos[i] + weights.lexical * float(lex[i])
             for i, c in whole_cos.items()}
    first = sorted(fused, key=lambda i: -fused[i])
    lead = fused[first[0]] - fused[first[1]] if len(first) > 1 else math.inf
    seen = set(first)
    rest = [i for i in ranked if i not in seen]
    seen.update(rest)
    return first + rest + [int(i) for i in np.argsort(-lex, kind="stable") if int(i) not in seen], lead


def best_sentences(question: str, sents: Sequence[str], budget: int, weights: Weights,
                   at_least_one: bool = True, cosines: Sequence[float] | None = None) -> list[int]:
    """The indices of ``sents`` to keep within ``budget`` words, best first by their MiniLM
    cosine to the question where ``cosines`` are given, else by BM25 against it (plus the kind
    of token it asks for, and position); at least one if ``at_least_one`` (the budget may then
    be overrun by it)."""
    kind = asks_for(question)
    s = (np.asarray(cosines, dtype=np.float64) if cosines is not None
         else _scaled(bm25(terms(question), [terms(x) for x in sents])))
    score = [float(s[j]) + weights.kind * fits(kind, x) + weights.position / (1 + j)
             for j, x in enumerate(sents)]
    kept: list[int] = []
    used = 0
    for j in sorted(range(len(sents)), key=lambda j: -score[j]):
        w = words(sents[j])
        if used + w > budget and (kept or not at_least_one):
            continue
        kept.append(j)
        used += w
    return sorted(kept)


def select(question: str, units: Sequence[Unit], bodies: Sequence[Sequence[str]],
           order: Sequence[int], budget: int, weights: Weights, lead: float = math.inf,
           sentence_cos: Mapping[int, Sequence[float]] | None = None,
           ) -> list[tuple[int, list[int] | None]]:
    """What to keep, as (unit, None) for a whole unit or (unit, sentence indices): whole units in
    ``order`` while ``budget`` holds, then the next one cut to its best sentences. ``bodies``
    are the units' sentences as they would be sent (``lean`` or not): the budget counts them.
    When the first unit leads the second by less than ``weights.hedge_lead`` (``lead``), it
    keeps at most ``weights.hedge_share`` of the budget (its best sentences), so that the
    second's best sentences are sent too: a hedge where the ranker is unsure. A unit cut to its
    best sentences is cut by their cosines to the question where ``sentence_cos`` has them."""
    out: list[tuple[int, list[int] | None]] = []
    used = 0
    cap = budget
    if lead < weights.hedge_lead and len(order) > 1:
        cap = int(budget * weights.hedge_share)
    for i in order:
        head = words(units[i].header)
        cost = head + sum(words(x) for x in bodies[i])
        if used + cost <= cap:
            out.append((i, None))
            used += cost
        else:
            left = cap - used - head
            kept = best_sentences(question, bodies[i], max(left, 1), weights,
                                  at_least_one=not out,
                                  cosines=(sentence_cos or {}).get(i)) if left >= 8 or not out else []
            if kept:
                out.append((i, kept))
                used += head + sum(words(bodies[i][j]) for j in kept)
            if cap == budget and budget - used < 8 + head:
                break
        cap = budget
    return out
