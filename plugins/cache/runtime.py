"""The built-in cache (``cache: {kind: semantic}``): an exact tier and a semantic tier in
front of every backend, per route, with the request's own controls (docs/cache.md).

``lookup`` is the request path's ``cache_lookup`` stage: it settles the request's controls
(route, then headers, then ``extra_body.switchyard.cache``; a request can only narrow what
its route allows), skips requests whose answers are never reused, then looks up the exact
key and, failing that, the nearest entry of the request's semantic group. A hit sets the
answer and fills the record (no backend, the savings, zero or ``hit_cost_fraction`` of
the cost). ``store`` is ``cache_store``: a reusable answer, streamed or not, becomes an
entry. A store that cannot be reached (Redis away) makes the request a ``bypass``: the
backend answers it, never an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from gateway import CacheConfig, Exchange, InvalidRequest, StateConfig, UsageRecord
from plugins.cache.entries import Added, Entry, MemoryEntries
from plugins.cache.keys import Keys, answer_reusable, keys, why_not_reusable

log = logging.getLogger("switchyard.cache")

# mode -> (read, write)
MODES: dict[str, tuple[bool, bool]] = {
    "on": (True, True), "off": (False, False), "no_store": (False, False),
    "read_only": (True, False), "refresh": (False, True),
}
HIT_BACKEND = "cache"  # the ledger's backend for a hit
# why an answer is never reused (``keys.why_not_reusable``), for ``x-switchyard-cache-reason``
NOT_REUSABLE = {
    "temperature": "temperature above the cache's max_temperature {t:g}: answers vary",
    "n": "n > 1: several completions are not stored",
    "turns": "more than max_turns {turns} user turns",
}


def _why(rec: UsageRecord, reason: str) -> None:
    """A miss's or a bypass's reason, in the record's decision (and so in the ledger and
    the ``x-switchyard-cache-reason`` header)."""
    rec.decision = {**(rec.decision or {}), "cache": {"reason": reason}}


class Entries(Protocol):
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, entry_id: str | None, *, pull: bool = False
                  ) -> tuple[Entry | None, list[Added]]: ...

    async def put(self, e: Entry, vec: np.ndarray | None) -> None: ...


class Index(Protocol):
    """``plugins.cache.semantic.SemanticIndex`` (contracts: lookup, add, remove)."""

    async def vector(self, text: str) -> np.ndarray: ...

    def add(self, group: str, entry_id: str, text: str, vec: np.ndarray) -> None: ...

    def remove(self, entry_id: str) -> None: ...

    async def lookup(self, group: str, text: str, vec: np.ndarray | None = None,
                     threshold: float | None = None) -> Any: ...


@dataclass(slots=True)
class Notes:
    """What ``lookup`` leaves on ``Exchange.cache`` for ``store``."""

    keys: Keys
    cfg: CacheConfig
    write: bool
    ttl_s: float
    vec: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Found:
    entry: Entry
    tier: str  # hit-exact | hit-semantic
    similarity: float
    score: float


def _number(value: str, name: str, low: float, high: float) -> float:
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not low <= v <= high:
        raise InvalidRequest(f"Invalid value for header '{name}': {value!r} (a number from "
                             f"{low:g} to {high:g}).", param=name)
    return v


def controls(x: Exchange, cfg: CacheConfig) -> tuple[bool, bool, float, float | None]:
    """(read, write, ttl_s, threshold) for this request: the route's, narrowed by the
    request's headers, then by ``extra_body.switchyard.cache``."""
    read, write = MODES[cfg.mode]
    ttl, threshold = cfg.ttl_s, cfg.threshold
    asked: list[str] = []
    h = x.ctx.cache_headers or {}
    cc = {t.strip().lower() for t in h.get("cache-control", "").split(",")}
    if "no-store" in cc:
        asked.append("off")
    elif "no-cache" in cc:
        asked.append("refresh")
    if "x-switchyard-cache-mode" in h:
        mode = h["x-switchyard-cache-mode"].strip().lower().replace("-", "_")
        if mode not in MODES:
            raise InvalidRequest(f"Invalid value for header 'x-switchyard-cache-mode': "
                                 f"{mode!r} (one of {', '.join(MODES)}).",
                                 param="x-switchyard-cache-mode")
        asked.append(mode)
    if "x-switchyard-cache-ttl" in h:
        ttl = min(ttl, _number(h["x-switchyard-cache-ttl"], "x-switchyard-cache-ttl", 1e-3, 1e9))
    if "x-switchyard-cache-threshold" in h:
        threshold = _number(h["x-switchyard-cache-threshold"], "x-switchyard-cache-threshold",
                            0.0, 1.0)
    opts = x.req.switchyard.cache if x.req.switchyard is not None else None
    if opts is not None:
        if opts.mode is not None:
            asked.append(opts.mode)
        if opts.ttl_s is not None:
            ttl = min(ttl, opts.ttl_s)
        if opts.threshold is not None:
            threshold = opts.threshold
    for mode in asked:
        r, w = MODES[mode]
        read, write = read and r, write and w
    return read, write, ttl, threshold


