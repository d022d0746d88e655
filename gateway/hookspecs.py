"""Switchyard's hooks, grouped by lifecycle phase.

Registration hooks run once at start-up and receive a ``register`` callback: the host sees
every name, refuses duplicates and validates config sections. The request path never goes
through pluggy for its work; it calls the objects registered here. Observer hooks on the
request path may return an awaitable, which the gateway awaits (datasette's await_me_maybe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gateway.accounting import UsageRecord
    from gateway.registry import (
        RegisterBackend,
        RegisterPlanEditor,
        RegisterPolicy,
        RegisterStateStore,
    )

hookspec = pluggy.HookspecMarker("switchyard")
hookimpl = pluggy.HookimplMarker("switchyard")

# ---- start-up: registration -------------------------------------------------------------


@hookspec
def switchyard_register_backends(register: RegisterBackend) -> None:
    """Called once at start-up. Call ``register(plugin_name, factory, config_model)`` for each
    backend kind this plugin provides. ``factory(config, context)`` returns a Backend;
    ``config_model`` is a subclass of ``gateway.BackendConfig`` that a backend section naming
    ``plugin: plugin_name`` is validated against. Returns nothing. A name registered twice is
    a start-up error, except that a plugin overrides a built-in (``trylast``) of the same name.
    """


@hookspec
def switchyard_register_policies(register: RegisterPolicy) -> None:
    """Called once at start-up. Call ``register(name, factory)`` for each routing policy;
    ``factory(options: dict)`` returns a RoutingPolicy (``options`` is the route's
    ``policy_options``). Returns nothing. Duplicate names as for backends."""


@hookspec
def switchyard_register_plan_editors(register: RegisterPlanEditor) -> None:
    """Called once at start-up. Call ``register(name, editor)`` for each plan editor:
    ``editor(request, candidates, plan) -> Plan | None`` runs after the policy, in
    registration order, and returns a changed plan or None to leave it. Must not do I/O."""


@hookspec
def switchyard_register_state_stores(register: RegisterStateStore) -> None:
    """Called once at start-up. Call ``register(kind, factory)``; ``factory(state_config)``
    returns a StateStore for ``state: {kind: ...}``. Returns nothing."""


# ---- request path: observers ------------------------------------------------------------


@hookspec
def switchyard_request_recorded(record: UsageRecord) -> Any:
    """Called after every request is accounted, with its record (cost, tokens, energy...).
    May return an awaitable. Exceptions are logged, never shown to the client. All
    implementations are called; results are ignored."""


@hookspec
def switchyard_budget_alert(team: str, spent_usd: float, budget_usd: float, pct: float) -> Any:
    """Called when a team's spend crosses its soft limit (once per period). May return an
    awaitable. Send the alert anywhere: a pager, a chat channel, e-mail."""
