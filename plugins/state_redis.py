"""``state: {kind: redis, url: redis://127.0.0.1:6379/0}``: state shared by gateway replicas.

Reservation, settlement, charging and rate limiting are each one Lua script, so N replicas
behave like one: no read-then-write race between them. A request makes two round trips:
its rate limits and its reservation are one script (``reserve_within``), its settlement and
its tokens-per-minute correction another (``settle_adding``). The settlement's reply is
awaited before the response goes out: a client that reads its team's spend next, through
any replica, reads it after Redis applied the settlement (a settlement written and not
awaited could still sit in a socket buffer when another replica's read arrives). Commands go
through ``plugins.redis_resp``, a small client on hiredis' packer and parser (redis-py cost
about 460 Python calls a command; this store and that client together about 30). Scripts
read the clock with Redis' ``TIME``, so replicas with skewed clocks still share one window.
Every key of a team carries the hash tag ``{team}``, so a team's scripts touch a single
slot and Redis Cluster accepts them. Money is in integer nano-dollars (``HINCRBY``: no float
drift).

Numbers never pass from Lua arithmetic back into a Redis command: Redis formats a Lua number
with ``%.17g``, so a negated zero reaches ``HINCRBY`` as ``-0`` and 10**17 as ``1e+17``, and
both are refused ("value is not an integer"). Amounts stay the decimal strings Python sent:
negated as text (``neg``), compared exactly as (high, low) halves (``over``), and returned
as the strings Redis holds, so every amount up to 2**63 - 1 nano-dollars is exact.

Connections: at most ``connections`` (2), each carrying the commands of many requests at
once (see ``plugins.redis_resp``). A connection the server closed (Redis restarted) is
dropped as soon as the loop sees it close, before a command is sent on it: a stale
connection would fail a command, read as an outage. A connection that still fails
mid-command (reset rather than closed) is retried once on a fresh one, for idempotent
commands only: every read and write here, ``reserve`` (a hold is keyed by its id, so a
retried one is held once) and the settlement scripts; not ``hit``, ``add`` or the ``HSETNX``
that creates a team, which a script that ran but lost its reply would count twice.

Keys (``P`` is ``state.prefix``)::

    P:teams              set of team names
    P:key:<id>           a key record (JSON; the salted hash, never the secret)
    P{team}:team         hash: doc (JSON), budget, soft (nano-dollars, -1: none)
    P{team}:keys         set of the team's key ids
    P{team}:b:<period>   hash: spent, reserved, alerted, r:<id> (holds), c:<id> (charges)
    P{team}:bx:<period>  zset: reservation id -> expiry (ms)
    P{team}:rl:<name>    zset: sliding-window entries "<uid>:<cost>" scored by ms; :sum
                         (uid: the hold's id, "<id>+" for its settlement's tokens, else
                         the next number of P{team}:rl:seq)
    P{health}:down:<b>   "<until ms>|<replica>|<reason>": backend b is down; expires (PX) at until
    P{health}:drained    hash: backend -> {"by", "reason", "since"} (JSON); never expires

The health marks share one hash tag, so ``backends_down`` is one ``MGET`` even on a Cluster.
Their ``until`` is the marking replica's wall clock: replicas' clocks should agree to well
within a health-check interval (NTP does).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import (
    KeyRecord,
    Limit,
    RegisterStateStore,
    Reserved,
    Settled,
    Spend,
    StateUnavailable,
    Team,
    hookimpl,
)
from plugins.redis_resp import RespClient, Script

T = TypeVar("T")

_NOW = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

# Integer strings, handled as text (see the module docstring): ``neg`` negates one,
# ``over(budget, a, b, c)`` says whether a + b + c > budget, exactly: in plain arithmetic
# when each has at most 15 characters (below 10**15, so the sum stays below 2**53), else by
# adding 9-digit halves (each sum stays far below 2**53). ``int`` formats a small Lua
# integer for a command (string.format('%d') never writes "-0"). ``incr`` is HINCRBY that
# returns the new value as the string Redis holds (its reply reaches Lua as a double: exact
# below 2**53, else read back).
_NUM = """
local function neg(s)
  if string.sub(s, 1, 1) == '-' then return string.sub(s, 2) end
  if s == '0' then return s end
  return '-' .. s
