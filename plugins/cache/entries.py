"""Cache entries and where they live: ``MemoryEntries`` (one process, the default) and
``plugins.cache.redis_entries.RedisEntries`` (``state: {kind: redis}``: every replica).

An entry is one answer: its JSON body, the chunk sizes of a streamed answer, the request
that paid for it and what that call cost (the hit's savings), its semantic group and text,
and when it expires. Its id is the request's exact key (``plugins.cache.keys``).

Memory per entry (in-process): the answer's JSON bytes, plus about ``OVERHEAD`` bytes of
Python objects, plus the semantic index's share (the MiniLM vector, 384 float32 = 1,536
bytes, and the text). ``cache.max_bytes`` bounds the answers' bytes and ``max_entries``
their number; past either, the least recently used entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson

OVERHEAD = 600  # bytes of Python objects per entry (the dataclass, its strings and floats)


@dataclass(slots=True)
class Entry:
    id: str
    body: bytes  # the answer, JSON
    origin: str  # the request id of the call that paid for it
    backend: str | None
    model: str | None
    completion_tokens: int
    cost_usd: float
    energy_j: float
    co2_g: float
    transfer_bytes: int  # sent to and received from the backend
    created: float  # wall clock
    expires: float
    pieces: list[int] | None = None
    group: str | None = None
    text: str | None = None

    def size(self) -> int:
        return len(self.body) + len(self.text or "") + 8 * len(self.pieces or ()) + OVERHEAD

    def dumps(self) -> bytes:
        d = asdict(self)
        d["body"] = self.body.decode()
        return orjson.dumps(d)

    @classmethod
    def loads(cls, raw: bytes | str) -> Entry:
        d: dict[str, Any] = orjson.loads(raw)
        d["body"] = d["body"].encode()
        return cls(**d)

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(self.body)
        return out


@dataclass(frozen=True, slots=True)
class Added:
    """An entry another replica stored, for this replica's semantic index."""

    id: str
    group: str
    text: str
    vec: np.ndarray
    expires: float


class MemoryEntries:
    """In-process entries, least recently used first out; expired ones are dropped when
    read, and the oldest are checked on every write."""

    kind = "memory"

    def __init__(self, max_entries: int, max_bytes: int,
                 on_drop: Callable[[str], None]) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.on_drop = on_drop  # an entry left: the semantic index forgets it
        self._d: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._d)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self, entry_id: str | None, *, pull: bool = False
                  ) -> tuple[Entry | None, list[Added]]:
        e = self._d.get(entry_id) if entry_id is not None else None
        if e is None:
            return None, []
        if e.expires <= time.time():
            self._drop(e.id)
            return None, []
        self._d.move_to_end(e.id)
        return e, []

    async def put(self, e: Entry, vec: np.ndarray | None) -> None:
        old = self._d.pop(e.id, None)
        if old is not None:
            self.bytes -= old.size()
        self._d[e.id] = e
        self.bytes += e.size()
        now = time.time()
        for _ in range(2):  # the least recently used: expired ones go
            first = next(iter(self._d.values()))
            if first.expires > now or first is e:
                break
            self._drop(first.id)
        while len(self._d) > self.max_entries or (self.bytes > self.max_bytes
                                                  and len(self._d) > 1):
            self._drop(next(iter(self._d)))

    def _drop(self, entry_id: str) -> None:
        e = self._d.pop(entry_id, None)
        if e is not None:
            self.bytes -= e.size()
            self.on_drop(entry_id)
