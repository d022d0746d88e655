"""Switchyard's hooks, grouped by lifecycle phase (pytest's ``hookspec.py`` is the model).

Start-up: the registration hooks run once, while ``create_app`` (or ``switchyard
check-config``) builds its plugin manager. Each receives a ``register`` callback: the host
sees every name, refuses duplicates and validates config sections. Registration hooks return
nothing; every implementation is called (there is no "first result wins").

Request path: pluggy is synchronous and costs time per call, so the request path never goes
through pluggy for its work; it calls the objects registered at start-up. Only the observer
hooks below run per request, and only when some plugin implements them; an observer may
return an awaitable, which the gateway schedules (datasette's ``await_me_maybe``).

A function named ``switchyard_*`` in a plugin that matches no spec here is a start-up error,
with or without ``@hookimpl``. Built-in plugins mark their hooks ``@hookimpl(trylast=True)``:
what they register is a default that any other plugin may override under the same name.
Every hook has a section in ``docs/plugins.md``, headed by its signature.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import pluggy

# ``Exchange`` (the request object the stages receive, exported from ``gateway``) is
# imported for typing only: the layers contract lets this one edge through.
if TYPE_CHECKING:
    from gateway.accounting import UsageRecord
    from gateway.backend import BackendContext
    from gateway.config import BackendConfig, CacheConfig, LedgerConfig, StateConfig
    from gateway.interfaces import Backend, Judge, PlanEditor, RoutingPolicy
    from gateway.pipeline.exchange import Exchange
    from gateway.state import StateStore

hookspec = pluggy.HookspecMarker("switchyard")
hookimpl = pluggy.HookimplMarker("switchyard")

# ---- the ``register`` callbacks the registration hooks receive ---------------------------
# Exported from ``gateway``: type a hook's ``register`` with them, never ``Any``.

# ``factory(config, context)``: ``config`` is the section validated against the plugin's own
# ``config_model`` (a ``BackendConfig`` subclass, hence ``Any`` here: a factory may name its
# subclass), ``context`` a ``gateway.BackendContext``. A ``BaseBackend`` subclass is one.
BackendFactory = Callable[[Any, "BackendContext"], "Backend"]
# ``factory(options)``: the route's ``policy_options``.
PolicyFactory = Callable[[dict[str, Any]], "RoutingPolicy"]
# ``factory(state_config)``: the validated ``state`` section.
StateFactory = Callable[["StateConfig"], "StateStore"]


# ``stage(exchange)``: one step of the request path (``compress``, ``cache_lookup``); returns
# None, or an awaitable when it does I/O.
Stage = Callable[["Exchange"], "Awaitable[None] | None"]
# ``cache_store(exchange, answer)``: after a success, the answer the client got.
CacheStore = Callable[["Exchange", dict[str, Any]], Awaitable[None]]
# The seams a plugin may fill with ``switchyard_register_stages``, in request order.
STAGE_SEAMS = ("compress", "cache_lookup", "cache_store")
# ``factory(options)``: a route's ``cascade.judge_options``; returns a ``gateway.Judge``.
JudgeFactory = Callable[[dict[str, Any]], "Judge"]


class RegisterStage(Protocol):
    """``register(seam, stage)``: ``seam`` one of ``STAGE_SEAMS``; a ``Stage`` for
    ``compress`` and ``cache_lookup``, a ``CacheStore`` for ``cache_store``."""

    @overload
    def __call__(self, seam: Literal["compress", "cache_lookup"], stage: Stage) -> None: ...
    @overload
    def __call__(self, seam: Literal["cache_store"], stage: CacheStore) -> None: ...


class Cache(Protocol):
    """A response cache (``switchyard_register_caches``): ``lookup`` is the request path's
    ``cache_lookup`` stage, ``store`` its ``cache_store``; ``start`` and ``close`` run with
    the gateway (connections, models: never in the factory)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def lookup(self, exchange: Exchange) -> Awaitable[None] | None: ...

    async def store(self, exchange: Exchange, answer: dict[str, Any]) -> None: ...


# ``factory(config, routes, state)``: the validated top-level ``cache`` section, each route's
# settings (the section with the route's ``cache`` changes applied), the ``state`` section.
CacheFactory = Callable[["CacheConfig", Mapping[str, "CacheConfig"], "StateConfig"], Cache]


class RegisterCache(Protocol):
    """``register(kind, factory)``: ``factory(config, routes, state) -> Cache``."""

    def __call__(self, kind: str, factory: CacheFactory) -> None: ...


