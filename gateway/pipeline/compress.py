"""The ``compress`` stage: a long chat prompt made shorter before it is counted, budgeted,
routed and sent, by the configured ``Compressor`` (``switchyard_register_compressors``),
and only where it pays (docs/compression.md).

Per request, in this order: the route's settings with the request's own
(``extra_body.switchyard.compress``); ``off``, a prompt under ``min_tokens`` or already
within ``token_budget`` is sent as it is. Otherwise the saving is predicted before any work:
the tokens it would remove (from the target, else the share the compressor removed so far)
times the first candidate backend's input price, plus the prefill time they would take
(``prefill_tokens_per_s``, else the backend's measured time to first token), against the
compressor's own time (measured: at start-up and on every request), priced at
``value_of_time_usd_per_hour``; on a free backend the two times are compared. A compressor
that changed anything but message text, touched the last user turn, or raised leaves the
prompt as it was: compression never breaks a request.

What it did goes into the record once ``features`` has started it (``Compress.note``):
``compress``, ``compress_saved_tokens``, ``compress_saved_bytes``, ``compress_ms`` and
``decision["compress"]`` (the outcome, why, the prediction).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import CompressConfig
from gateway.errors import ConfigError
from gateway.hookspecs import Compression, Compressor
from gateway.interfaces import Backend, BackendCall
from gateway.pipeline.exchange import Exchange
from gateway.protocol import CompressOptions
from gateway.telemetry import Tracker

log = logging.getLogger("switchyard.compress")

_BLANK = re.compile(r"\n[ \t]*\n")
ALPHA = 0.2  # weight of the newest observation in the compressor's moving cost and reach


@dataclass(slots=True)
class Note:
    """What the stage did to one request, until ``features`` has started its record."""

    outcome: str  # compressed | skipped | unchanged | failed
    decision: dict[str, Any]
    tokens_before: int = 0
    saved_bytes: int = 0
    ms: float | None = None


@dataclass(slots=True)
class Reach:
    """The compressor's measured cost (ms per prompt token) and the share of the tokens it
    kept, as moving averages; None until measured."""

    ms_per_token: float | None = None
    kept: float | None = None

    def observe(self, tokens_before: int, tokens_after: int | None, ms: float) -> None:
        """One run; a time over 4x the average counts as 4x: one stall (a GC pause, a burst)
        must not make compression look too dear to ever run, and be measured, again."""
        if tokens_before <= 0:
            return
        per = ms / tokens_before
        self.ms_per_token = per if self.ms_per_token is None else (
            (1 - ALPHA) * self.ms_per_token + ALPHA * min(per, 4 * self.ms_per_token))
        if tokens_after is not None:
            kept = min(1.0, tokens_after / tokens_before)
            self.kept = kept if self.kept is None else (1 - ALPHA) * self.kept + ALPHA * kept


def pays(saved_tokens: float, *, price_per_token: float, prefill_s_per_token: float,
         cost_s: float, usd_per_s: float) -> dict[str, Any]:
    """Whether removing ``saved_tokens`` is worth ``cost_s`` seconds of compression: on a
    paid backend, their price plus the prefill time they take, priced at ``usd_per_s``,
    against the compressor's time at the same price; on a free one, the two times."""
    saved_s = saved_tokens * prefill_s_per_token
    out: dict[str, Any] = {"saved_tokens": round(saved_tokens), "saved_s": saved_s,
                           "cost_s": cost_s}
    if price_per_token > 0:
        saved_usd = saved_tokens * price_per_token + saved_s * usd_per_s
        cost_usd = cost_s * usd_per_s
        out.update(saved_usd=saved_usd, cost_usd=cost_usd, pays=saved_usd > cost_usd)
    else:
        out["pays"] = saved_s > cost_s
    return out


def _text_bytes(messages: Sequence[Mapping[str, Any]]) -> int:
    n = 0
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            n += len(c.encode())
        elif isinstance(c, list):
            n += sum(len(str(p.get("text", "")).encode()) for p in c if isinstance(p, Mapping))
    return n


def _last_user(messages: Sequence[Mapping[str, Any]]) -> int:
    return next((i for i in range(len(messages) - 1, -1, -1)
                 if messages[i].get("role") == "user"), -1)


def _same_shape(a: Any, b: Any) -> bool:
    """Content ``b`` may replace ``a``: a string for a string; for parts, the same parts
    with only the text parts' text changed."""
    if isinstance(a, str) or a is None:
        return isinstance(b, str) or b == a
    if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
        return False
    for pa, pb in zip(a, b, strict=True):
        if not (isinstance(pa, Mapping) and isinstance(pb, Mapping)):
            return False
        if pa.get("type") != "text" and pa != pb:
            return False
        if {k: v for k, v in pa.items() if k != "text"} != {
                k: v for k, v in pb.items() if k != "text"}:
            return False
    return True


