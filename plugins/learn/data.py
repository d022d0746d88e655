"""The canonical routing format (``../shared/evaldata/README.md``), read into arrays.

One JSON object per line: ``{"prompt": str, "outcomes": {MODEL: {"quality": float in
[0, 1], "cost_usd": float, "response": str (optional)}}}``, every line naming the same
models. ``Table`` keeps them column-wise: ``quality[i, j]`` and ``cost[i, j]`` for prompt
``i`` and model ``models[j]``; ``responses[model]`` where every line has that model's
answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


class DataError(ValueError):
    """A data file that is not in the canonical format; the message names file and line."""


@dataclass(slots=True)
class Table:
    prompts: list[str]
    models: list[str]
    quality: NDArray[np.float64]  # (n, m)
    cost: NDArray[np.float64]  # (n, m)
    responses: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def by_cost(self) -> list[str]:
        """The models from the cheapest (mean cost per prompt) to the dearest."""
        return [self.models[j] for j in np.argsort(self.cost.mean(axis=0), kind="stable")]

    def col(self, model: str) -> int:
        return self.models.index(model)

    def weak_strong(self) -> tuple[str, str]:
        """The cheapest model and the best one (mean quality; ties: the dearer)."""
        order = self.by_cost()
        weak = order[0]
        strong = max(order, key=lambda m: (self.quality[:, self.col(m)].mean(), order.index(m)))
        if strong == weak:
            raise DataError("the cheapest model is also the best: nothing to route")
        return weak, strong


def _outcome(where: str, model: str, o: object) -> tuple[float, float, str | None]:
    if not isinstance(o, dict):
        raise DataError(f"{where}: outcomes[{model!r}] must be an object")
    try:
        q, c = float(o["quality"]), float(o["cost_usd"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: outcomes[{model!r}] needs numeric 'quality' and 'cost_usd'") from None
    if not 0.0 <= q <= 1.0 or c < 0.0:
        raise DataError(f"{where}: outcomes[{model!r}]: quality must be in [0, 1], cost_usd >= 0")
    resp = o.get("response")
    return q, c, resp if isinstance(resp, str) else None


def load(path: str | Path) -> Table:
    try:
        return _load(Path(path))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _load(path: Path) -> Table:
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    prompts: list[str] = []
    models: list[str] | None = None
    qual: list[list[float]] = []
    cost: list[list[float]] = []
    resp: dict[str, list[str | None]] = {}
    with path.open(encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                    or not isinstance(row.get("outcomes"), dict) or not row["outcomes"]:
                raise DataError(f"{where}: expected {{'prompt': str, 'outcomes': {{MODEL: ...}}}}")
            names = sorted(row["outcomes"])
            if models is None:
                models = names
                resp = {m: [] for m in models}
            elif names != models:
                raise DataError(f"{where}: models {names} differ from the first line's {models}")
            parsed = [_outcome(where, m, row["outcomes"][m]) for m in models]
            prompts.append(row["prompt"])
            qual.append([p[0] for p in parsed])
            cost.append([p[1] for p in parsed])
            for m, p in zip(models, parsed, strict=True):
                resp[m].append(p[2])
    if models is None:
        raise DataError(f"{path}: no data")
    full = {m: [r for r in rs if r is not None] for m, rs in resp.items()}
    return Table(prompts, models, np.array(qual), np.array(cost),
                 {m: rs for m, rs in full.items() if len(rs) == len(prompts)})
