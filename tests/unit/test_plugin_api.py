"""The typed plugin API: every registration hook, in the specs and in every installed plugin
(built-ins, the example routing plugin, the echo test plugin), types its ``register`` with the
callback type ``gateway`` exports for that hook, never ``Any``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

import gateway
from gateway import hookspecs
from gateway.registry import build_registry

CALLBACKS = {
    "switchyard_register_backends": "RegisterBackend",
    "switchyard_register_policies": "RegisterPolicy",
    "switchyard_register_plan_editors": "RegisterPlanEditor",
    "switchyard_register_state_stores": "RegisterStateStore",
}


def _register_annotation(func: Callable[..., object]) -> object:
    return inspect.signature(func).parameters["register"].annotation


@pytest.mark.parametrize("hook", sorted(CALLBACKS))
def test_every_registration_hook_types_register_with_the_exported_callback(hook: str) -> None:
    expected = CALLBACKS[hook]
    assert hasattr(gateway, expected)
    assert _register_annotation(getattr(hookspecs, hook)) == expected
    impls = build_registry().pm.hook.__dict__[hook].get_hookimpls()
    plugins = {impl.plugin_name for impl in impls}
    assert impls, hook
    wrong = {impl.plugin_name: _register_annotation(impl.function) for impl in impls
             if _register_annotation(impl.function) not in (expected, getattr(gateway, expected))}
    assert not wrong, f"{hook}: register typed otherwise than {expected} in {wrong}"
    if hook == "switchyard_register_policies":
        assert "code_router" in plugins, "the example plugin is checked too"
    if hook == "switchyard_register_backends":
        assert "echo" in plugins, "the echo test plugin is checked too"
