"""Shared state behind one small Protocol: teams, virtual keys, budgets, rate limits, the
backends some replica has found down, and the backends an operator drained.

Three implementations are registered as plugins through ``switchyard_register_state_stores``:
``memory`` (in-process, the embedded default), ``sqlite`` (the workers of one host, ``serve
--workers N``: one file, every read-modify-write one transaction) and ``redis`` (several
gateway replicas; every read-modify-write is one Lua script, so N replicas behave as one).
The contract tests in ``tests/plugins/test_state_contract.py`` run against all three.

Money is in integer nano-dollars (``gateway.budgets``). A store raises ``StateUnavailable``
when it cannot be reached; the gateway decides what that means (``state.failure_mode``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.budgets import Period, to_nano
from gateway.errors import StateUnavailable as StateUnavailable  # noqa: PLC0414 - re-exported: the stores raise it


@dataclass(slots=True)
class Team:
    name: str
    budget_usd: float | None = None  # None: no budget, spend is only tracked
    period: Period = "month"
    soft_limit_pct: float | None = 80.0  # alert when spend crosses this share of the budget
    rpm: int | None = None  # requests per minute, the whole team
    tpm: int | None = None  # tokens per minute, the whole team
    models: list[str] = field(default_factory=list)  # empty: every model
    backends: list[str] = field(default_factory=list)  # empty: every backend
    created_at: float = 0.0

    @property
    def budget_nano(self) -> int:
        """-1 when there is no budget."""
        return -1 if self.budget_usd is None else to_nano(self.budget_usd)

    @property
    def soft_nano(self) -> int:
        """Spend at which the soft-limit alert fires; -1 when none."""
        if self.budget_usd is None or self.soft_limit_pct is None:
            return -1
        return to_nano(self.budget_usd * self.soft_limit_pct / 100.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Team:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(slots=True)
class KeyRecord:
    """A virtual key as stored: never the secret, only its salted HMAC-SHA256."""

    key_id: str
    team: str
    name: str
    salt: str  # hex
    digest: str  # hex HMAC-SHA256(salt, secret)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    rpm: int | None = None  # per key; the team's limits apply as well
    tpm: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the salt and digest."""
        d = self.to_dict()
        del d["salt"], d["digest"]
        d["revoked"] = self.revoked_at is not None
        return d


@dataclass(frozen=True, slots=True)
class Limit:
    """One sliding-window limit: at most ``limit`` units (requests or tokens) in any
    ``window_s`` seconds. ``name`` is unique within the team (``team:rpm``, ``key:ID:tpm``)."""

    name: str
    limit: int
    cost: int
    window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Reserved:
    ok: bool  # False: it did not fit, nothing was reserved
    spent: int  # nano-dollars settled this period (before this reservation)
    reserved: int  # nano-dollars held by reservations in flight (including this one if ok)
    budget: int  # -1: no budget
    exists: bool = True  # False: the team does not exist (any more)
    wait_s: float = 0.0  # ``reserve_within``: > 0 when its limits refused (nothing held)


@dataclass(frozen=True, slots=True)
class Settled:
    applied: bool  # False: already settled (a retry), nothing changed
    spent: int  # the period's spend after this settlement
    alert: bool  # this settlement crossed the soft limit first in this period


@dataclass(frozen=True, slots=True)
class Spend:
    spent: int
    reserved: int
    alerted: bool


