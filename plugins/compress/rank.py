"""The coarse stage's ranker: which units (and which of their sentences) to keep for a question.

Two passes, because one MiniLM pass over every unit is too slow here: all-MiniLM-L6-v2 costs
about 1.1 s of CPU for 20 passages of 100 words on this machine, five times the time goal.

1. ``shortlist``: every unit scored by BM25 against the question (terms weighted by their
   rarity across this prompt's units, title included) plus the share of question terms in its
   title; the best four go on, more while their words stay under a cap (the cosine's cost).
2. ``fuse``: the shortlisted units scored again with the MiniLM cosine of unit and question
   added (a few passages: the cost the time goal allows).
3. ``select``: units kept whole in that order while the word budget holds; the first one that
   does not fit is cut to its best sentences (BM25 against the question, earlier sentences
   first on ties) within what is left. Kept text goes back in its original order.

The weights were fitted on the train half of the NQ items (bench/nq_compress_items.py); see
docs/compression.md for what each pass is worth."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
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
    shortlist: int = 4         # units that get a MiniLM cosine, at least... (0: none)
    shortlist_words: int = 360  # ...and more while their words stay under this (its CPU cost)
    bm25: float = 0.25         # a unit's BM25 (scaled to the prompt's best), title included
    title: float = 0.25        # share of question terms in the unit's title
    cosine: float = 1.0        # MiniLM cosine of unit (title + text) and question
    kind: float = 0.1          # a sentence holds what the question asks for (year, number, name)
    position: float = 0.05     # earlier sentences of a unit first


@dataclass(slots=True)
class Unit:
    text: str
    header: str = ""
    title: str = ""

    def embed_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


def words(text: str) -> int:
    return len(text.split())


def lexical(question: str, units: Sequence[Unit], weights: Weights) -> np.ndarray:
    """Each unit's lexical score: scaled BM25 (title included) plus title overlap."""
    q = terms(question)
    qset = set(q)
    out = weights.bm25 * _scaled(bm25(q, [terms(f"{u.title} {u.text}") for u in units]))
    if qset:
        out += weights.title * np.array([len(qset & set(terms(u.title))) / len(qset)
                                         for u in units])
    return out


def shortlist(lex: np.ndarray, units: Sequence[Unit], weights: Weights) -> list[int]:
    """The units that get a MiniLM cosine, best lexical first: ``weights.shortlist`` of them, more
    while they hold fewer than ``weights.shortlist_words`` words (a short context is embedded
    whole, so a passage that shares no word with the question can still be found)."""
    out: list[int] = []
    used = 0
    for i in np.argsort(-lex, kind="stable"):
        cost = words(units[int(i)].text)
        if len(out) >= weights.shortlist and used + cost > weights.shortlist_words:
            break
        out.append(int(i))
        used += cost
    return out


def fuse(lex: np.ndarray, short: Sequence[int], cosine: Sequence[float] | None,
         weights: Weights) -> list[int]:
    """All units, best first: the shortlist by lexical + cosine, then the rest by lexical."""
    fused = {i: float(lex[i]) + (weights.cosine * float(cosine[n]) if cosine is not None else 0.0)
             for n, i in enumerate(short)}
    first = sorted(short, key=lambda i: -fused[i])
    rest = [int(i) for i in np.argsort(-lex, kind="stable") if int(i) not in fused]
    return first + rest


def best_sentences(question: str, sents: Sequence[str], budget: int,
                   weights: Weights) -> list[int]:
    """The indices of ``sents`` to keep within ``budget`` words, best first by BM25 against the
    question (plus the kind of token it asks for, and position); at least one."""
    q = terms(question)
    kind = asks_for(question)
    s = _scaled(bm25(q, [terms(x) for x in sents]))
    score = [float(s[j]) + weights.kind * fits(kind, x) + weights.position / (1 + j)
             for j, x in enumerate(sents)]
    kept: list[int] = []
    used = 0
    for j in sorted(range(len(sents)), key=lambda j: -score[j]):
        w = words(sents[j])
        if used + w > budget and kept:
            continue
        kept.append(j)
        used += w
    return sorted(kept)


def select(question: str, units: Sequence[Unit], order: Sequence[int], budget: int,
           weights: Weights) -> list[tuple[int, list[int] | None]]:
    """What to keep, as (unit, None) for a whole unit or (unit, sentence indices): whole units in
    ``order`` while ``budget`` holds, then the next one cut to its best sentences."""
    out: list[tuple[int, list[int] | None]] = []
    used = 0
    for i in order:
        u = units[i]
        cost = words(u.header) + words(u.text)
        if used + cost <= budget:
            out.append((i, None))
            used += cost
            continue
        left = budget - used - words(u.header)
        if left >= 8 or not out:
            out.append((i, best_sentences(question, sentences(u.text), max(left, 1), weights)))
        break
    return out
