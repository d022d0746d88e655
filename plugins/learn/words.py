"""A ridge regression of each model's quality on the prompt's words: the pre-router's second
opinion beside the kNN (``RouterModel``'s ``words`` part).

What it reads is what the kNN's embedder reads (``route_text``: the prompt's last
characters), lower-cased and cut into words and single punctuation marks; its features are
those words and the pairs of adjacent ones (bigrams) that at least ``MIN_DF`` training prompts
hold, each weighted by ``1 + log(count)`` times its inverse document frequency, the row scaled
to unit length (TF-IDF). One ridge regression per model on the centred qualities, solved by
LSQR on the sparse rows (scipy), so a file holds one weight per feature and model.

Why: MMLU's routing signal is mostly the subject and the question's kind, which single words
and word pairs name directly, where a sentence vector may blur them. Measured on MMLU's train
half (six 5-fold splits, README "Cascades and the learned router: measured"): alone it routes
worse than the distilled kNN (APGR 0.652, CPT(50 %) 30.5 % at l2 20, against 0.669 / 27.0 %); beside it
(``share`` 0.2) 0.671 / 26.8 %, a gain within the splits' noise. ``--model auto`` cross-validates
it with the rest (``plugins.learn.evaluate.ROUTER_GRID``) and chooses it on MMLU's train half;
``switchyard train router --model knn+words`` asks for it directly.
Scoring a prompt costs its regex split and a dictionary look-up per word.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from plugins.learn.features import route_text

Arr = NDArray[np.float64]
MIN_DF = 2  # training prompts a feature must appear in
WORDS = "words"  # the key of a router model's params that adds the ridge: {"l2", "share"}
WORDS_DEFAULT = {"l2": 10.0, "share": 0.2}  # `--model knn+words`: the best of bench/router_cv.py
# --grid words on MMLU's train half (six splits; l2 20 / share 0.2-0.3 and l2 40 / 0.3 within 0.002)
_WORD = re.compile(r"\w+|[^\w\s]")
_SEP = "\n"  # between the vocabulary's entries in the file (no feature holds a newline)


def features(text: str) -> list[str]:
    """The words and adjacent word pairs of what the router reads of ``text``."""
    toks = _WORD.findall(route_text(text).lower())
    return toks + [f"{a} {b}" for a, b in itertools.pairwise(toks)]


class WordRidge:
    """``fit(texts, Y)``, ``predict(texts)``: each model's expected quality, linear in the
    text's TF-IDF row."""

    def __init__(self, l2: float = 20.0, min_df: int = MIN_DF) -> None:
        if l2 <= 0 or min_df < 1:
            raise ValueError(f"words: l2 must be > 0 and min_df >= 1, not {l2}, {min_df}")
        self.l2, self.min_df = float(l2), int(min_df)
        self.vocab: dict[str, int] = {}
        self.idf: Arr = np.zeros(0)
        self.W: NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        self.mean: Arr = np.zeros(0)

    def _row(self, text: str) -> tuple[list[int], list[float]]:
        """One text's TF-IDF row: (feature indices, values), unit length."""
        counts = Counter(j for f in features(text) if (j := self.vocab.get(f)) is not None)
        v = [(1.0 + math.log(c)) * float(self.idf[j]) for j, c in counts.items()]
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return list(counts), [x / norm for x in v]

    def rows(self, texts: Sequence[str]) -> Any:
        """The texts' TF-IDF rows (a scipy CSR matrix, one row per text)."""
        import scipy.sparse as sp

        indptr: list[int] = [0]
        cols: list[int] = []
        vals: list[float] = []
        for text in texts:
            c, v = self._row(text)
            cols.extend(c)
            vals.extend(v)
            indptr.append(len(cols))
        return sp.csr_matrix((np.asarray(vals, dtype=np.float64), np.asarray(cols, dtype=np.int64),
                              np.asarray(indptr, dtype=np.int64)), shape=(len(texts), len(self.vocab)))

    def fit(self, texts: Sequence[str], Y: NDArray[Any]) -> WordRidge:
        from scipy.sparse.linalg import lsqr

        Y = np.asarray(Y, dtype=np.float64).reshape(len(texts), -1)
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(features(text)))
        kept = sorted(f for f, c in df.items() if c >= self.min_df)
        self.vocab = {f: j for j, f in enumerate(kept)}
        self.idf = np.array([math.log((1 + len(texts)) / (1 + df[f])) + 1 for f in kept])
        A = self.rows(texts)
        self.mean = Y.mean(axis=0)
        self.W = np.zeros((len(kept), Y.shape[1]), dtype=np.float32)
        if kept:
            for j in range(Y.shape[1]):
                self.W[:, j] = lsqr(A, Y[:, j] - self.mean[j], damp=math.sqrt(self.l2),
                                    atol=1e-8, btol=1e-8, iter_lim=5000)[0]
        return self

    def predict(self, texts: Sequence[str]) -> Arr:
        if len(texts) > 4:  # a batch: one sparse product
            out: Arr = self.rows(texts) @ self.W.astype(np.float64) + self.mean
            return out
        rows = []  # a prompt (the policy): its few dozen features' weights, no scipy
        for text in texts:
            cols, vals = self._row(text)
            rows.append(np.asarray(vals) @ self.W[cols].astype(np.float64) + self.mean
                        if cols else self.mean.copy())
        return np.stack(rows) if rows else np.zeros((0, len(self.mean)))

    def state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        vocab = np.frombuffer(_SEP.join(self.vocab).encode(), dtype=np.uint8)
        return ({"vocab": vocab, "idf": self.idf, "W": self.W, "mean": self.mean},
                {"l2": self.l2, "min_df": self.min_df})

    @classmethod
    def restore(cls, arrays: dict[str, NDArray[Any]], params: dict[str, Any]) -> WordRidge:
        m = cls(float(params["l2"]), int(params.get("min_df", MIN_DF)))
        text = np.asarray(arrays["vocab"], dtype=np.uint8).tobytes().decode()
        names = text.split(_SEP) if text else []
        m.idf = np.asarray(arrays["idf"], dtype=np.float64)
        m.W = np.asarray(arrays["W"], dtype=np.float32)
        m.mean = np.asarray(arrays["mean"], dtype=np.float64)
        if not (len(names) == len(m.idf) == len(m.W)) or m.W.ndim != 2 or len(m.mean) != m.W.shape[1]:
            raise ValueError(f"words: {len(names)} features, {len(m.idf)} weights, {m.W.shape} "
                             f"rows: they must match")
        m.vocab = {f: j for j, f in enumerate(names)}
        return m