def _keeps_question(a: Any, b: Any) -> bool:
    """The last user turn may lose context (documents pasted into it), never its final
    paragraph, where a retrieval template puts the question; parts stay whole."""
    if not isinstance(a, str) or not isinstance(b, str):
        return bool(a == b)
    final = _BLANK.split(a.strip())[-1].strip()
    return b.rstrip().endswith(final)


def unsafe_change(before: Sequence[Mapping[str, Any]],
                  after: Sequence[Mapping[str, Any]]) -> str | None:
    """What a compressor changed that it may not (None: only message text): the messages,
    their roles, tool calls, names and every other field stay; the last user turn keeps its
    final paragraph; a content's shape stays (a string, or the same parts)."""
    if len(before) != len(after):
        return f"{len(before)} messages became {len(after)}"
    last = _last_user(before)
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        if not isinstance(b, Mapping):
            return f"messages[{i}] is not an object"
        if {k: v for k, v in a.items() if k != "content"} != {
                k: v for k, v in b.items() if k != "content"}:
            return f"messages[{i}] changed beyond its content"
        if i == last and not _keeps_question(a.get("content"), b.get("content")):
            return f"messages[{i}] (the last user turn) lost its final paragraph"
        if not _same_shape(a.get("content"), b.get("content")):
            return f"messages[{i}].content changed its shape"
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """One request's compression settings: the route's with the request's own."""

    ratio: float | None
    token_budget: int | None
    min_tokens: int


def request_settings(cfg: CompressConfig, opts: CompressOptions | None) -> Settings:
    if opts is None:
        return Settings(cfg.ratio, cfg.token_budget, cfg.min_tokens)
    ratio, budget = cfg.ratio, cfg.token_budget
    if opts.ratio is not None or opts.token_budget is not None:  # one target: the request's
        ratio, budget = opts.ratio, opts.token_budget
    return Settings(ratio, budget,
                    cfg.min_tokens if opts.min_tokens is None else opts.min_tokens)


def predicted_saving(tokens: int, s: Settings, reach: Reach) -> float:
    """Tokens compression would remove: to the budget, by the ratio (the tighter of the
    two), else the share the compressor has removed so far (half, before it ran)."""
    keep = [float(s.token_budget)] if s.token_budget is not None else []
    if s.ratio is not None:
        keep.append(tokens / s.ratio)
    if not keep:
        keep.append(tokens * (reach.kept if reach.kept is not None else 0.5))
    return max(0.0, tokens - min(keep))