class RegisterBackend(Protocol):
    """``register(plugin, factory, config_model=BackendConfig)``."""

    def __call__(
        self, plugin: str, factory: BackendFactory, config_model: type[BackendConfig] = ...
    ) -> None: ...


class RegisterPolicy(Protocol):
    """``register(name, factory)``: ``factory(options) -> RoutingPolicy``."""

    def __call__(self, name: str, factory: PolicyFactory) -> None: ...


class RegisterPlanEditor(Protocol):
    """``register(name, editor)``: ``editor(request, candidates, plan) -> Plan | None``."""

    def __call__(self, name: str, editor: PlanEditor) -> None: ...


class RegisterJudge(Protocol):
    """``register(name, factory)``: ``factory(options) -> Judge``."""

    def __call__(self, name: str, factory: JudgeFactory) -> None: ...


class Compression(Protocol):
    """What a ``Compressor`` returns: the messages to send instead (same roles, same order),
    the words before and after, which parts it changed (``"messages[1].content"``) and
    which it kept verbatim, its own time in ms and the stages it ran (``["coarse"]``)."""

    @property
    def messages(self) -> list[dict[str, Any]]: ...
    @property
    def words_before(self) -> int: ...
    @property
    def words_after(self) -> int: ...
    @property
    def changed(self) -> list[str]: ...
    @property
    def kept_verbatim(self) -> list[str]: ...
    @property
    def ms(self) -> float: ...
    @property
    def stages(self) -> list[str]: ...


class Compressor(Protocol):
    """A prompt compressor (``switchyard_register_compressors``): ``compress`` a chat
    request's messages toward ``ratio`` (words in over words out) or ``token_budget``; the
    messages unchanged (``changed == []``) when there is nothing it may change or the prompt
    is under ``min_words``. Blocking work runs in a worker thread, never on the event loop."""

    async def compress(self, messages: list[dict[str, Any]], *, ratio: float | None = None,
                       token_budget: int | None = None,
                       min_words: int | None = None) -> Compression: ...


# ``factory(options)``: the ``compress.options`` section; returns a ``Compressor``.
CompressorFactory = Callable[[dict[str, Any]], Compressor]


class RegisterCompressor(Protocol):
    """``register(kind, factory)``: ``factory(options) -> Compressor``."""

    def __call__(self, kind: str, factory: CompressorFactory) -> None: ...


class RegisterStateStore(Protocol):
    """``register(kind, factory)``: ``factory(state_config) -> StateStore``."""

    def __call__(self, kind: str, factory: StateFactory) -> None: ...


class LedgerStore(Protocol):
    """A ledger (``switchyard_register_ledgers``): where every ``UsageRecord`` is kept.
    ``write`` runs on the event loop for every request: it only buffers (never blocks,
    never raises; ``gateway.BatchWriter`` does the batching, the retries and the bound).
    ``start`` (connect, migrate) and ``close`` (drain) run with the gateway. ``query(sql,
    params)`` reads rows in SQLite's SQL with ``?`` placeholders (the ledger translates them),
    blocking: call it off the event loop. ``dialect`` (``sqlite`` or ``postgres``) tells
    ``gateway.ledger_queries`` which few expressions to use."""

    @property
    def dialect(self) -> str: ...
    @property
    def dropped(self) -> int: ...
    @property
    def buffered(self) -> int: ...

    async def start(self) -> None: ...

    def write(self, rec: UsageRecord) -> None: ...

    def close(self) -> None: ...

    def query(self, sql: str, params: tuple[Any, ...] = ...) -> list[dict[str, Any]]: ...


# ``factory(ledger_config)``: the validated ``ledger`` section; no I/O (``start`` does it).
LedgerFactory = Callable[["LedgerConfig"], LedgerStore]


class RegisterLedger(Protocol):
    """``register(kind, factory)``: ``factory(ledger_config) -> LedgerStore``."""

    def __call__(self, kind: str, factory: LedgerFactory) -> None: ...


# ``configure(parser)`` adds a command's options to its ``argparse`` parser; ``run(args)``
# does the work and returns the exit status.
CommandConfigure = Callable[[argparse.ArgumentParser], None]
CommandRun = Callable[[argparse.Namespace], int]


class RegisterCommand(Protocol):
    """``register(name, configure, run, help)``: ``name`` a space-separated command path
    (``"eval cache"``), run as ``switchyard eval cache ...``."""

    def __call__(
        self, name: str, configure: CommandConfigure, run: CommandRun, help: str = ...
    ) -> None: ...


# ---- start-up: registration -------------------------------------------------------------


