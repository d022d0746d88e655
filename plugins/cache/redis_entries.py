"""Cache entries in Redis (``state: {kind: redis}``): an answer stored through one gateway
replica is found through every other.

Keys (``P`` is ``state.prefix`` + ``cache.prefix``; one hash tag, so a Cluster keeps them
in one slot and the store script may touch them all)::

    P{c}:e:<id>   the entry (JSON), expiring with it (PX)
    P{c}:exp      zset: entry id -> expiry (ms); past ``max_entries``, the soonest to
                  expire are deleted
    P{c}:adds2    stream: each entry with a semantic group: id, group, text, vector
                  (float32, base64), expiry; trimmed to about 2 x ``max_entries``

The exact tier is one ``GET``. The semantic tier keeps each replica's in-process index in
step with the stream: before a semantic lookup, the replica reads what was added since it
last looked, in the same round trip as the exact ``GET`` (a pipeline). A replica that
starts reads the whole stream. An entry deleted or expired in Redis stays in the other
replicas' indexes until a lookup matches it: the ``GET`` then finds nothing, the index
forgets it, and the request is a miss (never a wrong answer).

The client is ``plugins.redis_resp.RespClient`` (hiredis, the state store's): a command is
packed in C and pipelined on a long-lived connection. It reads every reply as UTF-8 text,
so the stream carries each vector in base64 (``adds2``: the ``adds`` stream of the redis-py
version held raw bytes, and is not read).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from plugins.cache.entries import Added, Entry
from plugins.redis_resp import Arg, RespClient, Script

_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], '*', 'i', ARGV[3], 'g', ARGV[7],
             't', ARGV[8], 'v', ARGV[9], 'x', ARGV[5])
end
local n = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if n > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], n)
  for i = 1, #old, 2 do redis.call('DEL', ARGV[11] .. old[i]) end
end
return 1
"""

_BATCH = 1000  # stream entries read per round trip


class RedisEntries:
    kind = "redis"

    def __init__(self, url: str, prefix: str, *, max_entries: int, timeout_s: float = 2.0,
                 connect_timeout_s: float = 2.0) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the cache's Redis prefix must not contain '{' or '}'")
        self.max_entries = max_entries
        self._e = f"{prefix}{{c}}:e:"
        self._exp, self._adds = f"{prefix}{{c}}:exp", f"{prefix}{{c}}:adds2"
        self.r = RespClient(url, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s)
        self._put = Script(_PUT)
        self._last = "0-0"  # the last stream entry this replica has read

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.r.aclose()

    async def get(self, entry_id: str | None, *, pull: bool = False
                  ) -> tuple[Entry | None, list[Added]]:
        """The entry (None: absent or expired) and, with ``pull``, what other replicas
        added since the last pull, in one round trip (more only after a long gap)."""
        commands: list[tuple[Arg, ...]] = []
        if entry_id is not None:
            commands.append(("GET", self._e + entry_id))
        if pull:
            commands.append(self._xread())
        res = await self.r.execute_many(commands) if commands else []
        raw = res[0] if entry_id is not None else None
        added: list[Added] = []
        if pull:
            got = self._read(res[-1], added)
            while got == _BATCH:
                got = self._read(await self.r.execute(*self._xread()), added)
        return (Entry.loads(raw) if raw else None), added

    def _xread(self) -> tuple[Arg, ...]:
        return ("XREAD", "COUNT", _BATCH, "STREAMS", self._adds, self._last)

    def _read(self, reply: Any, out: list[Added]) -> int:
        if not reply:
            return 0
        _, items = reply[0]
        now_ms = time.time() * 1000.0
        for sid, fields in items:
            self._last = sid
            f = dict(zip(fields[::2], fields[1::2], strict=True))
            if float(f["x"]) > now_ms:
                out.append(Added(f["i"], f["g"], f["t"],
                                 np.frombuffer(base64.b64decode(f["v"]), dtype=np.float32),
                                 float(f["x"]) / 1000.0))
        return len(items)

    async def put(self, e: Entry, vec: np.ndarray | None) -> None:
        ttl_ms = max(1, int((e.expires - time.time()) * 1000))
        semantic = e.group is not None and e.text is not None and vec is not None
        await self.r.evalsha(self._put, [self._e + e.id, self._exp, self._adds], [
            e.dumps(), ttl_ms, e.id, int(time.time() * 1000), int(e.expires * 1000),
            self.max_entries, (e.group or "") if semantic else "", e.text or "",
            base64.b64encode(np.asarray(vec, dtype=np.float32).tobytes()) if semantic else b"",
            2 * self.max_entries, self._e])
