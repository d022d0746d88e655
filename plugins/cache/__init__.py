"""``cache``: the built-in response cache (``cache: {enabled: true}``), registered as
``semantic`` through ``switchyard_register_caches``: an exact tier and a semantic tier,
per team, in process or in Redis (``plugins.cache.runtime``; docs/cache.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway import CacheConfig, RegisterCache, StateConfig, hookimpl
from plugins.cache.runtime import TieredCache

# ``cache.options`` of the built-in cache: the semantic tier's judges (docs/cache.md)
OPTIONS = {
    "verifier": "a verifier file written by bench/fit_cache_verifier.py (default: the shipped "
                "plugins/cache/verifier.json)",
    "cross_encoder": "a cross-encoder file written by bench/fit_cache_cross.py, or 'qqp' for "
                     "plugins/cache/cross_qqp.npz (default: none)",
}


def _file(options: Mapping[str, object], name: str) -> Path | None:
    value = options.get(name)
    if value is None or value is False:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"cache.options.{name}: a file path, not {value!r}")
    if name == "cross_encoder" and value == "qqp":
        from plugins.cache.cross import CROSS_FILE

        return CROSS_FILE
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"cache.options.{name}: no file at {str(path)!r}")
    return path


def make_cache(config: CacheConfig, routes: Mapping[str, CacheConfig],
               state: StateConfig) -> TieredCache:
    """The built-in cache; ``cache.options`` may name its verifier and a cross-encoder
    (an unknown option or a missing file is a start-up error)."""
    unknown = sorted(set(config.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"cache.options: unknown {', '.join(map(repr, unknown))} (known: "
                         f"{', '.join(OPTIONS)})")
    verifier, cross = _file(config.options, "verifier"), _file(config.options, "cross_encoder")
    if verifier is not None:  # read now: a file fitted for other features fails the start
        from plugins.cache.decide import load_verifier

        load_verifier(verifier)
    if cross is not None:
        from plugins.cache.cross import read_meta

        read_meta(cross)
    return TieredCache(config, routes, state, verifier=verifier, cross_encoder=cross)


@hookimpl(trylast=True)
def switchyard_register_caches(register: RegisterCache) -> None:
    register("semantic", make_cache)
