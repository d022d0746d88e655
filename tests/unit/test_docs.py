"""The docs keep up with the code (datasette's test_docs.py is the model): every hook has a
section in docs/plugins.md headed by its signature, and every config key, of the Settings
and of every built-in backend plugin's model, is in docs/config.md."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway import hookspecs
from gateway.config import BackendConfig, Settings
from gateway.registry import build_registry

DOCS = Path(__file__).resolve().parents[2] / "docs"
PLUGINS_MD = (DOCS / "plugins.md").read_text()
CONFIG_MD = (DOCS / "config.md").read_text()


def hook_signatures() -> dict[str, str]:
    marker = "switchyard_spec"
    return {
        name: f"{name}({', '.join(inspect.signature(fn).parameters)})"
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, marker)
    }


def test_the_hooks_are_found() -> None:
    assert "switchyard_register_backends(register)" in hook_signatures().values()


@pytest.mark.parametrize("name", sorted(hook_signatures()))
def test_every_hook_has_a_section_headed_by_its_signature(name: str) -> None:
    heading = f"### `{hook_signatures()[name]}`"
    assert heading in PLUGINS_MD.splitlines(), f"docs/plugins.md needs a section: {heading}"


def test_every_hook_section_is_a_real_hook() -> None:
    documented = re.findall(r"^### `(switchyard_\w+\(.*\))`$", PLUGINS_MD, re.MULTILINE)
    assert sorted(documented) == sorted(hook_signatures().values())


@pytest.mark.parametrize("name", sorted(hook_signatures()))
def test_every_hookspec_says_when_it_is_called_and_what_it_returns(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert "Called" in doc and ("Returns" in doc or "results are ignored" in doc), name


# ---- config ------------------------------------------------------------------------------


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``, and "[]" for a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    for arg in typing.get_args(annotation):
        model, suffix = _model_in(arg)
        if model is not None:
            return model, ("[]" if typing.get_origin(annotation) is list else "") + suffix
    return None, ""


def field_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key of a model as it is written in YAML: ``server.port``, ``routes[].name``."""
    for name, field in model.model_fields.items():
        sub, suffix = _model_in(field.annotation)
        if sub is not None and name != "backends":  # backends: their own section, below
            yield from field_paths(sub, f"{prefix}{name}{suffix}.")
        else:
            yield prefix + name


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    end = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE).search(text, start + len(heading))
    return text[start:end.start() if end else len(text)]


def documented(text: str, key: str) -> bool:
    return f"`{key}`" in text


@pytest.mark.parametrize("key", sorted(field_paths(Settings)))
def test_every_setting_is_documented(key: str) -> None:
    assert documented(CONFIG_MD, key), f"docs/config.md does not document `{key}`"


@pytest.mark.parametrize("key", sorted(field_paths(BackendConfig)))
def test_every_common_backend_key_is_documented(key: str) -> None:
    assert documented(section(CONFIG_MD, "## Backend sections"), key), key


def builtin_backend_plugins() -> dict[str, type[BackendConfig]]:
    return {name: entry.value[1] for name, entry in build_registry().backends.items()
            if entry.builtin}


def own_keys(model: type[BackendConfig]) -> list[str]:
    """The keys a plugin adds to BackendConfig, or whose type or default it changes."""
    base = BackendConfig.model_fields
    return [
        name for name, f in model.model_fields.items()
        if name not in base or f.annotation != base[name].annotation
        or f.get_default(call_default_factory=True) != base[name].get_default(call_default_factory=True)
    ]


def test_the_builtin_plugins_are_found() -> None:
    assert {"llamacpp", "openai_compatible", "vllm", "litellm", "sentence_transformers"} <= \
        set(builtin_backend_plugins())


@pytest.mark.parametrize("plugin", sorted(builtin_backend_plugins()))
def test_every_builtin_backend_plugin_key_is_documented(plugin: str) -> None:
    text = section(CONFIG_MD, f"### `{plugin}`")
    missing = [key for key in own_keys(builtin_backend_plugins()[plugin])
               if not documented(text, key)]
    assert not missing, f"docs/config.md, section `{plugin}`, does not document {missing}"


def test_the_example_configs_are_linked() -> None:
    assert "config/embedded.yaml" in CONFIG_MD and "config/example.yaml" in CONFIG_MD
