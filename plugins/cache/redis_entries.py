"""Cache entries in Redis (``state: {kind: redis}``): an answer stored through one gateway
replica is found through every other.

Keys (``P`` is ``state.prefix`` + ``cache.prefix``; one hash tag, so a Cluster keeps them
in one slot and the store script may touch them all)::

    P{c}:e:<id>   the entry (JSON), expiring with it (PX)
    P{c}:exp      zset: entry id -> expiry (ms); past ``max_entries``, the soonest to
                  expire are deleted
    P{c}:adds     stream: each entry with a semantic group: id, group, text, vector
                  (float32 bytes), expiry; trimmed to about 2 x ``max_entries``

The exact tier is one ``GET``. The semantic tier keeps each replica's in-process index in
step with the stream: before a semantic lookup, the replica reads what was added since it
last looked, in the same round trip as the exact ``GET`` (a pipeline). A replica that
starts reads the whole stream. An entry deleted or expired in Redis stays in the other
replicas' indexes until a lookup matches it: the ``GET`` then finds nothing, the index
forgets it, and the request is a miss (never a wrong answer).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from plugins.cache.entries import Added, Entry

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
        self._exp, self._adds = f"{prefix}{{c}}:exp", f"{prefix}{{c}}:adds"
        pool = aioredis.BlockingConnectionPool.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), protocol=2, max_connections=32, timeout=timeout_s)
        self.r = aioredis.Redis.from_pool(pool)
        self._put = self.r.register_script(_PUT)
        self._last = b"0-0"  # the last stream entry this replica has read

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.r.aclose()

    async def get(self, entry_id: str | None, *, pull: bool = False
                  ) -> tuple[Entry | None, list[Added]]:
        """The entry (None: absent or expired) and, with ``pull``, what other replicas
        added since the last pull, in one round trip (more only after a long gap)."""
        pipe = self.r.pipeline(transaction=False)
        if entry_id is not None:
            pipe.get(self._e + entry_id)
        if pull:
            pipe.xread({self._adds: self._last}, count=_BATCH)
        res = await pipe.execute()
        raw = res[0] if entry_id is not None else None
        added: list[Added] = []
        if pull:
            got = self._read(res[-1], added)
            while got == _BATCH:
                got = self._read(await self.r.xread({self._adds: self._last}, count=_BATCH),
                                 added)
        return (Entry.loads(raw) if raw else None), added

    def _read(self, reply: Any, out: list[Added]) -> int:
        if not reply:
            return 0
        _, items = reply[0]
        now_ms = time.time() * 1000.0
        for sid, f in items:
            self._last = sid
            if float(f[b"x"]) > now_ms:
                out.append(Added(f[b"i"].decode(), f[b"g"].decode(), f[b"t"].decode(),
                                 np.frombuffer(f[b"v"], dtype=np.float32),
                                 float(f[b"x"]) / 1000.0))
        return len(items)

    async def put(self, e: Entry, vec: np.ndarray | None) -> None:
        ttl_ms = max(1, int((e.expires - time.time()) * 1000))
        semantic = e.group is not None and e.text is not None and vec is not None
        await self._put(keys=[self._e + e.id, self._exp, self._adds], args=[
            e.dumps(), ttl_ms, e.id, int(time.time() * 1000), int(e.expires * 1000),
            self.max_entries, (e.group or "") if semantic else "", e.text or "",
            np.asarray(vec, dtype=np.float32).tobytes() if semantic else b"",
            2 * self.max_entries, self._e])