end
local function halves(s)
  local sign = 1
  if string.sub(s, 1, 1) == '-' then sign, s = -1, string.sub(s, 2) end
  local n = #s
  if n <= 9 then return 0, sign * tonumber(s) end
  return sign * tonumber(string.sub(s, 1, n - 9)), sign * tonumber(string.sub(s, n - 8))
end
local function over(budget, a, b, c)
  b, c = b or '0', c or '0'
  if #budget < 16 and #a < 16 and #b < 16 and #c < 16 then
    return tonumber(a) + tonumber(b) + tonumber(c) > tonumber(budget)
  end
  local hi, lo = 0, 0
  for _, s in ipairs({a, b, c}) do
    local h, l = halves(s)
    hi, lo = hi + h, lo + l
  end
  hi, lo = hi + math.floor(lo / 1e9), lo % 1e9
  local bh, bl = halves(budget)
  bh, bl = bh + math.floor(bl / 1e9), bl % 1e9
  return hi > bh or (hi == bh and lo > bl)
end
local function int(x) return string.format('%d', x) end
local function incr(h, f, by)
  local n = redis.call('HINCRBY', h, f, by)
  if n > -2^53 and n < 2^53 then return int(n) end
  return redis.call('HGET', h, f)
end
"""

# Release holds whose replica never settled them (it died): tombstone 'x' so a late
# settle still bills the spend, exactly once. (The fragments below are joined into scripts
# after _NOW and _NUM, each once.)
_PURGE = """
local function purge(b, bx, now)
  local old = redis.call('ZRANGEBYSCORE', bx, '-inf', now)
  for _, id in ipairs(old) do
    local a = redis.call('HGET', b, 'r:' .. id)
    if a and a ~= 'x' then
      redis.call('HINCRBY', b, 'reserved', neg(a))
      redis.call('HSET', b, 'r:' .. id, 'x')
    end
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', bx, '-inf', now) end
end
"""

# ``look``: in one read, whether a hold was already made under ``id`` (a retry whose reply
# was lost), the spend and what holds keep (nil: the period's hash has no holds yet).
# ``try_hold``: hold ``amount`` under ``id`` if it fits the budget (expired holds purged).
# Expiries: the period's hash lives to the period's end (plus the keep), a fixed time, so it
# is set once, when the first hold makes the hash; the expiry zset is set whenever it may be
# new: when nothing is held (a hold in flight is in it, so it exists while reserved > 0).
_HOLD = """
local function look(b, id)
  local v = redis.call('HMGET', b, 'r:' .. id, 'spent', 'reserved')
  return v[1], v[2] or '0', v[3]
end
local function try_hold(b, bx, budget, spent, reserved, id, amount, ttl_ms, keep_s, now)
  local r0 = reserved or '0'
  if string.sub(budget, 1, 1) ~= '-' and over(budget, spent, r0, amount) then
    return {0, spent, r0, budget}
  end
  local now_reserved = incr(b, 'reserved', amount)
  redis.call('HSET', b, 'r:' .. id, amount)
  redis.call('ZADD', bx, int(now + tonumber(ttl_ms)), id)
  if tonumber(keep_s) > 0 then
    if not reserved then redis.call('EXPIRE', b, keep_s) end
    if r0 == '0' then redis.call('EXPIRE', bx, keep_s) end
  end
  return {1, spent, now_reserved, budget}