@hookspec
def switchyard_register_backends(register: RegisterBackend) -> None:
    """Register backend plugins: the kinds of place a request can run.

    Called once at start-up, before any backend section is read. Call
    ``register(plugin, factory, config_model)`` once per backend kind this plugin provides:

    - ``plugin``: the name a backend section selects with ``plugin: <name>``;
    - ``config_model``: a subclass of ``gateway.BackendConfig`` (the default). Every backend
      section naming this plugin is validated against it, so an unknown or mistyped key is a
      start-up error reported with its path (``backends[1].base_urll``);
    - ``factory(config, context)``: called once per configured backend with the validated
      config and a ``gateway.BackendContext``; returns a ``gateway.Backend`` (subclass
      ``gateway.BaseBackend``). It must not do I/O: ``Backend.start()`` does that.

    Returns nothing; all implementations are called. A name registered by two plugins is a
    start-up error naming both, except that a plugin overrides a ``trylast`` (built-in)
    registration of the same name.
    """


@hookspec
def switchyard_register_policies(register: RegisterPolicy) -> None:
    """Register routing policies.

    Called once at start-up. Call ``register(name, factory)`` for each policy a route may
    name with ``policy: <name>``. ``factory(options)`` receives the route's
    ``policy_options`` (a dict, empty by default) and returns a ``gateway.RoutingPolicy``:
    an object with a ``name`` and a pure ``plan(request, candidates, constraints) -> Plan``
    (no I/O; it runs on every request).

    Returns nothing; all implementations are called. Duplicate names are refused as for
    backends, and a plugin overrides a ``trylast`` registration of the same name.
    """


@hookspec
def switchyard_register_plan_editors(register: RegisterPlanEditor) -> None:
    """Register plan editors: functions that adjust a policy's plan.

    Called once at start-up. Call ``register(name, editor)`` for each editor.
    ``editor(request, candidates, plan)`` runs on every request after the route's policy,
    in registration order, and returns a changed ``Plan`` or ``None`` to leave the plan as
    it is. It must be pure and fast: no I/O.

    Returns nothing; all implementations are called. Duplicate names are refused.
    """


@hookspec
def switchyard_register_state_stores(register: RegisterStateStore) -> None:
    """Register shared-state stores (budgets, rate limits, health shared by replicas).

    Called once at start-up. Call ``register(kind, factory)``; ``state: {kind: <kind>}``
    selects it and ``factory(state_config)`` returns the store, built from the validated
    ``state`` section.

    Returns nothing; all implementations are called. Duplicate kinds are refused, and a
    plugin overrides a ``trylast`` registration of the same kind.
    """


@hookspec
def switchyard_register_ledgers(register: RegisterLedger) -> None:
    """Register ledgers: where every request's ``UsageRecord`` is written (docs/ledger.md).

    Called once at start-up. Call ``register(kind, factory)``; ``ledger: {kind: <kind>}``
    selects one (``sqlite``, the built-in default; ``postgres``, built in, for many
    replicas; ``none`` turns the ledger off) and ``factory(ledger_config)`` builds it from
    the validated ``ledger`` section, without I/O (raise ``ValueError`` for a section it
    refuses). The gateway awaits its ``start`` before serving and calls its ``close`` at
    shutdown; the request path calls only its ``write``.

    Returns nothing; all implementations are called. Duplicate kinds are refused, and a
    plugin overrides a ``trylast`` registration of the same kind.
    """


@hookspec
def switchyard_register_stages(register: RegisterStage) -> None:
    """Fill the optional seams of the request path (``gateway.pipeline.stages.ORDER``).

    Called once at start-up. Call ``register(seam, stage)`` with ``seam`` one of
    ``compress`` (rewrite ``exchange.forwarded`` before the prompt is counted),
    ``cache_lookup`` (set ``exchange.answer`` to answer without a backend), both a
    ``Stage``; ``cache_store`` (a ``CacheStore``, called after a successful
    non-streaming answer). The request path calls the registered objects directly; a seam
    nobody fills is not in the stage list. (A cascade's judges: ``switchyard_register_judges``.)

    Returns nothing; all implementations are called. An unknown seam, or one seam filled by
    two plugins, is a start-up error; a plugin overrides a ``trylast`` registration.
    """


