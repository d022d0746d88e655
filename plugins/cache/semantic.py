"""The semantic tier's index and decision: which stored prompt, if any, answers a new one.

Entries live in groups, and a lookup sees one group only: the runtime computes the group
from everything that must match exactly (the team's namespace, model or route, system
prompt, earlier turns, sampling parameters, tools), so no similarity, however high, crosses
it. Inside a group the nearest few entries by cosine are found exactly with a NumPy
matrix product while the group is small, and with a usearch HNSW graph (then re-scored
exactly) once it holds ``ANN_MIN`` entries. The nearest entry is then judged by
``plugins.cache.decide`` (vetoes and a verifier, not one cosine threshold).

Memory per entry: the float32 vector (1,536 bytes at 384 dimensions), its parsed words
(a few hundred bytes), and in a group past ``ANN_MIN`` about 1 KB more for the graph's
half-precision copy and links."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from itertools import count
from typing import Any

import numpy as np

from plugins.cache.decide import (
    Parsed,
    Verifier,
    cross_applies,
    load_verifier,
    parse,
    score,
    vetoes,
    word_vectors,
)
from plugins.minilm import MiniLM

log = logging.getLogger("switchyard.cache.semantic")

ANN_MIN = 8192  # a group this large is searched through its HNSW graph
CANDIDATES = 4  # entries the graph returns, re-scored by exact cosine
# The embedding and the wording must agree: the candidate (within this cosine of the
# nearest; 1: any of the ``CANDIDATES``) whose wording the request shares most
# (``SemanticIndex.evidence``) must be the nearest, or worded the same; otherwise the
# request is ambiguous between two stored prompts worded differently, and a miss. Chosen on
# the QQP train half by bench/cache_retrieval.py, as right - 2 x wrong (README).
SELECT_MARGIN = 1.0
GRAM = 4  # characters per n-gram of the wording evidence


@dataclass(frozen=True, slots=True)
class Match:
    entry_id: str
    similarity: float  # cosine of the two embeddings
    score: float  # the decision's own score in [0, 1] (what the threshold applies to)
    hit: bool  # the shipped decision (threshold and near-miss checks)
    # another passing candidate is worded otherwise than the nearest and the request's
    # wording prefers it: a miss whatever a verifier says of the nearest
    ambiguous: bool = False
    why: str = ""  # a miss's reason, for the client (``x-switchyard-cache-reason``)


def miss_reason(stored: Parsed, query: Parsed, value: float, threshold: float,
                judge: str = "score") -> str:
    """Why the nearest entry does not serve: the vetoes that fired, or its score."""
    vetoed = vetoes(stored, query)
    if vetoed:
        return f"the nearest stored prompt differs: {', '.join(vetoed)}"
    return f"the nearest stored prompt's {judge} {value:.3f} is below {threshold:.3f}"


AMBIGUOUS = "ambiguous: another stored prompt as near is worded more like the request"


@dataclass(slots=True)
class _Entry:
    group: str
    key: int  # the entry's key in its group's graph
    parsed: Parsed  # with the prompt as written (the wording evidence reads it)


def grams(text: str, n: int = GRAM) -> Counter[str]:
    """The text's character n-grams, case kept, runs of whitespace read as one space."""
    s = " ".join(text.split())
    return Counter(s[i:i + n] for i in range(len(s) - n + 1))


def shared_wording(a: Counter[str], b: Counter[str]) -> float:
    """The Dice overlap of two n-gram multisets: 1 for the same wording, 0 for none shared."""
    total = a.total() + b.total()
    return 2 * (a & b).total() / total if total else 1.0