@dataclass
class Compress:
    """The stage (``__call__``) and its note into the record (``note``), built once by
    ``assembly`` from the compressor and every route's settings (None: off there)."""

    compressor: Compressor
    kind: str
    top: CompressConfig | None  # requests that name a backend, not a route
    routes: Mapping[str, CompressConfig | None]
    backends: Mapping[str, Backend]
    trackers: Mapping[str, Tracker]
    reach: Reach = field(default_factory=Reach)

    def _config(self, x: Exchange) -> CompressConfig | None:
        target = x.target
        return self.routes.get(target.name) if target.kind == "route" else self.top

    def __call__(self, x: Exchange) -> Awaitable[None] | None:
        cfg = self._config(x)
        if cfg is None or x.endpoint != "chat":
            return None
        sw = x.req.switchyard
        opts = sw.compress if sw is not None else None
        if opts is not None and opts.off:
            x.compression = Note("skipped", {"reason": "off"})
            return None
        first = self.backends[x.target.backends[0]]
        tokens = first.count_tokens(BackendCall("chat", x.forwarded, x.ctx.request_id))
        s = request_settings(cfg, opts)
        if tokens < s.min_tokens or (s.token_budget is not None and tokens <= s.token_budget):
            why = "short" if tokens < s.min_tokens else "within_budget"
            x.compression = Note("skipped", {"reason": why}, tokens)
            return None
        verdict = self.predict(cfg, first, tokens, s)
        base = {"kind": self.kind, "backend": first.name, "ratio": s.ratio,
                "token_budget": s.token_budget, "predicted": verdict}
        if not verdict["pays"]:
            x.compression = Note("skipped", {"reason": "does_not_pay", **base}, tokens)
            return None
        return self._compress(x, tokens, s, base)

    def predict(self, cfg: CompressConfig, first: Backend, tokens: int,
                s: Settings) -> dict[str, Any]:
        """The prediction ``pays`` decides on (``when: always``: it pays, by fiat)."""
        if cfg.prefill_tokens_per_s is not None:
            per_token = 1.0 / cfg.prefill_tokens_per_s
        else:
            ttft, _ = self.trackers[first.name].ttft_estimate(tokens)
            per_token = ttft / tokens if ttft is not None else 0.0
        verdict = pays(predicted_saving(tokens, s, self.reach),
                       price_per_token=first.price_per_token()[0],
                       prefill_s_per_token=per_token,
                       cost_s=(self.reach.ms_per_token or 0.0) * tokens / 1000.0,
                       usd_per_s=cfg.value_of_time_usd_per_hour / 3600.0)
        if cfg.when == "always":
            verdict["pays"] = True
        return verdict

    async def _compress(self, x: Exchange, tokens: int, s: Settings,
                        base: dict[str, Any]) -> None:
        before: list[dict[str, Any]] = x.forwarded["messages"]
        t0 = time.perf_counter()
        try:
            c = await self.compressor.compress([dict(m) for m in before], ratio=s.ratio,
                                               token_budget=s.token_budget, min_words=0)
        except Exception as e:  # the prompt goes as it is; logged
            log.exception("compressor %s failed on request %s", self.kind, x.ctx.request_id)
            x.compression = Note("failed", {"reason": f"error: {type(e).__name__}", **base},
                                 tokens, ms=(time.perf_counter() - t0) * 1000.0)
            return
        ms = (time.perf_counter() - t0) * 1000.0
        d = {**base, **_described(c)}
        problem = unsafe_change(before, c.messages) if c.changed else None
        if not c.changed or problem is not None:
            if problem is not None:
                log.warning("compressor %s changed what it may not (%s) on request %s: "
                            "the prompt is sent as it is", self.kind, problem, x.ctx.request_id)
            self.reach.observe(tokens, None, ms)  # its time, not its reach: nothing to cut
            d.update(reason="nothing_to_change" if problem is None else "unsafe_change",
                     problem=problem)
            x.compression = Note("unchanged", d, tokens, ms=ms)
            return
        x.forwarded = {**x.forwarded, "messages": c.messages}
        saved_bytes = max(0, _text_bytes(before) - _text_bytes(c.messages))
        x.compression = Note("compressed", d, tokens, saved_bytes, ms)

    def note(self, x: Exchange) -> None:
        """After ``features``: what the stage did, into the request's record; the tokens the
        compressor kept (``features`` counted them) update its reach."""
        n: Note | None = x.compression
        if n is None:
            return
        rec = x.record
        rec.compress, rec.compress_ms = n.outcome, n.ms
        d = n.decision
        d["tokens_before"] = n.tokens_before
        if n.outcome == "compressed":
            after = x.features.prompt_tokens
            rec.compress_saved_tokens = max(0, n.tokens_before - after)
            rec.compress_saved_bytes = n.saved_bytes
            d["tokens_after"] = after
            if n.ms is not None:
                self.reach.observe(n.tokens_before, after, n.ms)
        d["ms"] = n.ms
        rec.decision = {**(rec.decision or {}), "compress": {"outcome": n.outcome, **d}}

    async def start(self) -> None:
        """Warm the compressor up (its models load here, not on a client's request) and
        measure its cost on a retrieval-like prompt, the prior of every prediction."""
        messages = warmup_messages()
        words = sum(len(str(m["content"]).split()) for m in messages)
        try:
            for _ in range(2):  # the first run loads; the second is the measure
                t0 = time.perf_counter()
                c = await self.compressor.compress(messages, min_words=0)
        except Exception as e:
            msg = f"the {self.kind} compressor failed its warm-up: {type(e).__name__}: {e}"
            raise ConfigError([("compress", msg)]) from e
        ms = (time.perf_counter() - t0) * 1000.0
        tokens = round(words * 4 / 3)  # about 0.75 words a token in English
        self.reach.observe(tokens, round(c.words_after * 4 / 3), ms)
        log.info("compressor %s warmed up: %.0f ms for %d words (%.2f ms per 1k tokens)",
                 self.kind, ms, words, 1000 * (self.reach.ms_per_token or 0.0))


    def close(self) -> None:
        """The compressor's own ``close()`` (its threads), where it has one."""
        close = getattr(self.compressor, "close", None)
        if callable(close):
            close()


def _described(c: Compression) -> dict[str, Any]:
    return {"words_before": c.words_before, "words_after": c.words_after,
            "compressor_ms": c.ms, "stages": list(c.stages), "changed": list(c.changed),
            "kept_verbatim": list(c.kept_verbatim)}


_TOPICS = ("river", "engine", "harvest", "library", "glacier", "market", "orbit", "violin",
           "bridge", "forest", "vaccine", "harbor")
_WORDS = ("the", "of", "was", "built", "near", "in", "a", "small", "town", "during", "years",
          "many", "people", "visited", "after", "its", "first", "season", "records", "show",
          "that", "local", "council", "approved", "new", "plan", "for", "north", "side")


def warmup_messages(passages: int = 12, sentences: int = 8) -> list[dict[str, Any]]:
    """A retrieval-like chat request of about 1,500 words (fixed: a seeded generator):
    titled passages, then a question about one of them."""
    rng = random.Random(15)
    docs = []
    for i in range(passages):
        topic = _TOPICS[i % len(_TOPICS)]
        body = " ".join(
            f"The {topic} " + " ".join(rng.choice(_WORDS) for _ in range(12)) + "."
            for _ in range(sentences))
        docs.append(f"Document [{i + 1}](Title: {topic.capitalize()}) {body}")
    context = "\n".join(docs)
    return [{"role": "system", "content": "Answer the question from the documents."},
            {"role": "user", "content": f"{context}\n\nQuestion: when was the {_TOPICS[3]} "
                                        "built?"}]
