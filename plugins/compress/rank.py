"""The coarse stage's ranker: which sentences of which units to keep for a question.

Every unit is cut into sentences; each sentence is scored by BM25 against the question (the
question's terms weighted by their rarity across this prompt's sentences), plus the BM25 score
of its whole unit (title included), plus how many question terms its unit's title holds, plus
the MiniLM cosine of its unit's title to the question, plus a small bonus when it holds the kind
of token the question asks for (a year for "when", a number for "how many", a name for "who").
The best sentences are kept greedily within the word budget, a unit's header counted once,
and written back in their original order.

Why not one MiniLM pass over the passages: on 2 shared cores all-MiniLM-L6-v2 costs about
1.1 s of CPU for 20 passages of 100 words (bench figures in docs/compression.md), five times
the time goal, and keeping the top passage by cosine keeps the answer in 93 % of NQ items.
Titles are short enough to embed (a few ms)."""

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


def _fits(kind: str | None, text: str) -> bool:
    if kind == "year":
        return bool(_YEAR.search(text))
    if kind == "number":
        return bool(_NUMBER.search(text))
    if kind == "name":
        return bool(_NAME.search(text))
    return False


@dataclass(frozen=True, slots=True)
class Weights:
    sentence: float = 1.0      # the sentence's own BM25 (scaled to the prompt's best)
    unit: float = 0.6          # its unit's BM25, title included
    title: float = 0.4         # share of question terms in its unit's title
    title_cosine: float = 0.0  # MiniLM cosine of its unit's title to the question
    kind: float = 0.15         # holds what the question asks for (year, number, name)
    position: float = 0.02     # earlier sentences of a unit (the lead of a passage)


@dataclass(slots=True)
class Unit:
    text: str
    header: str = ""
    title: str = ""


def score(question: str, units: Sequence[Unit], weights: Weights,
          title_cosine: np.ndarray | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
    """Each unit's sentences and each sentence's score."""
    q = terms(question)
    split = [sentences(u.text) for u in units]
    flat = [terms(s) for ss in split for s in ss]
    sent = _scaled(bm25(q, flat))
    unit = _scaled(bm25(q, [terms(f"{u.title} {u.text}") for u in units]))
    qset = set(q)
    kind = asks_for(question)
    out, pos = [], 0
    for i, (u, ss) in enumerate(zip(units, split, strict=True)):
        tt = set(terms(u.title))
        title = len(qset & tt) / len(qset) if qset else 0.0
        base = weights.unit * unit[i] + weights.title * title
        if title_cosine is not None:
            base += weights.title_cosine * float(title_cosine[i])
        s = np.array([weights.sentence * sent[pos + j]
                      + weights.kind * _fits(kind, text)
                      + weights.position / (1 + j) for j, text in enumerate(ss)]) + base
        pos += len(ss)
        out.append(s)
    return split, out


def words(text: str) -> int:
    return len(text.split())


def select(split: Sequence[Sequence[str]], scores: Sequence[np.ndarray], headers: Sequence[str],
           budget: int) -> list[list[int]]:
    """The kept sentence indices of each unit: the best-scoring sentences while the budget
    holds (a unit's header counted when its first sentence is kept), at least the best one."""
    ranked = sorted(((float(s[j]), i, j) for i, s in enumerate(scores) for j in range(len(s))),
                    key=lambda x: -x[0])
    kept: list[list[int]] = [[] for _ in split]
    used = 0
    for _, i, j in ranked:
        cost = words(split[i][j]) + (0 if kept[i] else words(headers[i]))
        if used + cost > budget and used > 0:
            continue
        kept[i].append(j)
        used += cost
        if used >= budget:
            break
    return [sorted(k) for k in kept]
