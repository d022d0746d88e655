"""Per-request context the HTTP layer builds and the pipeline reads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.interfaces import Constraints


@dataclass(slots=True)
class RequestContext:
    request_id: str
    team: str | None = None
    key_id: str | None = None
    policy: str | None = None  # per-request override (header or extra_body)
    constraints: Constraints = field(default_factory=Constraints)
    received_at: float = field(default_factory=time.perf_counter)
    extra: dict[str, Any] = field(default_factory=dict)
