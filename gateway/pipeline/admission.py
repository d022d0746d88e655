"""The seam where budgets and rate limits plug into the pipeline.

``Admission.admit`` runs before routing (rate limits); ``reserve`` before each backend call
(the worst-case cost, atomically); ``settle`` after it (the real cost, releasing the rest).
The embedded default, ``OpenAdmission``, admits everything. ``BudgetAdmission`` enforces
the team of the request's key (``ctx.identity``, set by the HTTP layer).

When the state store is unreachable: with ``failure_mode: closed`` a request gets 503;
with ``open`` it is enforced against a local in-process store (seeded with the last spend
seen) and its spend is charged to the shared store when it returns. Settlements that could
not reach the store are queued and retried (they are idempotent), so no request is billed
twice or not at all; the ledger keeps every record either way. A settlement the store
refuses for another reason (a script error, say) is logged and retried the same way: a
request the backend answered is answered, never turned into a 500 after the fact. Such an
error at admission or reservation is a 503 ``state_store_error``, not a 500.

Settlement charges the team at most what was held: the hold is what was checked against
the budget, so spend never exceeds a budget whatever a backend reports. A cost above the
hold (a backend billing more than one token per byte, an image above the allowance) is
logged, counted in ``switchyard_budget_overrun_usd_total{backend}``, and kept whole in the
ledger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.auth import Identity
from gateway.budgets import (
    completion_bound,
    period_id,
    period_ttl_s,
    to_nano,
    to_nano_ceil,
    to_usd,
    worst_case_usd,
)
from gateway.config import BudgetsConfig
from gateway.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    InvalidRequest,
    RateLimited,
    StateStoreFailed,
    SwitchyardError,
    why,
)
from gateway.interfaces import Backend, RequestFeatures, Reservation
from gateway.metrics import Metrics
from gateway.pipeline.context import RequestContext, TokensCounted
from gateway.state import Limit, Reserved, Settled, StateStore, StateUnavailable, Team

log = logging.getLogger("switchyard.budgets")

AlertFn = Callable[[str, float, float, float], None]
T = TypeVar("T")


class Started(Coroutine[Any, Any, T]):
    """``coro``, run at once up to its first wait (what it writes to a socket before then
    is written when this returns); the rest runs when this is awaited or made a task.

    Python 3.11 has no eager tasks: a task's first step waits for the loop's next turn,
    so a settlement made a task is sent only after whatever the caller does next. Started
    first, its round trip to the state store overlaps that work. An exception of the first
    step is raised where this is awaited, like the coroutine's own."""

    __slots__ = ("_coro", "_first", "_state")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._first: Any = None
        try:
            self._first = coro.send(None)
            self._state = 0  # suspended: its first yield still to hand to the task
        except StopIteration as e:  # done without waiting
            self._first, self._state = e.value, 1
        except BaseException as e:  # noqa: BLE001 - raised where it is awaited
            self._first, self._state = e, 2

    def send(self, value: Any) -> Any:
        state, self._state = self._state, 3
        if state == 0:
            return self._first
        if state == 1:
            raise StopIteration(self._first)
        if state == 2:
            raise self._first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self._state in (1, 2):  # already finished: nothing to throw into
            self._state = 3
            raise typ if val is None else val
        self._state = 3
        return self._coro.throw(typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self  # send/throw/close: the protocol of a generator

    def __iter__(self) -> Started[T]:
        return self

    def __next__(self) -> Any:
        return self.send(None)


class Admission(Protocol):
    async def admit(self, ctx: RequestContext, features: RequestFeatures, *,
                    defer: bool = False) -> None:
        """Check the rate limits; with ``defer``, leave them to the first ``reserve``
        (one round trip to the state store for both) when nothing between them can answer
        the request or spend on it."""
        ...

    async def reserve(
        self, ctx: RequestContext, backend: Backend, features: RequestFeatures
    ) -> Reservation | None: ...

    async def settle(self, ctx: RequestContext, reservation: Reservation | None,
                     cost_usd: float, tokens: int) -> None: ...

    async def charge(self, ctx: RequestContext, cost_usd: float) -> None:
        """Add spend that no backend call reserved (a cache hit's ``hit_cost_fraction``)."""
        ...


class OpenAdmission:
    """No teams configured: everything is admitted, nothing is reserved."""

    async def admit(self, ctx: RequestContext, features: RequestFeatures, *,
                    defer: bool = False) -> None:
        return None

    async def reserve(self, ctx: RequestContext, backend: Backend,
                      features: RequestFeatures) -> Reservation | None:
        return None

    async def settle(self, ctx: RequestContext, reservation: Reservation | None,
                     cost_usd: float, tokens: int) -> None:
        return None

    async def charge(self, ctx: RequestContext, cost_usd: float) -> None:
        return None


@dataclass(slots=True)
class Hold:
    """A budget hold on one team's period (the ``Reservation`` of ``BudgetAdmission``)."""

    team: Team
    period: str
    res_id: str
    amount: int  # nano-dollars: the most settlement charges
    store: StateStore
    local: bool  # held by the local fallback during an outage (fail open)
    backend: str = ""
    settled: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    """A settlement the shared store has not acknowledged yet."""

    op: str  # "settle" (a shared-store hold) | "charge" (spend made while failing open)
    team: str
    period: str
    op_id: str
    amount: int
    keep_s: int
    tries: int = 0  # refusals other than an outage; dropped (logged) after _MAX_TRIES


_MAX_TRIES = 20


def _limits(ident: Identity, prompt_tokens: int) -> list[Limit]:
    t, k = ident.team, ident.key
    out = []
    if t.rpm:
        out.append(Limit("team:rpm", t.rpm, 1))
    if k.rpm:
        out.append(Limit(f"key:{k.key_id}:rpm", k.rpm, 1))
    if t.tpm:
        out.append(Limit("team:tpm", t.tpm, prompt_tokens))
    if k.tpm:
        out.append(Limit(f"key:{k.key_id}:tpm", k.tpm, prompt_tokens))
    return out


# nano-dollars (about $1.1M): Redis keeps amounts exact up to 2**63 - 1, so 8,192 such holds
# in flight at once still sum without overflowing HINCRBY
_MAX_HOLD = 2**50


def _worst_case(backend: Backend, features: RequestFeatures,
                default_max_tokens: int) -> tuple[float, str]:
    """The most the call can cost on ``backend`` (a true upper bound: the prompt counted at
    one token per byte where the backend's own count may be lower; per-hour pricing for the
    whole ``timeouts.total_s``), and what it is made of."""
    pin, pout = backend.price_per_token()
    window = backend.config.context_window
    prompt = max(features.prompt_tokens, features.prompt_tokens_max or 0)
    if window:
        prompt = min(prompt, window)
    usd = worst_case_usd(pin, pout, prompt, features.max_tokens, default_max_tokens,
                         context_window=window, choices=features.choices)
    per_hour, total_s = backend.pricing().per_hour, backend.config.timeouts.total_s
    busy = f" and {total_s:g} s at ${per_hour:g}/hour" if per_hour else ""
    usd += per_hour * total_s / 3600.0
    if features.choices <= 0:
        return usd, f"up to {prompt} prompt tokens{busy} at backend '{backend.name}''s prices"
    out = completion_bound(features.max_tokens, window, default_max_tokens)
    if features.max_tokens:
        why = f"max_tokens={features.max_tokens}"
    elif window:
        why = f"no max_tokens: up to the backend's {window}-token context window"
    else:
        why = f"no max_tokens: budgets.default_max_tokens={default_max_tokens}"
    n = f"{features.choices} x " if features.choices > 1 else ""
    return usd, (f"up to {prompt} prompt tokens and {n}{out} completion tokens ({why}){busy} "
                 f"at backend '{backend.name}''s prices")


def _refuse_if_never_fits(team: Team, features: RequestFeatures, amount: int,
                          made_of: str) -> None:
    """400 for a request that costs more than the team's whole budget at worst: waiting
    cannot help, a smaller request can (a huge max_tokens is the usual cause)."""
    budget = team.budget_nano
    if budget <= 0 or amount <= budget:
        return
    ask = "lower max_tokens" if features.choices > 0 else "send less input"
    param = {"chat": "max_tokens", "completions": "max_tokens", "embeddings": "input"}
    raise InvalidRequest(
        f"This request may cost up to ${to_usd(amount):.6f} ({made_of}), more than team "
        f"'{team.name}''s whole {team.period} budget of ${to_usd(budget):.6f}; {ask}.",
        param=param[features.endpoint], code="request_exceeds_budget")


def _exceeded(team: Team, r: Reserved, amount: int, made_of: str) -> BudgetExceeded:
    held = f"${to_usd(r.reserved):.6f} held by requests in flight"
    cost = f"this request may cost up to ${to_usd(amount):.6f} ({made_of})"
    if r.spent >= r.budget:
        return BudgetExceeded(
            f"Team '{team.name}' has used its {team.period} budget of ${to_usd(r.budget):.6f} "
            f"(spent ${to_usd(r.spent):.6f}, {held}); {cost}.")
    left = r.budget - r.spent - r.reserved
    return BudgetExceeded(
        f"Team '{team.name}' has ${to_usd(max(0, left)):.6f} left of its {team.period} budget "
        f"of ${to_usd(r.budget):.6f} (spent ${to_usd(r.spent):.6f}, {held}), and {cost}: "
        f"lower max_tokens, or retry when requests in flight finish.")


def _taken(ctx: RequestContext, team: str, limits: list[Limit], wait: float, local: bool,
           prompt_tokens: int) -> None:
    """429 when the limits did not fit; else note the token windows that counted the
    prompt (the rest of the request's tokens are added when it settles)."""
    if wait > 0:
        raise RateLimited(f"Rate limit reached for team '{team}' ({_describe(limits)}); "
                          f"retry in {wait:.1f} s.", retry_after=wait)
    tpm = [lim for lim in limits if lim.name.endswith(":tpm")]
    if tpm:
        ctx.tokens_counted = TokensCounted(tpm, prompt_tokens, local)


def _tokens_fix(ctx: RequestContext, tokens: int) -> tuple[list[Limit], bool] | None:
    """The correction the token windows that counted the prompt at admission need now that
    the request used ``tokens`` (taken from ``ctx``, once), and whether they are the local
    fallback's; None when there is nothing to add."""
    counted = ctx.tokens_counted
    if counted is None or tokens <= 0:
        return None
    ctx.tokens_counted = None
    delta = tokens - counted.prompt_tokens
    if delta == 0:
        return None
    return [Limit(lim.name, lim.limit, delta, lim.window_s) for lim in counted.limits], \
        counted.local


def _describe(limits: list[Limit]) -> str:
    unit = {"rpm": "requests", "tpm": "tokens"}
    return ", ".join(f"{lim.limit} {unit[lim.name[-3:]]}/min per "
                     f"{'team' if lim.name.startswith('team:') else 'key'}" for lim in limits)


class BudgetAdmission:
    def __init__(self, store: StateStore, config: BudgetsConfig, *, fail_open: bool = False,
                 fallback: Callable[[], StateStore] | None = None, alert: AlertFn | None = None,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        if fail_open and fallback is None:
            raise ValueError("failing open needs a local fallback store")
        self.store = store
        self.config = config
        self.fail_open = fail_open
        self._make_fallback = fallback
        self._fallback: StateStore | None = None
        self._alert = alert
        self._clock = clock
        self._metrics = metrics
        self._down_until = 0.0
        self._failed_at = 0.0  # monotonic time of the last outage error
        self._outage = False
        self._known: dict[tuple[str, str], int] = {}  # last spend + holds seen, per period
        self._holds = 0  # holds made and not settled yet (a request cancelled between its
        # hold and its call leaves one: this only decides when a settlement is sent eagerly)
        self._pending: list[_Pending] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._reconcile_loop())

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await self.reconcile()
        if self._pending:
            usd = to_usd(sum(p.amount for p in self._pending))
            log.error("shutting down with %d settlements (%.6f USD) the state store never "
                      "acknowledged; the ledger holds their records", len(self._pending), usd)

    # ---- the store, or what to do without it -------------------------------------------

    def _down(self) -> bool:
        return self._down_until > time.monotonic()

    def _mark_down(self, e: StateUnavailable) -> None:
        self._failed_at = time.monotonic()
        if not self._outage:
            self._outage = True
            log.error("state store unreachable (%s); failing %s", why(e.__cause__ or e),
                      "open (local enforcement)" if self.fail_open else "closed (503)")
        self._down_until = self._failed_at + self.config.reconcile_interval_s

    def _mark_up(self, started: float) -> None:
        """A call that began at ``started`` succeeded: the store is back if it began after
        the last failure (one begun before proves nothing: it may have beaten the outage)."""
        if self._outage and started > self._failed_at:
            self._outage = False
            log.warning("state store reachable again; %d settlements to reconcile",
                        len(self._pending))

    def _store_error(self, team: str, e: Exception) -> StateStoreFailed:
        """The store answered with an error: this request cannot be checked, so it is
        refused, like in an outage; logged once, with the store's message (no key)."""
        log.error("the state store failed on a request of team %s (%s); answered 503",
                  team, why(e))
        return StateStoreFailed("its budget and rate limits")

    def _unavailable(self) -> StateUnavailable:
        return StateUnavailable(consequence="budgets and rate limits cannot be enforced; "
                                "requests are refused until it returns")

    def _local(self) -> StateStore:
        if self._fallback is None:
            assert self._make_fallback is not None
            self._fallback = self._make_fallback()
        return self._fallback

    async def _shared(self, team: str,
                      fn: Callable[[StateStore], Awaitable[Any]]) -> tuple[Any, bool]:
        """Run ``fn`` on the shared store; on an outage, on the local one (fail open) or
        raise 503 (fail closed); on another error of the store, 503. Returns (result, ran
        locally)."""
        if not self._down():
            started = time.monotonic()
            try:
                result = await fn(self.store)
            except StateUnavailable as e:
                self._mark_down(e)
            except SwitchyardError:
                raise
            except Exception as e:  # noqa: BLE001 - a 503 that says so, never a 500
                raise self._store_error(team, e) from None
            else:
                self._mark_up(started)
                return result, False
        if not self.fail_open:
            raise self._unavailable()
        return await fn(self._local()), True

    # ---- admission ---------------------------------------------------------------------

    async def admit(self, ctx: RequestContext, features: RequestFeatures, *,
                    defer: bool = False) -> None:
        ident = ctx.identity
        if ident is None:
            return
        limits = _limits(ident, features.prompt_tokens)
        if not limits:
            return
        if defer:
            ctx.limits_pending = limits
            return
        team = ident.team.name
        wait, local = await self._shared(team, lambda s: s.hit(team, limits))
        _taken(ctx, team, limits, wait, local, features.prompt_tokens)

    async def reserve(self, ctx: RequestContext, backend: Backend,
                      features: RequestFeatures) -> Hold | None:
        ident = ctx.identity
        if ident is None:
            return None
        team = ident.team
        hold_usd, made_of = _worst_case(backend, features, self.config.default_max_tokens)
        amount = to_nano_ceil(hold_usd)
        _refuse_if_never_fits(team, features, amount, made_of)
        if team.budget_nano < 0:  # nothing to enforce: the hold only shows in the spend report
            amount = min(amount, _MAX_HOLD)
        now = self._clock()
        period = period_id(team.period, now)
        keep = period_ttl_s(team.period, now)
        res_id = secrets.token_hex(12)
        ttl = self.config.reservation_ttl_s
        limits, ctx.limits_pending = ctx.limits_pending, None  # admit's, taken here at once

        async def hold(s: StateStore) -> Reserved:
            if s is not self.store:
                await self._prepare_local(s, team, period, keep)
            try:
                if limits:
                    return await s.reserve_within(team.name, limits, period, res_id, amount,
                                                  ttl, keep)
                return await s.reserve(team.name, period, res_id, amount, ttl, keep)
            except StateUnavailable:  # the hold may be made, its reply lost: release it
                if s is self.store:
                    self._queue(_Pending("settle", team.name, period, res_id, 0, keep))
                raise

        r, local = await self._shared(team.name, hold)
        if not r.exists:
            raise AuthenticationFailed(f"The team '{team.name}' no longer exists.")
        if limits and r.wait_s > 0:
            _taken(ctx, team.name, limits, r.wait_s, local, features.prompt_tokens)
        if not local:
            self._remember(team.name, period, r.spent + r.reserved)
        if not r.ok:
            raise _exceeded(team, r, amount, made_of)
        if limits:
            _taken(ctx, team.name, limits, 0.0, local, features.prompt_tokens)
        store = self._local() if local else self.store
        self._holds += 1
        return Hold(team, period, res_id, amount, store, local, backend.name)

    async def _prepare_local(self, s: StateStore, team: Team, period: str, keep: int) -> None:
        """The local fallback knows the team and starts from the last spend seen."""
        if not await s.update_team(team):
            await s.create_team(team)
        known = self._known.get((team.name, period), 0)
        if known:
            await s.charge(team.name, period, "seed", known, keep)

    def _remember(self, team: str, period: str, value: int) -> None:
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[(team, period)] = value

    # ---- settlement --------------------------------------------------------------------

    async def settle(self, ctx: RequestContext, reservation: Reservation | None,
                     cost_usd: float, tokens: int) -> None:
        """Runs in its own task, shielded: a client that disconnects (which cancels the
        stream) cannot cancel the settlement of what was produced."""
        if not isinstance(reservation, Hold):
            return
        # The only hold in flight (one request at a time): started at once, so the settlement
        # is on its way to the store while the caller does its accounting. With others in
        # flight, as usual on the loop's next turn: sent eagerly one by one, concurrent
        # settlements reach Redis in more, smaller writes (32 connections: -8 % requests/s).
        coro = self._settle(ctx, reservation, cost_usd, tokens)
        task = asyncio.ensure_future(Started(coro) if self._holds <= 1 else coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the backend answered: the client gets it
            log.error("settling a request of team %s failed (%s); its record is in the "
                      "ledger", reservation.team.name, why(e))

    async def _settle(self, ctx: RequestContext, r: Hold, cost_usd: float,
                      tokens: int) -> None:
        if r.settled:
            return
        r.settled = True
        self._holds -= 1
        actual = self._capped(r, to_nano(cost_usd))
        keep = period_ttl_s(r.team.period, self._clock())
        if r.local:
            try:
                await r.store.settle(r.team.name, r.period, r.res_id, actual)
            except Exception as e:  # noqa: BLE001 - the charge below still bills it
                log.error("releasing a local hold of team %s failed (%s)", r.team.name, why(e))
            # the shared store decides on the alert when the charge lands
            self._queue(_Pending("charge", r.team.name, r.period, r.res_id, actual, keep))
            await self._correct_tokens(ctx, r.team.name, tokens)
            return
        fix = _tokens_fix(ctx, tokens)
        fused = fix is not None and not fix[1]  # shared windows: corrected with the spend
        res = await self._settle_shared(r, actual, keep, fix[0] if fix and fused else [])
        if res is not None:
            self._after(r.team, r.period, res)
        if fix is not None and not fused:
            await self._add_tokens(r.team.name, *fix)

    async def charge(self, ctx: RequestContext, cost_usd: float) -> None:
        """Spend without a hold (a cache hit that costs a fraction of its call): charged
        once (by a fresh id), queued for the shared store when it is away; never raises,
        since the client's answer is already made."""
        ident = ctx.identity
        amount = to_nano(cost_usd)
        if ident is None or amount <= 0:
            return
        team, now = ident.team, self._clock()
        period, keep = period_id(team.period, now), period_ttl_s(team.period, now)
        p = _Pending("charge", team.name, period, secrets.token_hex(12), amount, keep)
        try:
            res, local = await self._shared(team.name, lambda s: s.charge(
                team.name, period, p.op_id, amount, keep))
        except Exception as e:  # noqa: BLE001 - queued and retried, like a settlement
            log.error("charging a cache hit of team %s failed (%s); queued", team.name, why(e))
            self._queue(p)
            return
        if local:
            self._queue(p)
        else:
            self._after(team, period, res)

    def _capped(self, r: Hold, actual: int) -> int:
        """What settlement charges: the reported cost, at most the hold (what was checked
        against the budget). The rest is logged and counted; the ledger keeps the whole."""
        if actual <= r.amount:
            return actual
        over = actual - r.amount
        log.warning("backend %s reported $%.9f for a request of team %s that held $%.9f: "
                    "the hold is charged, $%.9f over it is not", r.backend, to_usd(actual),
                    r.team.name, to_usd(r.amount), to_usd(over))
        if self._metrics is not None:
            self._metrics.budget_overrun.labels(r.backend).inc(to_usd(over))
        return r.amount

    async def _settle_shared(self, r: Hold, actual: int, keep: int,
                             tokens: list[Limit]) -> Settled | None:
        """Settle on the shared store, adding ``tokens`` to its windows in the same round
        trip; a settlement it does not acknowledge is queued for retry (the windows are
        left a few tokens short)."""
        try:
            if tokens:
                return await self.store.settle_adding(r.team.name, r.period, r.res_id, actual,
                                                      tokens)
            return await self.store.settle(r.team.name, r.period, r.res_id, actual)
        except StateUnavailable as e:
            self._mark_down(e)
            if tokens:
                log.warning("token window of team %s not corrected: state store unreachable",
                            r.team.name)
        except Exception as e:  # noqa: BLE001 - never a 500 for an answered request
            log.error("settling a request of team %s failed (%s); queued to retry",
                      r.team.name, why(e))
        self._queue(_Pending("settle", r.team.name, r.period, r.res_id, actual, keep))
        return None

    async def _correct_tokens(self, ctx: RequestContext, team: str, tokens: int) -> None:
        """Tokens-per-minute windows counted the prompt at admission; add the rest."""
        fix = _tokens_fix(ctx, tokens)
        if fix is not None:
            await self._add_tokens(team, *fix)

    async def _add_tokens(self, team: str, fixed: list[Limit], local: bool) -> None:
        try:
            await (self._local() if local else self.store).add(team, fixed)
        except StateUnavailable:
            log.warning("token window of team %s not corrected: state store unreachable", team)
        except Exception as e:  # noqa: BLE001 - a window off by a few tokens, not a 500
            log.error("token window of team %s not corrected (%s)", team, why(e))

    def _queue(self, p: _Pending) -> None:
        self._pending.append(p)

    def _after(self, team: Team, period: str, res: Settled) -> None:
        self._remember(team.name, period, res.spent)
        if res.alert and team.budget_usd:
            spent = to_usd(res.spent)
            pct = 100.0 * spent / team.budget_usd
            log.warning("team %s crossed its soft budget limit: spent $%.6f of $%.6f (%.1f%%)",
                        team.name, spent, team.budget_usd, pct)
            if self._alert is not None:
                self._alert(team.name, spent, team.budget_usd, pct)

    # ---- reconciliation ----------------------------------------------------------------

    async def reconcile(self) -> int:
        """Apply queued settlements to the shared store; returns how many are left. Each is
        tried once per call; one the store refuses (not an outage) goes to the back of the
        queue, so it never holds up the others."""
        for _ in range(len(self._pending)):
            if not self._pending:
                break
            p = self._pending.pop(0)
            try:
                if p.op == "settle":
                    res = await self.store.settle(p.team, p.period, p.op_id, p.amount)
                else:
                    res = await self.store.charge(p.team, p.period, p.op_id, p.amount, p.keep_s)
            except StateUnavailable as e:
                self._pending.insert(0, p)
                self._mark_down(e)
                break
            except Exception as e:  # noqa: BLE001 - retried later, or given up on, logged
                self._refused(p, e)
                continue
            if res.alert:
                try:
                    team = await self.store.get_team(p.team)
                except StateUnavailable:
                    team = None
                if team is not None:
                    self._after(team, p.period, res)
        return len(self._pending)

    def _refused(self, p: _Pending, e: Exception) -> None:
        if p.tries + 1 >= _MAX_TRIES:
            log.error("giving up on a %s of %.9f USD for team %s after %d tries (%s); the "
                      "ledger holds its record", p.op, to_usd(p.amount), p.team, _MAX_TRIES,
                      why(e))
            return
        log.warning("a queued %s for team %s failed (%s); retrying", p.op, p.team, why(e))
        self._pending.append(dataclasses.replace(p, tries=p.tries + 1))

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            try:
                if self._pending:
                    left = await self.reconcile()
                    if not left:
                        log.info("state store back; queued settlements reconciled")
                if self._fallback is not None and not self._pending:
                    await self.store.ping()
                    self._fallback = None  # back to the shared store; start fresh next time
                    self._down_until = 0.0
            except StateUnavailable as e:
                self._mark_down(e)
            except Exception:  # never let the loop die
                log.exception("reconciliation failed")
