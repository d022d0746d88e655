"""``state: {kind: memory}``: teams, keys, budgets, rate limits and backend marks in this
process.

The embedded default, and the local fallback of the Redis store when it fails open. Every
method runs without an ``await`` between its check and its update, so on one event loop
each is atomic. Nothing survives a restart: for that, or for several replicas, use Redis.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway import KeyRecord, Limit, RegisterStateStore, Reserved, Settled, Spend, Team, hookimpl


@dataclass
class _Period:
    spent: int = 0
    reserved: int = 0
    alerted: bool = False
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, expiry)
    expired: set[str] = field(default_factory=set)  # released by expiry, not yet settled
    charged: set[str] = field(default_factory=set)
    expires_at: float | None = None


@dataclass
class _Window:
    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def prune(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            self.total -= self.entries.popleft()[1]

    def wait_s(self, need: int, limit: int, now: float, window_s: float) -> float:
        """Seconds until ``need`` more fits under ``limit``."""
        if need > limit:
            return window_s
        freed = 0
        for ts, cost in self.entries:
            freed += cost
            if self.total - freed + need <= limit:
                return max(0.001, ts + window_s - now)
        return window_s


class MemoryStore:
    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._teams: dict[str, Team] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._periods: dict[tuple[str, str], _Period] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._down: dict[str, tuple[float, str, str]] = {}  # backend -> (until, replica, reason)
        self._drained: dict[str, tuple[str, str, float]] = {}  # backend -> (by, reason, since)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # ---- teams -------------------------------------------------------------------------

    async def create_team(self, team: Team) -> bool:
        if team.name in self._teams:
            return False
        self._teams[team.name] = Team.from_dict(team.to_dict())
        return True

    async def update_team(self, team: Team) -> bool:
        if team.name not in self._teams:
            return False
        self._teams[team.name] = Team.from_dict(team.to_dict())
        return True

    async def get_team(self, name: str) -> Team | None:
        t = self._teams.get(name)
        return Team.from_dict(t.to_dict()) if t else None

    async def list_teams(self) -> list[Team]:
        return [Team.from_dict(t.to_dict()) for _, t in sorted(self._teams.items())]

    async def has_teams(self) -> bool:
        return bool(self._teams)

    async def delete_team(self, name: str) -> list[str]:
        if self._teams.pop(name, None) is None:
            return []
        ids = [k for k, rec in self._keys.items() if rec.team == name]
        for k in ids:
            del self._keys[k]
        for table in (self._periods, self._windows):
            for key in [k for k in table if k[0] == name]:
                del table[key]
        return ids

    # ---- keys --------------------------------------------------------------------------

    async def put_key(self, key: KeyRecord) -> None:
        self._keys[key.key_id] = KeyRecord.from_dict(key.to_dict())

    async def get_key(self, key_id: str) -> KeyRecord | None:
        k = self._keys.get(key_id)
        return KeyRecord.from_dict(k.to_dict()) if k else None

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        return [KeyRecord.from_dict(k.to_dict()) for k in
                sorted(self._keys.values(), key=lambda k: (k.team, k.created_at, k.key_id))
                if team is None or k.team == team]

    # ---- budgets -----------------------------------------------------------------------

    def _period(self, team: str, period: str, keep_s: int = 0) -> _Period:
        now = self._clock()
        p = self._periods.get((team, period))
        if p is None or (p.expires_at is not None and p.expires_at <= now):
            if len(self._periods) > 64 + 8 * len(self._teams):
                self._sweep(now)
            p = self._periods[(team, period)] = _Period()
        if keep_s > 0:
            p.expires_at = now + keep_s
        for rid, (amount, exp) in list(p.holds.items()):
            if exp <= now:  # a replica died holding it: release, remember for its settle
                del p.holds[rid]
                p.reserved -= amount
                p.expired.add(rid)
        return p

    def _sweep(self, now: float) -> None:
        for key in [k for k, v in self._periods.items()
                    if v.expires_at is not None and v.expires_at <= now]:
            del self._periods[key]

    async def reserve(self, team: str, period: str, res_id: str, amount: int, ttl_s: float,
                      keep_s: int) -> Reserved:
        t = self._teams.get(team)
        if t is None:
            return Reserved(False, 0, 0, -1, exists=False)
        p = self._period(team, period, keep_s)
        budget = t.budget_nano
        if res_id in p.holds or res_id in p.expired:  # held already (as Redis: a retry)
            return Reserved(True, p.spent, p.reserved, budget)
        if budget >= 0 and p.spent + p.reserved + amount > budget:
            return Reserved(False, p.spent, p.reserved, budget)
        p.holds[res_id] = (amount, self._clock() + ttl_s)
        p.reserved += amount
        return Reserved(True, p.spent, p.reserved, budget)

    async def reserve_within(self, team: str, limits: Sequence[Limit], period: str,
                             res_id: str, amount: int, ttl_s: float, keep_s: int) -> Reserved:
        t = self._teams.get(team)
        if t is None:
            return Reserved(False, 0, 0, -1, exists=False)
        p = self._period(team, period, keep_s)
        if res_id in p.holds or res_id in p.expired:  # a retry: held, and hit, already
            return Reserved(True, p.spent, p.reserved, t.budget_nano)
        now = self._clock()
        windows, wait = self._wait(team, limits, now)
        if wait > 0:
            return Reserved(False, 0, 0, t.budget_nano, wait_s=wait)
        r = await self.reserve(team, period, res_id, amount, ttl_s, keep_s)
        if r.ok:
            self._take(windows, limits, now)
        return r

    def _add_spend(self, team: str, p: _Period, actual: int) -> Settled:
        p.spent += actual
        t = self._teams.get(team)
        soft = t.soft_nano if t else -1
        alert = soft >= 0 and p.spent >= soft and not p.alerted
        if alert:
            p.alerted = True
        return Settled(True, p.spent, alert)

    async def settle(self, team: str, period: str, res_id: str, actual: int) -> Settled:
        p = self._period(team, period)
        hold = p.holds.pop(res_id, None)
        if hold is not None:
            p.reserved -= hold[0]
        elif res_id in p.expired:
            p.expired.discard(res_id)
        else:
            return Settled(False, p.spent, False)
        return self._add_spend(team, p, actual)

    async def settle_adding(self, team: str, period: str, res_id: str, actual: int,
                            limits: Sequence[Limit]) -> Settled:
        settled = await self.settle(team, period, res_id, actual)
        if settled.applied:
            await self.add(team, limits)
        return settled

    async def charge(self, team: str, period: str, charge_id: str, amount: int,
                     keep_s: int) -> Settled:
        p = self._period(team, period, keep_s)
        if charge_id in p.charged:
            return Settled(False, p.spent, False)
        p.charged.add(charge_id)
        return self._add_spend(team, p, amount)

    async def spend(self, team: str, period: str) -> Spend:
        p = self._period(team, period)
        return Spend(p.spent, p.reserved, p.alerted)

    # ---- rate limits -------------------------------------------------------------------

    def _window(self, team: str, lim: Limit, now: float) -> _Window:
        w = self._windows.get((team, lim.name))
        if w is None:
            w = self._windows[(team, lim.name)] = _Window()
        w.prune(now - lim.window_s)
        return w

    def _wait(self, team: str, limits: Sequence[Limit],
              now: float) -> tuple[list[_Window], float]:
        """The limits' windows, and the seconds until every limit fits (0.0: now)."""
        windows = [self._window(team, lim, now) for lim in limits]
        wait = 0.0
        for w, lim in zip(windows, limits, strict=True):
            if lim.cost > 0 and w.total + lim.cost > lim.limit:
                wait = max(wait, w.wait_s(lim.cost, lim.limit, now, lim.window_s))
        return windows, wait

    @staticmethod
    def _take(windows: list[_Window], limits: Sequence[Limit], now: float) -> None:
        for w, lim in zip(windows, limits, strict=True):
            w.entries.append((now, lim.cost))
            w.total += lim.cost

    async def hit(self, team: str, limits: Sequence[Limit]) -> float:
        now = self._clock()
        windows, wait = self._wait(team, limits, now)
        if wait > 0:
            return wait
        self._take(windows, limits, now)
        return 0.0

    async def add(self, team: str, limits: Sequence[Limit]) -> None:
        now = self._clock()
        for lim in limits:
            w = self._window(team, lim, now)
            w.entries.append((now, lim.cost))
            w.total += lim.cost

    # ---- backend health ----------------------------------------------------------------

    async def mark_backend_down(self, backend: str, replica: str, until: float,
                                reason: str) -> None:
        now = self._clock()
        cur = self._down.get(backend)
        if until <= now or (cur is not None and cur[0] > now and cur[0] >= until):
            return
        self._down[backend] = (until, replica, reason)

    async def clear_backend_down(self, backend: str) -> None:
        self._down.pop(backend, None)

    async def backends_down(self, names: Sequence[str]) -> dict[str, tuple[float, str, str]]:
        now = self._clock()
        for name in [n for n, m in self._down.items() if m[0] <= now]:
            del self._down[name]
        return {n: self._down[n] for n in names if n in self._down}

    async def set_backend_drained(self, backend: str, drained: bool, by: str,
                                  reason: str) -> None:
        if drained:
            self._drained[backend] = (by, reason, self._clock())
        else:
            self._drained.pop(backend, None)

    async def backends_drained(self, names: Sequence[str]) -> dict[str, tuple[str, str, float]]:
        return {n: self._drained[n] for n in names if n in self._drained}


@hookimpl(trylast=True)
def switchyard_register_state_stores(register: RegisterStateStore) -> None:
    register("memory", lambda config: MemoryStore())
