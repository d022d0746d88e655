"""The plugin manager and the registries its registration hooks fill.

No global plugin manager: ``build_registry()`` makes a fresh one each time, so every app (and
every test) has its own. Plugins come from three places, in this order: the entry points of
group ``switchyard`` (the built-ins are found this way too, like any third-party package),
the modules named in ``plugins:``, and objects passed by the caller (tests). Every problem is
collected and reported at once as a ``ConfigError``; nothing half-loaded is ever served.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from gateway import hookspecs
from gateway.config import BackendConfig
from gateway.errors import ConfigError
from gateway.hookspecs import STAGE_SEAMS, BackendFactory, CommandConfigure, CommandRun

log = logging.getLogger("switchyard.plugins")

ENTRY_POINT_GROUP = "switchyard"
HOOK_PREFIX = "switchyard_"

Errors = list[tuple[str, str]]

# The CLI's own first words (gateway/cli.py, gateway/admin_cli.py): no plugin command may
# take one of them.
BUILTIN_COMMANDS = frozenset({"serve", "check-config", "import-litellm", "teams", "keys", "spend",
                              "backends", "report"})
_COMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(slots=True)
class Entry:
    value: Any
    source: str  # the plugin that registered it
    builtin: bool  # registered from a ``trylast`` hook: a default any other plugin may override


@dataclass
class Registry:
    pm: pluggy.PluginManager
    backends: dict[str, Entry] = field(default_factory=dict)  # value: (factory, config_model)
    policies: dict[str, Entry] = field(default_factory=dict)
    plan_editors: dict[str, Entry] = field(default_factory=dict)
    state_stores: dict[str, Entry] = field(default_factory=dict)
    ledgers: dict[str, Entry] = field(default_factory=dict)  # kind -> LedgerFactory
    stages: dict[str, Entry] = field(default_factory=dict)  # seam -> stage (STAGE_SEAMS)
    caches: dict[str, Entry] = field(default_factory=dict)  # kind -> CacheFactory
    judges: dict[str, Entry] = field(default_factory=dict)  # name -> JudgeFactory
    compressors: dict[str, Entry] = field(default_factory=dict)  # kind -> CompressorFactory
    # "eval cache" -> Command; filled only by ``build_registry(commands=True)`` (the CLI)
    commands: dict[str, Entry] = field(default_factory=dict)

    def notify(self, hook: str, tasks: set[asyncio.Future[Any]], **kwargs: Any) -> None:
        """Call an observer hook (datasette's await_me_maybe): every implementation runs; one
        that raises is logged, never raised to the caller; an awaitable result is scheduled
        and kept in ``tasks`` until it is done, its failure logged too.

        Each implementation is called on its own, in pluggy's order (a plain hook call stops
        at the first one that raises, and the rest never run); a wrapper is not called."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            try:
                res = impl.function(**{a: kwargs[a] for a in impl.argnames if a in kwargs})
            except Exception:
                log.exception("a %s observer failed (plugin %s)", hook, impl.plugin_name)
                continue
            if isinstance(res, Awaitable):
                fut = asyncio.ensure_future(res)
                tasks.add(fut)
                fut.add_done_callback(functools.partial(_observed, tasks, hook))

    def has_observers(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def plugin_names(self) -> list[str]:
        return sorted(name for name, plugin in self.pm.list_name_plugin() if plugin is not None)


class SwitchyardPluginManager(pluggy.PluginManager):
    """Like pytest's: a ``switchyard_*`` function counts as a hook implementation even
    without ``@hookimpl``, so a misspelled one reaches ``check_pending`` and fails start-up
    instead of being silently ignored."""

    def __init__(self) -> None:
        super().__init__("switchyard")
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if (opts is None and name.startswith(HOOK_PREFIX)
                and inspect.isroutine(inspect.getattr_static(plugin, name, None))):
            return {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                    "tryfirst": False, "trylast": False, "specname": None}
        return opts


def _observed(tasks: set[asyncio.Future[Any]], hook: str, fut: asyncio.Future[Any]) -> None:
    tasks.discard(fut)
    if not fut.cancelled() and fut.exception() is not None:
        log.error("a %s observer failed: %r", hook, fut.exception())


def _add(
    table: dict[str, Entry], kind: str, name: str, value: Any, source: str, builtin: bool,
    errors: Errors,
) -> None:
    old = table.get(name)
    if old is None or (old.builtin and not builtin):
        if old is not None:
            log.info("%s %r from %s overrides the built-in from %s", kind, name, source, old.source)
        table[name] = Entry(value, source, builtin)
    elif builtin and not old.builtin:
        return  # a plugin already overrides this built-in
    else:
        msg = (f"{kind} {name!r} is registered by both {old.source!r} and {source!r}; "
               "disable one (disable_plugins)")
        errors.append((f"plugins.{source}", msg))


def _call_registration(
    pm: pluggy.PluginManager, hook: str, table: dict[str, Entry], kind: str,
    make_value: Callable[..., Any], errors: Errors,
) -> None:
    for impl in getattr(pm.hook, hook).get_hookimpls():
        source = impl.plugin_name
        builtin = bool(impl.trylast)

        def register(name: str, *args: Any, _s: str = source, _b: bool = builtin,
                     **kwargs: Any) -> None:
            if not isinstance(name, str) or not name:
                errors.append((f"plugins.{_s}", f"{kind} name must be a non-empty string"))
                return
            try:
                value = make_value(name, *args, **kwargs)
            except (TypeError, ValueError) as e:
                errors.append((f"plugins.{_s}", f"{kind} {name!r}: {e}"))
                return
            _add(table, kind, name, value, _s, _b, errors)

        try:
            impl.function(register=register)
        except Exception as e:  # noqa: BLE001 - any failure of a plugin stops start-up, named
            errors.append((f"plugins.{source}", f"{hook} failed: {type(e).__name__}: {e}"))


def _backend_value(
    name: str, factory: BackendFactory, model: type[BackendConfig] = BackendConfig
) -> tuple[BackendFactory, type[BackendConfig]]:
    if not callable(factory):
        raise TypeError("the factory is not callable")
    if not (isinstance(model, type) and issubclass(model, BackendConfig)):
        raise TypeError("its config model must subclass gateway.BackendConfig")
    return (factory, model)


def _plain_value(name: str, value: Any) -> Any:
    if not callable(value):
        raise TypeError("the registered object is not callable")
    return value


def _stage_value(seam: str, stage: Any) -> Any:
    if seam not in STAGE_SEAMS:
        known = ", ".join(STAGE_SEAMS)
        raise ValueError(f"not a seam of the request path (known seams: {known})")
    if not callable(stage):
        raise TypeError("the registered stage is not callable")
    return stage


@dataclass(frozen=True, slots=True)
class Command:
    """A plugin's command-line command (``switchyard_register_commands``)."""

    name: str  # "eval cache"
    configure: CommandConfigure
    run: CommandRun
    help: str


def _command_value(
    name: str, configure: CommandConfigure, run: CommandRun, help: str = ""
) -> Command:
    words = name.split(" ")
    if not all(_COMMAND_WORD.fullmatch(w) for w in words):
        raise ValueError("a command name is lowercase words separated by single spaces")
    if words[0] in BUILTIN_COMMANDS:
        raise ValueError(f"{words[0]!r} is a built-in command")
    if not callable(configure) or not callable(run):
        raise TypeError("configure and run must be callable")
    return Command(name, configure, run, help)


def _command_groups(commands: dict[str, Entry], errors: Errors) -> None:
    """A command may not also be the group of another ("eval" and "eval cache")."""
    for name, entry in commands.items():
        for other in commands:
            if other.startswith(name + " "):
                errors.append((f"plugins.{entry.source}",
                               f"command {name!r} is also the group of {other!r}"))


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None, where: str,
              errors: Errors) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:  # a hook with arguments its spec does not have
        errors.append((where, f"plugin {name or plugin!r} is invalid: {e}"))
    except ValueError as e:  # already registered under another name
        log.debug("plugin %s not registered twice: %s", name, e)