@hookspec
def switchyard_register_commands(register: RegisterCommand) -> None:
    """Register command-line commands: ``switchyard <name> ...`` (evaluations, training).

    Called once by ``switchyard`` when the first word on its command line is not a built-in
    command (``serve``, ``check-config``, the admin commands), never by ``create_app``. Call
    ``register(name, configure, run, help)`` once per command: ``name`` is a space-separated
    path of lowercase words (``"eval cache"`` runs as ``switchyard eval cache``; commands
    sharing a first word are grouped under it), ``configure(parser)`` adds its options to an
    ``argparse.ArgumentParser``, ``run(args)`` gets the parsed ``argparse.Namespace`` and
    returns the exit status; ``help`` is its one line in ``switchyard --help``.

    Returns nothing; all implementations are called. A name registered by two plugins, a
    built-in command's name, or a name that is also the group of another command is an
    error; a plugin overrides a ``trylast`` registration of the same name.
    """


@hookspec
def switchyard_register_judges(register: RegisterJudge) -> None:
    """Register judges: what decides, between the stages of a route's ``cascade``, whether
    an answer is good enough to send or the next (stronger) stage runs.

    Called once at start-up. Call ``register(name, factory)`` for each judge a route may
    name with ``cascade: {judge: <name>}``. ``factory(options)`` receives the route's
    ``cascade.judge_options`` (a dict, empty by default) and returns a ``gateway.Judge``: an
    object with ``logprobs`` (ask the judged calls for token log-probabilities) and an async
    ``verdict(request, answer, step) -> gateway.Verdict``. It is called once per route that
    names it, at start-up and by ``check-config``: load models there, and raise
    ``ValueError`` (or a pydantic ``ValidationError``) for options it refuses.

    Returns nothing; all implementations are called. Duplicate names are refused, and a
    plugin overrides a ``trylast`` registration of the same name.
    """


@hookspec
def switchyard_register_caches(register: RegisterCache) -> None:
    """Register response caches: what answers a request without a backend call.

    Called once at start-up, and used only when the config turns the cache on (``cache:
    {enabled: true}``, or a route's ``cache``). Call ``register(kind, factory)``; ``cache:
    {kind: <kind>}`` selects one (``semantic``, the built-in, by default), and
    ``factory(config, routes, state)`` builds it from the validated ``cache`` section, each
    route's settings and the ``state`` section, without I/O. The gateway calls the cache's
    ``lookup`` as the ``cache_lookup`` stage and its ``store`` as ``cache_store`` (after a
    successful answer, streamed ones included); ``start``/``close`` run with the gateway.

    Returns nothing; all implementations are called. Duplicate kinds are refused, and a
    plugin overrides a ``trylast`` registration of the same kind. A configured cache and a
    plugin that fills ``cache_lookup`` or ``cache_store`` itself is a start-up error.
    """


@hookspec
def switchyard_register_compressors(register: RegisterCompressor) -> None:
    """Register prompt compressors: what makes a long prompt shorter before it is counted,
    budgeted, routed and sent (docs/compression.md).

    Called once at start-up, and used only when the config turns compression on
    (``compress: {enabled: true}``, or a route's ``compress``). Call ``register(kind,
    factory)``; ``compress: {kind: <kind>}`` selects one (``question_aware``, the built-in,
    by default), and ``factory(options)`` builds it once from ``compress.options`` without
    loading anything heavy (the gateway warms it up at start). The gateway's ``compress``
    stage calls its ``compress`` where it pays, checks that only message text changed, and
    accounts the saving; a compressor that raises leaves the prompt as it was.

    Returns nothing; all implementations are called. Duplicate kinds are refused, and a
    plugin overrides a ``trylast`` registration of the same kind. Configured compression
    and a plugin that fills the ``compress`` seam itself is a start-up error.
    """


# ---- request path: observers ------------------------------------------------------------


@hookspec
def switchyard_request_recorded(record: UsageRecord) -> Any:
    """Observe every request once it is accounted.

    Called after each request (success or failure) with its ``gateway.UsageRecord``:
    backend, tokens, cost in USD, energy in joules, gCO2, bytes, TTFT, latency, status.
    Runs on the event loop after the response is complete; keep it quick. It may return an
    awaitable, which the gateway schedules without waiting for it (and awaits at shutdown).

    All implementations are called; their results are ignored. Only called when at least
    one plugin implements it.
    """


@hookspec
def switchyard_budget_alert(team: str, spent_usd: float, budget_usd: float, pct: float) -> Any:
    """Observe a team's spend crossing its soft limit.

    Called once per budget period per team, when ``spent_usd`` first reaches ``pct``
    percent of ``budget_usd``. Send the alert anywhere: a pager, a chat channel, e-mail. It
    may return an awaitable, which the gateway schedules without waiting for it.

    All implementations are called; their results are ignored.
    """
