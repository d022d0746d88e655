"""The plugin manager and the registries its registration hooks fill.

No global plugin manager: ``build_registry(settings)`` makes a fresh one each time, so every
app (and every test) has its own.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from gateway import hookspecs
from gateway.config import BackendConfig
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import StateConfig
    from gateway.interfaces import Backend, PlanEditor, RoutingPolicy

log = logging.getLogger("switchyard.plugins")

ENTRY_POINT_GROUP = "switchyard"

BackendFactory = Callable[[Any, Any], "Backend"]
PolicyFactory = Callable[[dict[str, Any]], "RoutingPolicy"]
StateFactory = Callable[["StateConfig"], Any]


class RegisterBackend(Protocol):
    def __call__(
        self, plugin: str, factory: BackendFactory, config_model: type[BackendConfig] = ...
    ) -> None: ...


class RegisterPolicy(Protocol):
    def __call__(self, name: str, factory: PolicyFactory) -> None: ...


class RegisterPlanEditor(Protocol):
    def __call__(self, name: str, editor: PlanEditor) -> None: ...


class RegisterStateStore(Protocol):
    def __call__(self, kind: str, factory: StateFactory) -> None: ...


@dataclass(slots=True)
class Entry:
    value: Any
    source: str  # the plugin that registered it
    builtin: bool


@dataclass
class Registry:
    pm: pluggy.PluginManager
    backends: dict[str, Entry] = field(default_factory=dict)  # value: (factory, config_model)
    policies: dict[str, Entry] = field(default_factory=dict)
    plan_editors: dict[str, Entry] = field(default_factory=dict)
    state_stores: dict[str, Entry] = field(default_factory=dict)

    def has_observers(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())


def _add(
    table: dict[str, Entry], kind: str, name: str, value: Any, source: str, builtin: bool,
    errors: list[tuple[str, str]],
) -> None:
    old = table.get(name)
    if old is None or (old.builtin and not builtin):
        if old is not None:
            log.info("%s %r from %s overrides the built-in from %s", kind, name, source, old.source)
        table[name] = Entry(value, source, builtin)
    elif builtin and not old.builtin:
        return  # a user plugin already overrides this built-in
    else:
        errors.append(
            (f"plugins.{source}", f"{kind} {name!r} is already registered by {old.source}")
        )


def _call_registration(
    pm: pluggy.PluginManager, hook: str, table: dict[str, Entry], kind: str,
    make_value: Callable[..., Any], errors: list[tuple[str, str]],
) -> None:
    for impl in getattr(pm.hook, hook).get_hookimpls():
        source = impl.plugin_name
        builtin = bool(impl.trylast)

        def register(name: str, *args: Any, _s: str = source, _b: bool = builtin) -> None:
            if not isinstance(name, str) or not name:
                errors.append((f"plugins.{_s}", f"{kind} name must be a non-empty string"))
                return
            _add(table, kind, name, make_value(name, *args), _s, _b, errors)

        try:
            impl.function(register=register)
        except Exception as e:  # a broken plugin stops start-up with a clear message
            errors.append((f"plugins.{source}", f"{hook} failed: {type(e).__name__}: {e}"))


def _backend_value(name: str, factory: BackendFactory, model: type[BackendConfig] = BackendConfig) -> Any:
    if not (isinstance(model, type) and issubclass(model, BackendConfig)):
        raise TypeError(f"config model for backend plugin {name!r} must subclass BackendConfig")
    return (factory, model)


def build_registry(
    *,
    load_entry_points: bool = True,
    modules: Iterable[str] = (),
    extra: Iterable[object] = (),
    disable: Iterable[str] = (),
) -> Registry:
    """Load plugins (entry points, named modules, objects), check hooks, run registration."""
    pm = pluggy.PluginManager("switchyard")
    pm.add_hookspecs(hookspecs)
    errors: list[tuple[str, str]] = []
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as e:
            raise ConfigError([("plugins", f"a plugin failed to load: {type(e).__name__}: {e}")]) from e
    for i, mod_name in enumerate(modules):
        try:
            mod: ModuleType = importlib.import_module(mod_name)
        except Exception as e:
            errors.append((f"plugins[{i}]", f"cannot import {mod_name!r}: {type(e).__name__}: {e}"))
            continue
        if pm.is_registered(mod) or pm.has_plugin(mod_name):
            continue
        pm.register(mod, name=mod_name)
    for obj in extra:
        pm.register(obj)
    for name in disable:
        if pm.has_plugin(name):
            pm.unregister(name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        errors.append(("plugins", f"unknown hook (misspelled?): {e}"))
    if errors:
        raise ConfigError(errors)
    reg = Registry(pm=pm)
    _call_registration(pm, "switchyard_register_backends", reg.backends, "backend plugin", _backend_value, errors)
    _call_registration(pm, "switchyard_register_policies", reg.policies, "policy", lambda n, f: f, errors)
    _call_registration(pm, "switchyard_register_plan_editors", reg.plan_editors, "plan editor", lambda n, f: f, errors)
    _call_registration(pm, "switchyard_register_state_stores", reg.state_stores, "state store", lambda n, f: f, errors)
    if errors:
        raise ConfigError(errors)
    return reg