class _Group:
    """One group's vectors, rows packed (a removed row is filled by the last one)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vecs = np.zeros((16, dim), dtype=np.float32)
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self.keys: list[int] = []
        self.by_key: dict[int, str] = {}
        self.ann: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, entry_id: str, key: int, vec: np.ndarray) -> None:
        n = len(self.ids)
        if n == len(self.vecs):
            grown = np.zeros((2 * n, self.dim), dtype=np.float32)
            grown[:n] = self.vecs
            self.vecs = grown
        self.vecs[n] = vec
        self.ids.append(entry_id)
        self.keys.append(key)
        self.rows[entry_id] = n
        self.by_key[key] = entry_id
        if self.ann is not None:
            self.ann.add(key, vec)
        elif n + 1 >= ANN_MIN:
            self._build_ann()

    def remove(self, entry_id: str) -> None:
        row = self.rows.pop(entry_id)
        key = self.keys[row]
        del self.by_key[key]
        if self.ann is not None:
            self.ann.remove(key)
        last = len(self.ids) - 1
        if row != last:
            self.vecs[row] = self.vecs[last]
            self.ids[row] = self.ids[last]
            self.keys[row] = self.keys[last]
            self.rows[self.ids[row]] = row
        self.ids.pop()
        self.keys.pop()

    def _build_ann(self) -> None:
        from usearch.index import Index

        n = len(self.ids)
        self.ann = Index(ndim=self.dim, metric="ip", dtype="f16", connectivity=16,
                         expansion_add=64, expansion_search=64)
        self.ann.add(np.array(self.keys, dtype=np.uint64), self.vecs[:n])
        log.info("group of %d entries: searched through an HNSW graph from now on", n)

    def nearest(self, vec: np.ndarray, k: int) -> list[tuple[str, float, int]]:
        """The ``k`` nearest entries, their exact cosines and rows, best first."""
        n = len(self.ids)
        if self.ann is not None:
            found = self.ann.search(vec, k)
            rows = [self.rows[self.by_key[int(key)]] for key in found.keys
                    if int(key) in self.by_key]
        else:
            sims = self.vecs[:n] @ vec
            top = np.argpartition(-sims, k - 1)[:k] if n > k else np.arange(n)
            rows = [int(r) for r in top]
        scored = [(self.ids[r], float(self.vecs[r] @ vec), r) for r in rows]
        return sorted(scored, key=lambda t: -t[1])


class SemanticIndex:
    """Stored prompts by group, and the decision whether one answers a new prompt."""

    def __init__(self, embedder: MiniLM, *, threshold: float | None = None,
                 max_entries: int = 100_000, verifier: Verifier | None = None,
                 candidates: int = CANDIDATES, select_margin: float = SELECT_MARGIN,
                 agreement: bool = True, ambiguity_margin: float = 0.0) -> None:
        """``candidates``: the nearest entries judged per lookup; ``select_margin``: how far
        in cosine below the nearest a passing candidate still competes on wording (0: the
        nearest alone decides); ``agreement``: a miss when the candidate the wording picks
        is worded otherwise than the nearest (False: that candidate is judged instead);
        ``ambiguity_margin``: a miss when another passing candidate this near the nearest
        is worded otherwise than the one chosen (0: off). The last two were measured on
        the QQP train half (README); what ships: agreement, no ambiguity margin."""
        self.embedder = embedder
        self.verifier = verifier or load_verifier()
        self.threshold = self.verifier.threshold if threshold is None else threshold
        self.max_entries = max_entries
        self.candidates = candidates
        self.select_margin = select_margin
        self.agreement = agreement
        self.ambiguity_margin = ambiguity_margin
        self._entries: dict[str, _Entry] = {}  # insertion order: the oldest is evicted first
        self._groups: dict[str, _Group] = {}
        self._keys = count(1)
        self._words_ready = not self.verifier.reads_alignment

    def __len__(self) -> int:
        return len(self._entries)

    async def vector(self, text: str) -> np.ndarray:
        """The text's embedding, computed off the event loop, batched with other callers."""
        return await self.embedder.embed(text)

    def add(self, group: str, entry_id: str, text: str, vec: np.ndarray) -> None:
        """Store (or replace) ``entry_id`` in ``group``; past ``max_entries`` the oldest
        entry is dropped."""
        if entry_id in self._entries:
            self.remove(entry_id)
        while len(self._entries) >= self.max_entries:
            self.remove(next(iter(self._entries)))
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.embedder.dim:
            raise ValueError(f"a vector of {self.embedder.dim} floats is needed")
        key = next(self._keys)
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = _Group(self.embedder.dim)
        g.add(entry_id, key, vec)
        self._entries[entry_id] = _Entry(group, key, parse(text))

    def remove(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        g = self._groups[entry.group]
        g.remove(entry_id)
        if not len(g):
            del self._groups[entry.group]

    async def lookup(self, group: str, text: str, vec: np.ndarray | None = None,
                     threshold: float | None = None) -> Match | None:
        """The best entry of ``group`` for ``text`` (None when the group is empty), and
        whether it is a hit at ``threshold`` (default: the shipped one)."""
        g = self._groups.get(group)
        if g is None or not len(g):
            return None
        if vec is None:
            vec = await self.vector(text)
        if not self._words_ready:  # the static word table, loaded (or computed) once
            await asyncio.to_thread(word_vectors)
            self._words_ready = True
        match = self.decide(g, text, np.asarray(vec, dtype=np.float32).reshape(-1), threshold)
        ce = self.verifier.cross
        if ce is None or match.ambiguous:
            return match
        # the cross-encoder judges the chosen entry (a forward pass: in a worker thread, on
        # the two texts, so entries added or removed meanwhile change nothing)
        stored, query = self._entries[match.entry_id].parsed, parse(text)
        if not cross_applies(stored, query, match.similarity, self.verifier):
            return match
        p = await asyncio.to_thread(ce.probability, stored.text, query.text)
        if p is None:  # it cannot run here: the vector verifier's decision stands
            return match
        t = self.threshold if threshold is None else threshold
        why = "" if p >= t else miss_reason(stored, query, p, t, "cross-encoder score")
        return Match(match.entry_id, match.similarity, p, p >= t, why=why)

    def evidence(self, stored: str, request: Counter[str]) -> float:
        """How much of the request's wording the stored prompt shares (``request``: the
        request's ``grams``): a paraphrase keeps names, identifiers, case and phrasing of
        the sentence it was written from, which a sentence embedding smooths away."""
        return shared_wording(grams(stored), request)

    def decide(self, g: _Group, text: str, vec: np.ndarray, threshold: float | None) -> Match:
        """Judge the nearest entry by cosine: a miss when it fails (a vetoed nearest entry
        is a miss, even where a farther one would pass: a miss is safe). When it passes,
        the candidates within ``select_margin`` of it compete on ``evidence``: a request is
        most likely about the stored prompt whose words it kept. The embedding and the
        wording must agree: where the candidate the request shares most wording with is
        worded otherwise than the nearest, passing or not, the request is ambiguous
        between two stored prompts and it is a miss (``Match.ambiguous``); where it is
        worded the same (a case variant: MiniLM reads lower case) and passes, it serves.
        ``agreement=False``: the candidate the wording picks is judged instead, whatever
        the nearest (measured, not shipped). Letting the verifier's score pick among the
        candidates served another near-identical prompt's entry more often (README)."""
        query = parse(text)
        found = g.nearest(vec, self.candidates)
        entry_id, sim, row = found[0]
        t = self.threshold if threshold is None else threshold
        nearest = self._entries[entry_id].parsed
        s = score(nearest, query, sim, self.verifier, g.vecs[row], vec)
        passes = s >= t
        if not passes and self.agreement and not (  # unless the cross-encoder judges it
                self.verifier.cross is not None and
                cross_applies(nearest, query, sim, self.verifier)):
            return Match(entry_id, sim, s, False, why=miss_reason(nearest, query, s, t))
        reach = max(self.select_margin, self.ambiguity_margin)
        near = [c for c in found if c[1] >= sim - reach]
        why = "" if passes else miss_reason(nearest, query, s, t)
        if len(near) == 1:
            return Match(entry_id, sim, s, passes, why=why)
        chosen = (entry_id, sim, s)
        if self.select_margin > 0:
            request = grams(text)
            other, osim, orow = max(
                (c for c in near if c[1] >= sim - self.select_margin),
                key=lambda c: (self.evidence(self._entries[c[0]].parsed.text, request), c[1]))
            if other != entry_id:
                parsed = self._entries[other].parsed
                if self.agreement and parsed.norms != nearest.norms:
                    # the request's wording prefers a prompt worded otherwise, passing or not
                    return Match(entry_id, sim, s, False, ambiguous=True, why=AMBIGUOUS)
                os = score(parsed, query, osim, self.verifier, g.vecs[orow], vec)
                if os >= t or not self.agreement:
                    chosen = (other, osim, os)
        rivals = [chosen]
        if self.ambiguity_margin > 0:
            for other, osim, orow in near:
                if other != chosen[0] and osim >= sim - self.ambiguity_margin:
                    os = score(self._entries[other].parsed, query, osim, self.verifier,
                               g.vecs[orow], vec)
                    if os >= t:
                        rivals.append((other, osim, os))
        norms = self._entries[chosen[0]].parsed.norms
        if any(self._entries[c[0]].parsed.norms != norms for c in rivals):
            return Match(chosen[0], chosen[1], chosen[2], False, ambiguous=True, why=AMBIGUOUS)
        if chosen[0] != entry_id and not self.agreement:  # the wording's pick is judged
            ok = chosen[2] >= t
            return Match(chosen[0], chosen[1], chosen[2], ok, why="" if ok else miss_reason(
                self._entries[chosen[0]].parsed, query, chosen[2], t))
        return Match(chosen[0], chosen[1], chosen[2], passes, why=why)