end
"""

_SETTLE = """
local function add_spend(team, b, amount)
  local spent = incr(b, 'spent', amount)
  local soft = redis.call('HGET', team, 'soft') or '-1'
  local alert = 0
  if string.sub(soft, 1, 1) ~= '-' and not over(spent, soft)
      and redis.call('HSETNX', b, 'alerted', '1') == 1 then
    alert = 1
  end
  return {1, spent, alert}
end
local function settle(team, b, bx, id, actual)
  local f = 'r:' .. id
  local a = redis.call('HGET', b, f)
  if not a then return {0, redis.call('HGET', b, 'spent') or '0', 0} end
  if a ~= 'x' then redis.call('HINCRBY', b, 'reserved', neg(a)) end
  redis.call('HDEL', b, f)
  redis.call('ZREM', bx, id)
  return add_spend(team, b, actual)
end
"""

# Sliding windows. The limits' keys start after KEYS[ko] (the sequence counter, then a
# (zset, sum) pair per limit), their arguments after ARGV[ao] (their count, then a
# (limit, cost, window_ms) triple per limit): a script that also holds a budget puts its
# own keys and arguments first. An entry is "<uid>:<cost>": ``uid`` is unique per entry,
# the hold's id where there is one (no counter to bump), else the next sequence number.
_WINDOW = """
local function entry_cost(m) return tonumber(string.match(m, ':(%-?%d+)$')) end
local function prune(z, s, cutoff)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  if #old == 0 then return tonumber(redis.call('GET', s) or '0') end
  local sub = 0
  for _, m in ipairs(old) do sub = sub + entry_cost(m) end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
  return redis.call('DECRBY', s, int(sub))
end
local function wait_ms(ko, ao, now)
  local wait = 0
  for i = 1, tonumber(ARGV[ao + 1]) do
    local z, s = KEYS[ko + 2*i], KEYS[ko + 2*i + 1]
    local limit, cost = tonumber(ARGV[ao + 3*i - 1]), tonumber(ARGV[ao + 3*i])
    local win = tonumber(ARGV[ao + 3*i + 1])
    local total = prune(z, s, now - win)
    if cost > 0 and total + cost > limit then
      local w = win
      if cost <= limit then
        local freed = 0
        local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
        for j = 1, #entries, 2 do
          freed = freed + entry_cost(entries[j])
          if total - freed + cost <= limit then
            w = math.max(1, tonumber(entries[j + 1]) + win - now)
            break
          end
        end
      end
      if w > wait then wait = w end
    end
  end
  return wait
end
local function prune_all(ko, ao, now)
  for i = 1, tonumber(ARGV[ao + 1]) do
    prune(KEYS[ko + 2*i], KEYS[ko + 2*i + 1], now - tonumber(ARGV[ao + 3*i + 1]))
  end
end
local function record(ko, ao, now, uid)
  local seq = uid
  if not seq then
    seq = redis.call('INCR', KEYS[ko + 1])
    redis.call('PEXPIRE', KEYS[ko + 1], 86400000)
  end
  for i = 1, tonumber(ARGV[ao + 1]) do
    local z, s = KEYS[ko + 2*i], KEYS[ko + 2*i + 1]
    local cost, win = ARGV[ao + 3*i], tonumber(ARGV[ao + 3*i + 1])
    redis.call('ZADD', z, now, seq .. ':' .. cost)
    redis.call('INCRBY', s, cost)
    redis.call('PEXPIRE', z, int(win + 1000))
    redis.call('PEXPIRE', s, int(win + 1000))
  end
end
"""

# KEYS: team, b, bx   ARGV: res_id, amount, ttl_ms, keep_s
# Idempotent: a hold already made under res_id (a retry whose first reply was lost) is
# reported as held, not held twice.
RESERVE = Script(_NOW + _NUM + _PURGE + _HOLD + """
local budget = redis.call('HGET', KEYS[1], 'budget')
if not budget then return {-1, 0, 0, -1} end
purge(KEYS[2], KEYS[3], now)
local mine, spent, reserved = look(KEYS[2], ARGV[1])
if mine then return {1, spent, reserved or '0', budget} end
return try_hold(KEYS[2], KEYS[3], budget, spent, reserved, ARGV[1], ARGV[2], ARGV[3],
                ARGV[4], now)