def _load_entry_points(pm: pluggy.PluginManager, errors: Errors) -> list[str]:
    """Load every entry point of our group, each on its own: one broken package is named
    (with its distribution) and does not hide the others' problems."""
    names: list[str] = []
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.append(ep.name)
        if ep.name in seen or pm.is_blocked(ep.name):
            continue
        seen.add(ep.name)
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        try:
            plugin = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken package is reported, not raised
            msg = f"entry point {ep.value!r} of {dist} failed to import: {type(e).__name__}: {e}"
            errors.append((f"plugins.{ep.name}", msg))
            continue
        _register(pm, plugin, ep.name, f"plugins.{ep.name}", errors)
    return names


def build_registry(
    *,
    load_entry_points: bool = True,
    modules: Iterable[str] = (),
    extra: Iterable[object] = (),
    disable: Iterable[str] = (),
    commands: bool = False,
) -> Registry:
    """Load plugins (entry points, named modules, objects), check hooks, run registration.

    ``disable`` names plugins (entry point names, module names) that are never loaded.
    ``commands``: also collect the plugins' CLI commands (only ``switchyard`` needs them).
    Raises ConfigError with every problem found."""
    pm = SwitchyardPluginManager()
    errors: Errors = []
    disable = list(disable)
    for name in disable:
        pm.set_blocked(name)
    known = _load_entry_points(pm, errors) if load_entry_points else []
    for i, mod_name in enumerate(modules):
        known.append(mod_name)
        if pm.is_blocked(mod_name) or pm.has_plugin(mod_name):
            continue
        try:
            mod = importlib.import_module(mod_name)
        except Exception as e:  # noqa: BLE001 - a broken module is reported, not raised
            msg = f"cannot import plugin module {mod_name!r}: {type(e).__name__}: {e}"
            errors.append((f"plugins[{i}]", msg))
            continue
        if not pm.is_registered(mod):
            _register(pm, mod, mod_name, f"plugins[{i}]", errors)
    for obj in extra:
        name = pm.get_canonical_name(obj)
        known.append(name)
        if not pm.is_blocked(name):
            _register(pm, obj, None, "plugins", errors)
    for i, name in enumerate(disable):
        if name not in known:
            msg = f"no plugin named {name!r} (known: {', '.join(sorted(set(known))) or 'none'})"
            errors.append((f"disable_plugins[{i}]", msg))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        errors.append((f"plugins.{pm.get_name(e.plugin) or e.plugin}",
                       f"unknown hook (misspelled?): {e}"))
    if errors:
        raise ConfigError(errors)
    reg = Registry(pm=pm)
    _fill(reg, commands, errors)
    if errors:
        raise ConfigError(errors)
    return reg


def _fill(reg: Registry, commands: bool, errors: Errors) -> None:
    """Run the registration hooks, each into its table of ``reg``."""
    pm = reg.pm
    for hook, table, kind, make in (
        ("switchyard_register_backends", reg.backends, "backend plugin", _backend_value),
        ("switchyard_register_policies", reg.policies, "policy", _plain_value),
        ("switchyard_register_plan_editors", reg.plan_editors, "plan editor", _plain_value),
        ("switchyard_register_state_stores", reg.state_stores, "state store", _plain_value),
        ("switchyard_register_ledgers", reg.ledgers, "ledger", _plain_value),
        ("switchyard_register_stages", reg.stages, "seam", _stage_value),
        ("switchyard_register_caches", reg.caches, "cache", _plain_value),
        ("switchyard_register_judges", reg.judges, "judge", _plain_value),
        ("switchyard_register_compressors", reg.compressors, "compressor", _plain_value),
    ):
        _call_registration(pm, hook, table, kind, make, errors)
    if commands:
        _call_registration(pm, "switchyard_register_commands", reg.commands, "command",
                           _command_value, errors)
        _command_groups(reg.commands, errors)
