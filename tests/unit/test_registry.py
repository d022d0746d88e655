"""The plugin manager: entry points, duplicates, overrides, misspelled hooks, broken plugins,
per-plugin config validation, ``disable_plugins``, and observers isolated from each other.
Plugins here are real modules written to a temporary directory and imported by name, as
``plugins:`` in a config file does (observers are objects passed in, as tests do)."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import hookimpl
from gateway.assembly import build_registry_for, validate
from gateway.errors import ConfigError
from gateway.registry import build_registry

BUILTIN_BACKENDS = {"llamacpp", "openai_compatible", "vllm", "litellm", "sentence_transformers"}

BACKEND_PLUGIN = """
from typing import Any
from gateway import BackendConfig, BaseBackend, hookimpl

class Config(BackendConfig):
    colour: str = "blue"

class Backend(BaseBackend):
    pass

@hookimpl
def switchyard_register_backends(register: Any) -> None:
    register({name!r}, Backend, Config)
"""


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a plugin module ``name`` with ``source``; returns its importable name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def messages(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(f"{path}: {msg}" for path, msg in exc.value.errors)


def test_builtins_are_found_through_our_entry_points() -> None:
    reg = build_registry()
    assert BUILTIN_BACKENDS <= set(reg.backends)
    assert "first_healthy" in reg.policies
    # each came from the entry point of the same name in pyproject.toml, marked as a default
    for name in BUILTIN_BACKENDS:
        assert reg.backends[name].source == name
        assert reg.backends[name].builtin
    assert reg.policies["first_healthy"].source == "first_healthy"
    assert {"llamacpp", "vllm", "first_healthy"} <= set(reg.plugin_names())


def test_without_entry_points_nothing_is_registered() -> None:
    reg = build_registry(load_entry_points=False)
    assert reg.backends == {} and reg.policies == {}


def test_a_name_claimed_by_two_plugins_is_refused_naming_both(plugin_module) -> None:
    one = plugin_module("acme_one", BACKEND_PLUGIN.format(name="shared"))
    two = plugin_module("acme_two", BACKEND_PLUGIN.format(name="shared"))
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=[one, two])
    text = messages(exc)
    assert "'shared'" in text and "acme_one" in text and "acme_two" in text


def test_a_user_plugin_overrides_a_builtin_of_the_same_name(plugin_module) -> None:
    mine = plugin_module("my_vllm", BACKEND_PLUGIN.format(name="vllm"))
    reg = build_registry(modules=[mine])
    entry = reg.backends["vllm"]
    assert entry.source == "my_vllm" and not entry.builtin
    factory, model = entry.value
    assert factory.__module__ == "my_vllm" and "colour" in model.model_fields
    assert reg.backends["openai_compatible"].source == "openai_compatible"  # others untouched


def test_a_misspelled_hook_stops_start_up(plugin_module) -> None:
    typo = plugin_module("typo_plugin", """
        from gateway import hookimpl

        @hookimpl
        def switchyard_register_backend(register):
            register("never", object)
    """)
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=[typo])
    assert "switchyard_register_backend" in messages(exc)
    assert "misspelled" in messages(exc)


def test_a_misspelled_hook_without_the_marker_is_caught_too(plugin_module) -> None:
    typo = plugin_module("typo_unmarked", """
        def switchyard_register_polices(register):
            pass
    """)
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=[typo])
    assert "switchyard_register_polices" in messages(exc)


def test_a_hook_with_a_wrong_argument_name_stops_start_up(plugin_module) -> None:
    bad = plugin_module("bad_args", """
        from gateway import hookimpl

        @hookimpl
        def switchyard_register_backends(registrar):
            pass
    """)
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=[bad])
    assert exc.value.errors[0][0] == "plugins[0]"
    assert "registrar" in messages(exc)


def test_a_plugin_that_cannot_be_imported_stops_start_up(plugin_module) -> None:
    broken = plugin_module("broken_plugin", "raise RuntimeError('the plugin is broken')\n")
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=["no_such_plugin_xyz", broken])
    errors = dict(exc.value.errors)
    assert "'no_such_plugin_xyz'" in errors["plugins[0]"]
    assert "ModuleNotFoundError" in errors["plugins[0]"]
    assert "the plugin is broken" in errors["plugins[1]"]


def test_a_registration_hook_that_raises_is_reported(plugin_module) -> None:
    raising = plugin_module("raising_plugin", """
        from gateway import hookimpl

        @hookimpl
        def switchyard_register_policies(register):
            raise KeyError("no config")
    """)
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=[raising])
    assert exc.value.errors == [
        ("plugins.raising_plugin", "switchyard_register_policies failed: KeyError: 'no config'")
    ]


def test_a_config_model_that_is_not_a_backend_config_is_refused(plugin_module) -> None:
    bad = plugin_module("bad_model", """
        from gateway import BaseBackend, hookimpl

        @hookimpl
        def switchyard_register_backends(register):
            register("bad", BaseBackend, dict)
    """)
    with pytest.raises(ConfigError) as exc:
        build_registry(load_entry_points=False, modules=[bad])
    assert "BackendConfig" in messages(exc)


def test_a_backend_section_is_validated_against_its_plugins_model(settings_factory) -> None:
    settings = settings_factory(backends=[
        {"name": "local", "plugin": "llamacpp", "n_ctx": 512},
        {"name": "remote", "plugin": "openai_compatible", "model": "m",
         "base_urll": "http://127.0.0.1:1/v1"},
        {"name": "other", "plugin": "llamacpp", "n_ctx": "large"},
    ], routes=[{"name": "auto", "backends": ["local"]}])
    with pytest.raises(ConfigError) as exc:
        validate(settings, build_registry_for(settings))
    errors = dict(exc.value.errors)
    assert "misspelled" in errors["backends[1].base_urll"]
    assert "required" in errors["backends[1].base_url"].lower()
    assert "integer" in errors["backends[2].n_ctx"]
    assert not any(path.startswith("backends[0]") for path in errors)


def test_an_unknown_backend_plugin_lists_the_known_ones(settings_factory) -> None:
    settings = settings_factory(backends=[{"name": "x", "plugin": "lamacpp"}],
                                routes=[{"name": "auto", "backends": ["x"]}])
    with pytest.raises(ConfigError) as exc:
        validate(settings, build_registry_for(settings))
    (path, msg), = exc.value.errors
    assert path == "backends[0].plugin"
    assert "'lamacpp'" in msg and "llamacpp" in msg


def test_disable_plugins_removes_a_builtin(settings_factory) -> None:
    settings = settings_factory(disable_plugins=["litellm"],
                                backends=[{"name": "cloud", "plugin": "litellm", "model": "gpt-4o"}],
                                routes=[{"name": "auto", "backends": ["cloud"]}])
    reg = build_registry_for(settings)
    assert "litellm" not in reg.backends and "llamacpp" in reg.backends
    with pytest.raises(ConfigError) as exc:
        validate(settings, reg)
    assert exc.value.errors[0][0] == "backends[0].plugin"


def test_disable_plugins_lets_a_broken_plugin_be_skipped(plugin_module) -> None:
    broken = plugin_module("broken_again", "raise ImportError('missing dependency')\n")
    reg = build_registry(load_entry_points=False, modules=[broken], disable=[broken])
    assert broken not in reg.plugin_names()


def test_disabling_an_unknown_plugin_is_an_error() -> None:
    with pytest.raises(ConfigError) as exc:
        build_registry(disable=["llamacpp", "lamacpp"])
    (path, msg), = exc.value.errors
    assert path == "disable_plugins[1]" and "'lamacpp'" in msg and "llamacpp" in msg


def test_every_build_gets_a_fresh_plugin_manager(plugin_module) -> None:
    mine = plugin_module("fresh_one", BACKEND_PLUGIN.format(name="fresh"))
    assert "fresh" in build_registry(load_entry_points=False, modules=[mine]).backends
    assert "fresh" not in build_registry(load_entry_points=False).backends


class _Observer:
    """A ``switchyard_request_recorded`` observer that notes what it saw, or raises."""

    def __init__(self, name: str, fail: bool = False, awaitable: bool = False) -> None:
        self.name, self.fail, self.awaitable = name, fail, awaitable
        self.seen: list[str] = []

    @hookimpl
    def switchyard_request_recorded(self, record: Any) -> Any:
        if self.fail:
            raise RuntimeError(f"{self.name} is broken")
        if self.awaitable:
            async def later() -> None:
                self.seen.append(record)
            return later()
        self.seen.append(record)
        return None


@pytest.mark.parametrize("failing_first", [True, False])
async def test_every_observer_runs_when_one_raises(failing_first: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    good, bad = _Observer("good"), _Observer("bad", fail=True)
    # pluggy calls the plugin registered last first
    reg = build_registry(load_entry_points=False,
                         extra=[good, bad] if failing_first else [bad, good])
    tasks: set[asyncio.Future[Any]] = set()
    with caplog.at_level(logging.ERROR, logger="switchyard.plugins"):
        reg.notify("switchyard_request_recorded", tasks, record="rec-1")
    assert good.seen == ["rec-1"], "the other observer still ran"
    assert "bad is broken" in caplog.text and "switchyard_request_recorded" in caplog.text
    assert not tasks


async def test_awaitable_observers_are_scheduled_each_on_their_own(
        caplog: pytest.LogCaptureFixture) -> None:
    first, second = _Observer("first", awaitable=True), _Observer("second", awaitable=True)
    bad = _Observer("bad", fail=True)
    reg = build_registry(load_entry_points=False, extra=[first, bad, second])
    tasks: set[asyncio.Future[Any]] = set()
    with caplog.at_level(logging.ERROR, logger="switchyard.plugins"):
        reg.notify("switchyard_request_recorded", tasks, record="rec-2")
        assert len(tasks) == 2
        await asyncio.gather(*list(tasks))
    assert first.seen == second.seen == ["rec-2"]
    assert not tasks, "a finished observer is dropped from the set"
    assert "bad is broken" in caplog.text
