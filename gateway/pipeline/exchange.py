"""One request on its way through the stages: what the client sent, and what each stage
added to it. The stages fill it in their order (``gateway.pipeline.stages.ORDER``); a field
is set by the stage named next to it and read by the ones after."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.accounting import UsageRecord
from gateway.interfaces import Endpoint, Plan, RequestFeatures
from gateway.pipeline.context import RequestContext
from gateway.pipeline.routing import Target
from gateway.protocol import WireRequest


@dataclass(slots=True)
class Exchange:
    endpoint: Endpoint
    body: dict[str, Any]  # the body as the client sent it (never changed)
    req: WireRequest  # its validated form
    ctx: RequestContext
    # resolve: the client's name as a route or backends, and the body the backends get
    target: Target = field(init=False)
    forwarded: dict[str, Any] = field(init=False)
    # features: what routing, admission and plugins know of the request; its record
    features: RequestFeatures = field(init=False)
    record: UsageRecord = field(init=False)
    # plan: the backends to try (or the cascade to run)
    plan: Plan = field(init=False)
    # cache lookup: an answer found without calling a backend (None: call one); the
    # stage that sets it fills the record's fields for it too
    answer: dict[str, Any] | None = None
    # a streamed answer: the lengths of its chunks' text, so that the cache replays it in
    # the same chunks (set before cache_store, and by cache_lookup with a hit's ``answer``)
    pieces: list[int] | None = None
    # the cache's own notes from cache_lookup to cache_store (its keys, the embedding)
    cache: Any = None
    # compress: what it did and why, for the record features starts (``pipeline.compress``)
    compression: Any = None

    @property
    def streaming(self) -> bool:
        return self.req.streaming