""")

# RESERVE and HIT in one step: KEYS: team, b, bx, then HIT's   ARGV: RESERVE's, then HIT's.
# Nothing is taken unless both fit: the windows first ({0, 0, 0, budget, wait_ms} when they
# do not), then the budget. Idempotent like RESERVE: a retry finds its hold (and its hit,
# made in the same script) and takes nothing more.
RESERVE_WITHIN = Script(_NOW + _NUM + _PURGE + _HOLD + _WINDOW + """
local budget = redis.call('HGET', KEYS[1], 'budget')
if not budget then return {-1, 0, 0, -1} end
purge(KEYS[2], KEYS[3], now)
local mine, spent, reserved = look(KEYS[2], ARGV[1])
if mine then return {1, spent, reserved or '0', budget} end
local wait = wait_ms(3, 4, now)
if wait > 0 then return {0, 0, 0, budget, wait} end
local r = try_hold(KEYS[2], KEYS[3], budget, spent, reserved, ARGV[1], ARGV[2], ARGV[3],
                   ARGV[4], now)
if r[1] == 1 then record(3, 4, now, ARGV[1]) end
return r
""")

# KEYS: team, b, bx   ARGV: res_id, actual
SETTLE = Script(_NUM + _SETTLE + """
return settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
""")

# SETTLE, then ADD's entries when the settlement applied (so a retry adds nothing twice);
# not ADD's pruning: every check of a window prunes it first. KEYS: SETTLE's, then ADD's
# ARGV: SETTLE's, then ADD's.
SETTLE_ADD = Script(_NOW + _NUM + _SETTLE + _WINDOW + """
local r = settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if r[1] == 1 then record(3, 2, now, ARGV[1] .. '+') end
return r
""")

# KEYS: team, b   ARGV: charge_id, amount, keep_s
CHARGE = Script(_NUM + _SETTLE + """
if redis.call('HSETNX', KEYS[2], 'c:' .. ARGV[1], '1') == 0 then
  return {0, redis.call('HGET', KEYS[2], 'spent') or '0', 0}
end
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return add_spend(KEYS[1], KEYS[2], ARGV[2])
""")

# KEYS: b, bx
SPEND = Script(_NOW + _NUM + _PURGE + """
purge(KEYS[1], KEYS[2], now)
local v = redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'alerted')
return {v[1] or '0', v[2] or '0', v[3] and 1 or 0}
""")

# KEYS: seq, then (zset, sum) per limit   ARGV: n, then (limit, cost, window_ms) per limit
# Returns 0 when taken, else the milliseconds to wait.
HIT = Script(_NOW + _NUM + _WINDOW + """
local wait = wait_ms(0, 0, now)
if wait > 0 then return wait end
record(0, 0, now)
return 0
""")

ADD = Script(_NOW + _NUM + _WINDOW + """
prune_all(0, 0, now)
record(0, 0, now)
return 0
""")

# KEYS: team   ARGV: doc, budget, soft
UPDATE_TEAM = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'budget', ARGV[2], 'soft', ARGV[3])
return 1
""")

# KEYS: mark   ARGV: until_ms, value, ttl_ms. A mark that lasts longer is kept.
MARK_DOWN = Script("""
local cur = redis.call('GET', KEYS[1])
if cur then
  local u = tonumber(string.match(cur, '^(%d+)|'))
  if u and u >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
""")

