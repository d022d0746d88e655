"""Quality predictors over feature vectors, in numpy: ``fit(X, Y)`` with ``Y[i, j]`` the
quality of model ``j`` on example ``i`` (in [0, 1]); ``predict(X)`` the expected quality.

- ``logreg``: one L2-regularised logistic regression per model (Newton's method; features
  standardised), soft labels allowed.
- ``knn``: the mean quality of the ``k`` most similar training examples (cosine, after
  centring the vectors on the training mean, which removes the direction every MiniLM
  embedding shares), the kNN router RouterBench and "a well-tuned kNN matches most
  learned routers" describe; with ``ks`` (several neighbour counts), the mean of their
  ``k``-nearest means: the nearest neighbours weigh more, the farthest less (5-fold CV on
  MMLU's train half: CPT(50 %) 0.273 for ``ks`` 100/150/200 against 0.284 for ``k`` 100).
- ``mf``: matrix factorisation as RouteLLM's ``mf`` router: a shared projection of the
  features to ``rank`` dimensions and a vector per model, ``sigmoid(v_m . (P x) + b_m)``,
  fitted with Adam on the cross-entropy.

Each model's state is a dict of arrays plus a dict of JSON values (``state``/``restore``),
which ``plugins.learn.files`` writes into one versioned ``.npz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Arr = NDArray[np.float64]


def sigmoid(z: Arr) -> Arr:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


class Predictor(Protocol):
    kind: str

    def fit(self, X: NDArray[Any], Y: NDArray[Any]) -> Predictor: ...
    def predict(self, X: NDArray[Any]) -> Arr: ...
    def state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]: ...


class LogReg:
    kind = "logreg"

    def __init__(self, l2: float = 1.0, iters: int = 25) -> None:
        self.l2, self.iters = l2, iters
        self.mean: Arr = np.zeros(0)
        self.scale: Arr = np.ones(0)
        self.W: Arr = np.zeros((0, 0))  # (d + 1, m): bias last

    def _design(self, X: NDArray[Any]) -> Arr:
        Z = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        return np.hstack([Z, np.ones((len(Z), 1))])

    def fit(self, X: NDArray[Any], Y: NDArray[Any]) -> LogReg:
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        self.mean = X.mean(axis=0)
        self.scale = np.where(X.std(axis=0) > 1e-9, X.std(axis=0), 1.0)
        Z = self._design(X)
        d = Z.shape[1]
        reg = np.full(d, self.l2)
        reg[-1] = 0.0
        self.W = np.zeros((d, Y.shape[1]))
        for j in range(Y.shape[1]):
            w = np.zeros(d)
            for _ in range(self.iters):
                p = sigmoid(Z @ w)
                g = Z.T @ (p - Y[:, j]) + reg * w
                H = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg + 1e-9)
                step = np.linalg.solve(H, g)
                w -= step
                if np.abs(step).max() < 1e-6:
                    break
            self.W[:, j] = w
        return self

    def predict(self, X: NDArray[Any]) -> Arr:
        return sigmoid(self._design(X) @ self.W)

    def state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        return {"mean": self.mean, "scale": self.scale, "W": self.W}, {"l2": self.l2}

    @classmethod
    def restore(cls, arrays: dict[str, NDArray[Any]], params: dict[str, Any]) -> LogReg:
        m = cls(float(params["l2"]))
        m.mean, m.scale, m.W = arrays["mean"], arrays["scale"], arrays["W"]
        return m


class KNN:
    kind = "knn"

    def __init__(self, k: int = 40, ks: Sequence[int] | None = None) -> None:
        self.ks = sorted({int(x) for x in ks}) if ks else [int(k)]
        if self.ks[0] < 1:
            raise ValueError(f"knn: neighbour counts must be >= 1, not {self.ks}")
        self.k = self.ks[-1]
        self.X: NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        self.Y: Arr = np.zeros((0, 0))
        self.center: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._weights: tuple[int, list[int], Arr] | None = None

    def _unit(self, X: NDArray[Any]) -> NDArray[np.float32]:
        V = np.asarray(X, dtype=np.float32) - self.center
        out: NDArray[np.float32] = (V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True),
                                                   1e-12)).astype(np.float32)
        return out

    def fit(self, X: NDArray[Any], Y: NDArray[Any]) -> KNN:
        self.center = np.asarray(X, dtype=np.float32).mean(axis=0)
        self.X = self._unit(X)
        self.Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        return self

    def _rank_weights(self) -> tuple[list[int], Arr]:
        """The neighbour counts that fit the training set, and the weight of each neighbour
        rank: the mean of the k-nearest means over ``ks`` (computed once per training set)."""
        n = len(self.X)
        if self._weights is None or self._weights[0] != n:
            ks = sorted({min(k, n) for k in self.ks})
            weight = np.zeros(ks[-1])
            for kk in ks:
                weight[:kk] += 1.0 / (kk * len(ks))
            self._weights = (n, ks, weight)
        return self._weights[1], self._weights[2]

    def predict(self, X: NDArray[Any]) -> Arr:
        Q = self._unit(X)
        ks, weight = self._rank_weights()
        k = ks[-1]
        out = np.empty((len(Q), self.Y.shape[1]))
        for start in range(0, len(Q), 1024):
            block = Q[start:start + 1024]
            # one prompt (the policy): numpy's own loop, not a BLAS call, whose threads
            # spin against each other on a busy machine (0.4 ms against 21 ms for 7,093
            # rows on two loaded cores); a batch: BLAS
            sims = np.einsum("ij,kj->ik", block, self.X) if len(block) <= 4 else block @ self.X.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if len(ks) > 1:  # rank the k nearest: the nearer ones weigh more
                order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1)
                idx = np.take_along_axis(idx, order, axis=1)
            out[start:start + 1024] = np.einsum("k,ikm->im", weight, self.Y[idx])
        return out

    def state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        params: dict[str, Any] = {"k": self.k}
        if len(self.ks) > 1:
            params["ks"] = self.ks
        return {"X": self.X, "Y": self.Y, "center": self.center}, params

    @classmethod
    def restore(cls, arrays: dict[str, NDArray[Any]], params: dict[str, Any]) -> KNN:
        m = cls(int(params["k"]), params.get("ks"))
        m.X, m.Y = arrays["X"].astype(np.float32), arrays["Y"]
        m.center = arrays["center"].astype(np.float32)
        return m


class MF:
    kind = "mf"

    def __init__(self, rank: int = 32, l2: float = 1e-4, epochs: int = 400, lr: float = 0.01,
                 seed: int = 0) -> None:
        self.rank, self.l2, self.epochs, self.lr, self.seed = rank, l2, epochs, lr, seed
        self.P: Arr = np.zeros((0, 0))
        self.V: Arr = np.zeros((0, 0))
        self.b: Arr = np.zeros(0)

    def fit(self, X: NDArray[Any], Y: NDArray[Any]) -> MF:
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        rng = np.random.default_rng(self.seed)
        n, d = X.shape
        params = [rng.normal(0, 1 / np.sqrt(d), (d, self.rank)),
                  rng.normal(0, 1 / np.sqrt(self.rank), (self.rank, Y.shape[1])),
                  np.log(np.clip(Y.mean(0), 1e-3, 1 - 1e-3) / np.clip(1 - Y.mean(0), 1e-3, 1))]
        m1 = [np.zeros_like(p) for p in params]
        m2 = [np.zeros_like(p) for p in params]
        for t in range(1, self.epochs + 1):
            P, V, b = params
            H = X @ P
            err = (sigmoid(H @ V + b) - Y) / n
            gV = H.T @ err + self.l2 * V
            gP = X.T @ (err @ V.T) + self.l2 * P
            for i, g in enumerate((gP, gV, err.sum(0))):
                m1[i] = 0.9 * m1[i] + 0.1 * g
                m2[i] = 0.999 * m2[i] + 0.001 * g * g
                params[i] -= self.lr * (m1[i] / (1 - 0.9**t)) / (np.sqrt(m2[i] / (1 - 0.999**t)) + 1e-8)
        self.P, self.V, self.b = params
        return self

    def predict(self, X: NDArray[Any]) -> Arr:
        return sigmoid(np.asarray(X, dtype=np.float64) @ self.P @ self.V + self.b)

    def state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        return {"P": self.P, "V": self.V, "b": self.b}, {"rank": self.rank, "l2": self.l2}

    @classmethod
    def restore(cls, arrays: dict[str, NDArray[Any]], params: dict[str, Any]) -> MF:
        m = cls(int(params["rank"]), float(params["l2"]))
        m.P, m.V, m.b = arrays["P"], arrays["V"], arrays["b"]
        return m


KINDS: dict[str, Any] = {"logreg": LogReg, "knn": KNN, "mf": MF}


def make(kind: str, **params: Any) -> Predictor:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")
    model: Predictor = KINDS[kind](**params)
    return model


def restore(kind: str, arrays: dict[str, NDArray[Any]], params: dict[str, Any]) -> Predictor:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")
    model: Predictor = KINDS[kind].restore(arrays, params)
    return model