class TieredCache:
    """The built-in cache: ``Entries`` (memory or Redis) and a semantic ``Index``."""

    def __init__(self, config: CacheConfig, routes: Mapping[str, CacheConfig],
                 state: StateConfig, *, index: Index | None = None,
                 verifier: Path | None = None, cross_encoder: Path | None = None) -> None:
        """``verifier``, ``cross_encoder``: files for the semantic tier's decision
        (``cache.options``; None: the shipped verifier, no cross-encoder, unless the
        environment variables of ``plugins.cache.decide.load_verifier`` name them)."""
        self.config, self.routes = config, dict(routes)
        self._judges = (verifier, cross_encoder)
        used = [c for c in (config, *self.routes.values()) if c.enabled]
        self.semantic = any(c.semantic for c in used)
        self.index: Index | None = index
        self.entries: Entries
        if state.kind == "redis":
            from plugins.cache.redis_entries import RedisEntries

            self.entries = RedisEntries(
                state.url.get_secret_value(), state.prefix + config.prefix,
                max_entries=config.max_entries, timeout_s=state.timeout_s,
                connect_timeout_s=state.connect_timeout_s)
        else:
            self.entries = MemoryEntries(config.max_entries, config.max_bytes, self._forget)
        self.remote = self.entries.kind != "memory"
        self._failing = False

    def _forget(self, entry_id: str) -> None:
        if self.index is not None:
            self.index.remove(entry_id)

    async def start(self) -> None:
        if self.semantic and self.index is None:
            from plugins.cache.decide import load_verifier
            from plugins.cache.semantic import SemanticIndex
            from plugins.minilm import MiniLM

            verifier = load_verifier(*self._judges)
            self.index = SemanticIndex(MiniLM.shared(), max_entries=self.config.max_entries,
                                       verifier=verifier)
        if self.index is not None:
            await self.index.vector("warm up")  # the model loads now, not on a request
        await self.entries.start()
        if self.remote and self.index is not None:
            try:
                self._learn((await self.entries.get(None, pull=True))[1])
            except Exception as e:  # noqa: BLE001 - the index fills on the next lookups
                log.warning("cache: could not read the shared entries at start (%s)",
                            type(e).__name__)

    async def close(self) -> None:
        await self.entries.close()

    def _learn(self, added: list[Added]) -> None:
        if self.index is not None:
            for a in added:
                self.index.add(a.group, a.id, a.text, a.vec)

    def settings(self, x: Exchange) -> CacheConfig:
        route = x.record.route
        return self.routes.get(route, self.config) if route is not None else self.config

    # ---- cache_lookup ------------------------------------------------------------------

    async def lookup(self, x: Exchange) -> None:
        cfg = self.settings(x)
        if not cfg.enabled:
            return
        rec = x.record
        read, write, ttl, threshold = controls(x, cfg)
        rec.cache = "bypass"
        if not (read or write):
            _why(rec, "the request or its route turned the cache off")
            return
        not_reusable = why_not_reusable(x, cfg.max_temperature, cfg.max_turns)
        if not_reusable:
            _why(rec, NOT_REUSABLE[not_reusable].format(t=cfg.max_temperature,
                                                        turns=cfg.max_turns))
            return
        k = keys(x, cfg.namespace, cfg.semantic and self.index is not None)
        notes = Notes(k, cfg, write, ttl)
        x.cache = notes
        if not read:
            _why(rec, "refresh: not looked up; the answer is stored")
            return
        try:
            found = await self._find(x, notes, threshold)
        except Exception as e:  # noqa: BLE001 - the store is away: the backend answers
            self._failed(e)
            _why(rec, "the cache store is unreachable")
            return
        self._failing = False
        if found is None:
            rec.cache = "miss"
            return
        self._answer(x, found, cfg)

    def _failed(self, e: Exception) -> None:
        if not self._failing:
            log.warning("cache store unreachable (%s): requests bypass the cache",
                        type(e).__name__)
        self._failing = True

    async def _find(self, x: Exchange, notes: Notes, threshold: float | None) -> Found | None:
        k = notes.keys
        semantic = k.group is not None and k.text is not None and self.index is not None
        entry, added = await self.entries.get(k.exact, pull=semantic and self.remote)
        self._learn(added)
        if entry is not None:
            return Found(entry, "hit-exact", 1.0, 1.0)
        if not semantic:
            _why(x.record, "no stored answer for this exact request")
            return None
        assert self.index is not None and k.group is not None and k.text is not None
        notes.vec = await self.index.vector(k.text)
        for _ in range(3):  # a match whose entry expired is forgotten; the next may serve
            m = await self.index.lookup(k.group, k.text, notes.vec, threshold)
            if m is None:
                _why(x.record, "nothing stored for this model, context and team yet")
                return None
            x.record.cache_similarity = float(m.similarity)
            if not m.hit:
                _why(x.record, getattr(m, "why", "") or "the nearest stored prompt does not serve")
                return None
            entry, _ = await self.entries.get(m.entry_id)
            if entry is not None:
                return Found(entry, "hit-semantic", float(m.similarity), float(m.score))
            self.index.remove(m.entry_id)
        _why(x.record, "the nearest stored answers have expired")
        return None

    def _answer(self, x: Exchange, f: Found, cfg: CacheConfig) -> None:
        e = f.entry
        x.answer, x.pieces = e.answer(), e.pieces
        rec = x.record
        rec.backend, rec.model, rec.completion_tokens = HIT_BACKEND, e.model, e.completion_tokens
        rec.cache, rec.cache_entry, rec.cache_similarity = f.tier, e.id, f.similarity
        rec.saved_cost_usd, rec.saved_energy_j, rec.saved_co2_g = e.cost_usd, e.energy_j, e.co2_g
        rec.saved_bytes = e.transfer_bytes
        rec.cost_usd = e.cost_usd * cfg.hit_cost_fraction
        rec.reason = f"{f.tier}: the answer of request {e.origin}"
        rec.decision = {**(rec.decision or {}), "cache": {
            "tier": f.tier, "entry": e.id, "origin": e.origin, "backend": e.backend,
            "similarity": f.similarity, "score": f.score, "age_s": time.time() - e.created}}

    # ---- cache_store -------------------------------------------------------------------

    async def store(self, x: Exchange, answer: dict[str, Any]) -> None:
        notes = x.cache
        rec = x.record
        if not isinstance(notes, Notes) or not notes.write or rec.status != 200:
            return
        if not answer_reusable(answer):
            return
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(body) > notes.cfg.max_entry_bytes:
            return
        k, now = notes.keys, time.time()
        e = Entry(id=k.exact, body=body, origin=rec.request_id, backend=rec.backend,
                  model=rec.model, completion_tokens=rec.completion_tokens,
                  cost_usd=rec.cost_usd, energy_j=rec.energy_j, co2_g=rec.co2_g,
                  transfer_bytes=rec.bytes_sent + rec.bytes_received, created=now,
                  expires=now + notes.ttl_s, pieces=x.pieces, group=k.group, text=k.text)
        vec = None
        if k.group is not None and k.text is not None and self.index is not None:
            vec = notes.vec if notes.vec is not None else await self.index.vector(k.text)
        await self.entries.put(e, vec)
        if vec is not None and self.index is not None and k.group is not None:
            self.index.add(k.group, e.id, k.text or "", vec)
