"""``switchyard_register_stages``: a plugin fills an optional seam of the request path by
registering an object; the registry refuses what cannot work (an unknown seam, two plugins
on one seam, a stage that is not callable) at start-up, with the known seams named; assembly
hands what was registered to the ``Gateway``, and with no plugin the stage list is the
built-in one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import STAGE_SEAMS, Exchange, RegisterStage, hookimpl
from gateway.assembly import build_parts
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.pipeline import stages
from gateway.registry import build_registry


def noop(x: Exchange) -> None:
    return None


async def keep(x: Exchange, answer: dict[str, Any]) -> None:
    return None


class Seams:
    """A plugin object filling the seams it is given; ``__name__`` names it for
    ``disable_plugins``."""

    def __init__(self, name: str, **seams: Any) -> None:
        self.__name__ = name
        self.seams = seams

    @hookimpl
    def switchyard_register_stages(self, register: RegisterStage) -> None:
        for seam, stage in self.seams.items():
            register(seam, stage)  # type: ignore[call-overload]  # any seam, on purpose


def _settings(tmp_path: Path, **kw: Any) -> Any:
    return load_settings(None, backends=[{"name": "parrot", "plugin": "echo"}],
                         routes=[{"name": "auto", "backends": ["parrot"]}],
                         ledger={"kind": "none"}, **kw)


def _errors(*plugins: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        build_registry(load_entry_points=False, extra=plugins)
    return e.value.errors


def test_an_unknown_seam_is_refused_naming_every_known_seam() -> None:
    [(path, msg)] = _errors(Seams("acme", cache=noop))
    assert path == "plugins.acme"
    assert "'cache'" in msg and "known seams: compress, cache_lookup, cache_store" in msg
    assert STAGE_SEAMS == ("compress", "cache_lookup", "cache_store")


def test_two_plugins_on_one_seam_are_refused_naming_both() -> None:
    [(_, msg)] = _errors(Seams("first", compress=noop), Seams("second", compress=noop))
    assert "'compress'" in msg and "'first'" in msg and "'second'" in msg
    assert "disable_plugins" in msg


def test_what_cannot_serve_its_seam_is_refused() -> None:
    errors = _errors(Seams("bad", judge=noop, cache_lookup="not callable"))
    msgs = " / ".join(m for _, m in errors)
    assert "'judge': not a seam" in msgs, "judges register with switchyard_register_judges"
    assert "not callable" in msgs


def test_the_registered_objects_reach_the_gateway_at_their_places(tmp_path: Path) -> None:
    plugin = Seams("acme", compress=noop, cache_lookup=noop, cache_store=keep)
    gw = build_parts(_settings(tmp_path), extra_plugins=[plugin]).gateway
    assert stages.names(gw.stages) == ["resolve", "compress", "features", "admit",
                                      "cache_lookup", "plan"]
    assert dict(gw.stages)["compress"] is noop and dict(gw.stages)["cache_lookup"] is noop
    assert gw.cache_store is keep


def test_with_no_plugin_the_stage_list_is_the_built_in_one(tmp_path: Path) -> None:
    gw = build_parts(_settings(tmp_path)).gateway
    assert stages.names(gw.stages) == ["resolve", "features", "admit", "plan"]
    assert gw.cache_store is None


def test_a_disabled_plugin_fills_no_seam(tmp_path: Path) -> None:
    plugin = Seams("acme", cache_lookup=noop)
    settings = _settings(tmp_path, disable_plugins=["acme"])
    gw = build_parts(settings, extra_plugins=[plugin]).gateway
    assert stages.names(gw.stages) == ["resolve", "features", "admit", "plan"]

