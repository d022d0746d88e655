"""``cache``: the built-in response cache (``cache: {enabled: true}``), registered as
``semantic`` through ``switchyard_register_caches``: an exact tier and a semantic tier,
per team, in process or in Redis (``plugins.cache.runtime``; docs/cache.md)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway import CacheConfig, RegisterCache, StateConfig, hookimpl
from plugins.cache.runtime import TieredCache


def make_cache(config: CacheConfig, routes: Mapping[str, CacheConfig],
               state: StateConfig) -> TieredCache:
    return TieredCache(config, routes, state)


@hookimpl(trylast=True)
def switchyard_register_caches(register: RegisterCache) -> None:
    register("semantic", make_cache)