_GLOB = re.compile(r"([*?\[\]\\])")
_CONN_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def _unreachable(e: BaseException) -> StateUnavailable:
    """The outage a client may see: the error's class only (its text names the host, which
    ``__cause__`` keeps for the log)."""
    return StateUnavailable(f"Redis is unreachable ({type(e).__name__})")


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, prefix: str = "switchyard:", *, connect_timeout_s: float = 2.0,
                 timeout_s: float = 2.0, connections: int = 2) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("state.prefix must not contain '{' or '}' (Redis hash tags)")
        self.prefix = prefix
        # No retry inside the client: it would resend any command, a script that ran but
        # lost its reply too (see _do). A burst never waits for a free connection: every
        # connection carries any number of commands at once.
        self.r = RespClient(url, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s,
                            size=connections)

    # ---- key names ---------------------------------------------------------------------

    def _t(self, team: str, suffix: str) -> str:
        return f"{self.prefix}{{{team}}}:{suffix}"

    def _budget_keys(self, team: str, period: str) -> list[str]:
        return [self._t(team, "team"), self._t(team, f"b:{period}"), self._t(team, f"bx:{period}")]

    async def _do(self, call: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run ``call`` (one command, script or pipeline); StateUnavailable when Redis cannot
        be reached. A connection that fails mid-command (reset by a restarted server) is
        dropped by the client; an idempotent ``call`` is sent once more, on a fresh one.
        A timeout is not retried (a slow server gets no second load), nor a server still
        loading its data. uvloop refuses a write on a transport the server closed with a
        RuntimeError ("the handler is closed"): a connection failure like the others."""
        try:
            return await call()
        except RedisConnectionError as e:
            if (not retry or isinstance(e, BusyLoadingError)
                    or isinstance(e.__cause__, TimeoutError)):
                raise _unreachable(e) from e
        except _CONN_ERRORS as e:
            raise _unreachable(e) from e
        except RuntimeError as e:
            if not retry:
                raise _unreachable(e) from e
        try:
            return await call()
        except (*_CONN_ERRORS, RuntimeError) as e:
            raise _unreachable(e) from e

    async def _each(self, command: str, keys: Sequence[str], *args: str) -> list[Any]:
        """``command`` on each key, in one round trip (a pipeline, not a transaction: each
        key may be in another Cluster slot)."""
        return await self.r.execute_many([(command, k, *args) for k in keys])

    async def _members(self, key: str) -> list[str]:
        return [str(m) for m in await self._do(lambda: self.r.execute("SMEMBERS", key))]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> None:
        await self._do(lambda: self.r.execute("PING"))

    # ---- teams -------------------------------------------------------------------------

    async def create_team(self, team: Team) -> bool:
        key = self._t(team.name, "team")
        doc = orjson.dumps(team.to_dict()).decode()
        if not await self._do(lambda: self.r.execute("HSETNX", key, "doc", doc), retry=False):
            return False
        await self._do(lambda: self.r.execute("HSET", key, "budget", team.budget_nano,
                                              "soft", team.soft_nano))
        await self._do(lambda: self.r.execute("SADD", self.prefix + "teams", team.name))
        return True

    async def update_team(self, team: Team) -> bool:
        doc = orjson.dumps(team.to_dict()).decode()
        res = await self._do(lambda: self.r.evalsha(
            UPDATE_TEAM, [self._t(team.name, "team")], [doc, team.budget_nano, team.soft_nano]))
        return bool(res)

    async def get_team(self, name: str) -> Team | None:
        doc = await self._do(lambda: self.r.execute("HGET", self._t(name, "team"), "doc"))
        return Team.from_dict(orjson.loads(doc)) if doc else None

    async def list_teams(self) -> list[Team]:
        names = sorted(await self._members(self.prefix + "teams"))
        keys = [self._t(n, "team") for n in names]
        docs = await self._do(lambda: self._each("HGET", keys, "doc")) if names else []
        return [Team.from_dict(orjson.loads(d)) for d in docs if d]

    async def has_teams(self) -> bool:
        return bool(await self._do(lambda: self.r.execute("SCARD", self.prefix + "teams")))

    async def delete_team(self, name: str) -> list[str]:
        if not await self._do(lambda: self.r.execute("EXISTS", self._t(name, "team"))):
            return []
        ids = sorted(await self._members(self._t(name, "keys")))
        keys = [self.prefix + "key:" + key_id for key_id in ids]
        if keys:
            await self._do(lambda: self._each("DEL", keys))
        pattern = _GLOB.sub(r"\\\1", f"{self.prefix}{{{name}}}:") + "*"
        found = await self._do(lambda: self.r.scan(pattern))
        if found:
            await self._do(lambda: self._each("DEL", found))
        await self._do(lambda: self.r.execute("SREM", self.prefix + "teams", name))
        return ids

    # ---- keys --------------------------------------------------------------------------

    async def put_key(self, key: KeyRecord) -> None:
        doc = orjson.dumps(key.to_dict()).decode()
        await self._do(lambda: self.r.execute("SET", self.prefix + "key:" + key.key_id, doc))
        await self._do(lambda: self.r.execute("SADD", self._t(key.team, "keys"), key.key_id))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        doc = await self._do(lambda: self.r.execute("GET", self.prefix + "key:" + key_id))
        return KeyRecord.from_dict(orjson.loads(doc)) if doc else None

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        teams = [team] if team is not None else [t.name for t in await self.list_teams()]
        ids: list[str] = []
        for t in teams:
            ids.extend(await self._members(self._t(t, "keys")))
        names = [self.prefix + "key:" + key_id for key_id in ids]
        docs = await self._do(lambda: self._each("GET", names)) if ids else []
        keys = [KeyRecord.from_dict(orjson.loads(d)) for d in docs if d]
        return sorted(keys, key=lambda k: (k.team, k.created_at, k.key_id))

    # ---- budgets -----------------------------------------------------------------------

    async def reserve(self, team: str, period: str, res_id: str, amount: int, ttl_s: float,
                      keep_s: int) -> Reserved:
        return self._reserved(await self._do(lambda: self.r.evalsha(
            RESERVE, self._budget_keys(team, period),
            [res_id, amount, int(ttl_s * 1000), keep_s])))

    async def reserve_within(self, team: str, limits: Sequence[Limit], period: str,
                             res_id: str, amount: int, ttl_s: float, keep_s: int) -> Reserved:
        wkeys, wargs = self._window_args(team, limits)
        reply = await self._do(lambda: self.r.evalsha(
            RESERVE_WITHIN, self._budget_keys(team, period) + wkeys,
            [res_id, amount, int(ttl_s * 1000), keep_s, *wargs]))
        return self._reserved(reply)

    @staticmethod
    def _reserved(reply: list[Any]) -> Reserved:
        ok, spent, reserved, budget = reply[:4]
        if ok == -1:
            return Reserved(False, 0, 0, -1, exists=False)
        wait_s = int(reply[4]) / 1000.0 if len(reply) > 4 else 0.0
        return Reserved(ok == 1, int(spent), int(reserved), int(budget), wait_s=wait_s)

    async def settle(self, team: str, period: str, res_id: str, actual: int) -> Settled:
        applied, spent, alert = await self._do(lambda: self.r.evalsha(
            SETTLE, self._budget_keys(team, period), [res_id, actual]))
        return Settled(applied == 1, int(spent), alert == 1)

    async def settle_adding(self, team: str, period: str, res_id: str, actual: int,
                            limits: Sequence[Limit]) -> Settled:
        wkeys, wargs = self._window_args(team, limits)
        applied, spent, alert = await self._do(lambda: self.r.evalsha(
            SETTLE_ADD, self._budget_keys(team, period) + wkeys, [res_id, actual, *wargs]))
        return Settled(applied == 1, int(spent), alert == 1)

    async def charge(self, team: str, period: str, charge_id: str, amount: int,
                     keep_s: int) -> Settled:
        applied, spent, alert = await self._do(lambda: self.r.evalsha(
            CHARGE, self._budget_keys(team, period)[:2], [charge_id, amount, keep_s]))
        return Settled(applied == 1, int(spent), alert == 1)

    async def spend(self, team: str, period: str) -> Spend:
        spent, reserved, alerted = await self._do(lambda: self.r.evalsha(
            SPEND, self._budget_keys(team, period)[1:], []))
        return Spend(int(spent), int(reserved), alerted == 1)

    # ---- rate limits -------------------------------------------------------------------

    def _window_args(self, team: str, limits: Sequence[Limit]) -> tuple[list[str], list[int]]:
        keys = [self._t(team, "rl:seq")]
        args = [len(limits)]
        for lim in limits:
            z = self._t(team, "rl:" + lim.name)
            keys += [z, z + ":sum"]
            args += [lim.limit, lim.cost, int(lim.window_s * 1000)]
        return keys, args

    async def hit(self, team: str, limits: Sequence[Limit]) -> float:
        keys, args = self._window_args(team, limits)
        wait_ms = await self._do(lambda: self.r.evalsha(HIT, keys, args), retry=False)
        return int(wait_ms) / 1000.0

    async def add(self, team: str, limits: Sequence[Limit]) -> None:
        keys, args = self._window_args(team, limits)
        await self._do(lambda: self.r.evalsha(ADD, keys, args), retry=False)

    # ---- backend health ----------------------------------------------------------------

    def _down_key(self, backend: str) -> str:
        return f"{self.prefix}{{health}}:down:{backend}"

    async def mark_backend_down(self, backend: str, replica: str, until: float,
                                reason: str) -> None:
        until_ms = int(until * 1000)
        ttl_ms = until_ms - int(time.time() * 1000)
        if ttl_ms <= 0:
            return
        await self._do(lambda: self.r.evalsha(
            MARK_DOWN, [self._down_key(backend)],
            [until_ms, f"{until_ms}|{replica}|{reason}", ttl_ms]))

    async def clear_backend_down(self, backend: str) -> None:
        await self._do(lambda: self.r.execute("DEL", self._down_key(backend)))

    async def backends_down(self, names: Sequence[str]) -> dict[str, tuple[float, str, str]]:
        if not names:
            return {}
        values = await self._do(lambda: self.r.execute("MGET", *map(self._down_key, names)))
        now = time.time()
        out: dict[str, tuple[float, str, str]] = {}
        for name, v in zip(names, values, strict=True):
            parts = str(v).split("|", 2) if v else []
            if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) / 1000 > now:
                out[name] = (int(parts[0]) / 1000, parts[1], parts[2])
        return out

    # ---- drained backends --------------------------------------------------------------

    async def set_backend_drained(self, backend: str, drained: bool, by: str,
                                  reason: str) -> None:
        key = f"{self.prefix}{{health}}:drained"
        if drained:
            doc = orjson.dumps({"by": by, "reason": reason, "since": time.time()}).decode()
            await self._do(lambda: self.r.execute("HSET", key, backend, doc))
        else:
            await self._do(lambda: self.r.execute("HDEL", key, backend))

    async def backends_drained(self, names: Sequence[str]) -> dict[str, tuple[str, str, float]]:
        if not names:
            return {}
        values = await self._do(lambda: self.r.execute(
            "HMGET", f"{self.prefix}{{health}}:drained", *names))
        out: dict[str, tuple[str, str, float]] = {}
        for name, v in zip(names, values, strict=True):
            if v:
                d = orjson.loads(v)
                out[name] = (str(d.get("by", "")), str(d.get("reason", "")),
                             float(d.get("since", 0.0)))
        return out


@hookimpl(trylast=True)
def switchyard_register_state_stores(register: RegisterStateStore) -> None:
    register("redis", lambda config: RedisStore(
        config.url.get_secret_value(), config.prefix,
        connect_timeout_s=config.connect_timeout_s, timeout_s=config.timeout_s))