@runtime_checkable
class StateStore(Protocol):
    """The shared state of teams, keys, budgets, rate limits and backend health.

    Every method is atomic on its own: with the Redis store, across replicas."""

    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Returns when reachable; raises StateUnavailable otherwise."""
        ...

    # ---- teams -------------------------------------------------------------------------

    async def create_team(self, team: Team) -> bool:
        """False (and nothing changed) when a team of that name exists."""
        ...

    async def update_team(self, team: Team) -> bool:
        """False when there is no such team."""
        ...

    async def get_team(self, name: str) -> Team | None: ...

    async def list_teams(self) -> list[Team]: ...

    async def has_teams(self) -> bool: ...

    async def delete_team(self, name: str) -> list[str]:
        """Delete the team, its keys and its counters; return the ids of its keys."""
        ...

    # ---- keys --------------------------------------------------------------------------

    async def put_key(self, key: KeyRecord) -> None:
        """Create or replace a key record (the team must exist)."""
        ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]: ...

    # ---- budgets -----------------------------------------------------------------------

    async def reserve(self, team: str, period: str, res_id: str, amount: int, ttl_s: float,
                      keep_s: int) -> Reserved:
        """Hold ``amount`` if spent + reserved + amount fits the team's budget (read from
        the team record, so a change applies at once). Reservations older than ``ttl_s``
        (a replica that died mid-request) are released first. ``keep_s``: how long the
        period's counters live (0: forever)."""
        ...

    async def reserve_within(self, team: str, limits: Sequence[Limit], period: str,
                             res_id: str, amount: int, ttl_s: float, keep_s: int) -> Reserved:
        """``hit(team, limits)`` and ``reserve(...)`` as one atomic step (one round trip
        to Redis). Nothing is taken unless both fit: limits that do not fit come first
        (``wait_s`` > 0, as ``hit`` returns it); a budget that does not fit takes nothing
        from the limits either. Idempotent by ``res_id`` like ``reserve``."""
        ...

    async def settle(self, team: str, period: str, res_id: str, actual: int) -> Settled:
        """Release the reservation and add ``actual`` to the spend, once: a second call
        with the same ``res_id`` changes nothing. Fires the soft-limit flag once a period."""
        ...

    async def settle_adding(self, team: str, period: str, res_id: str, actual: int,
                            limits: Sequence[Limit]) -> Settled:
        """``settle``, then ``add(team, limits)`` if the settlement applied, as one atomic
        step: a repeated call adds nothing twice."""
        ...

    async def charge(self, team: str, period: str, charge_id: str, amount: int,
                     keep_s: int) -> Settled:
        """Add spend that had no reservation here (reconciling a fail-open outage),
        idempotently by ``charge_id``."""
        ...

    async def spend(self, team: str, period: str) -> Spend: ...

    # ---- rate limits -------------------------------------------------------------------

    async def hit(self, team: str, limits: Sequence[Limit]) -> float:
        """Take ``cost`` from every limit if all fit (then 0.0), else take nothing and
        return the seconds until they would fit (``window_s`` when the cost can never fit)."""
        ...

    async def add(self, team: str, limits: Sequence[Limit]) -> None:
        """Record ``cost`` (which may be negative: a correction) without a check."""
        ...

    # ---- backend health ----------------------------------------------------------------

    async def mark_backend_down(self, backend: str, replica: str, until: float,
                                reason: str) -> None:
        """Mark ``backend`` down until ``until`` (wall-clock seconds), when the mark
        expires by itself. A mark that lasts longer is kept: the latest ``until`` wins."""
        ...

    async def clear_backend_down(self, backend: str) -> None:
        """Remove the mark (any replica's) on ``backend``."""
        ...

    async def backends_down(self, names: Sequence[str]) -> dict[str, tuple[float, str, str]]:
        """The unexpired marks among ``names``: backend -> (until, replica, reason)."""
        ...

    # ---- drained backends (an operator's choice: never expires, no health check clears it)

    async def set_backend_drained(self, backend: str, drained: bool, by: str,
                                  reason: str) -> None:
        """Drain ``backend`` (``by`` whom, why) or, with ``drained`` False, undrain it.
        Draining a drained backend replaces its record (and its ``since``)."""
        ...

    async def backends_drained(self, names: Sequence[str]) -> dict[str, tuple[str, str, float]]:
        """The drained among ``names``: backend -> (by, reason, since wall-clock seconds)."""
        ...
