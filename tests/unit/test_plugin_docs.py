"""docs/plugins.md shows only what exists: every name it imports or calls from ``gateway``
imports, its Python examples run (the policy-test example passes), and every field of the
types a policy receives is named there."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

import gateway

DOC = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.DOTALL)
# names of the signature block that are typing's, not gateway's
TYPING = {"Any", "Callable", "Protocol", "Sequence", "None"}


def _imported_names(code: str) -> set[str]:
    names: set[str] = set()
    for m in re.finditer(r"^from gateway import (\([^)]*\)|.*)$", code, re.MULTILINE):
        listed = m.group(1).strip("()").replace("\n", " ")
        names |= {n.strip() for n in listed.split(",") if n.strip()}
    return names


def _resolve(dotted: str) -> Any:
    obj: Any = gateway
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_name_the_plugin_docs_import_from_gateway_exists() -> None:
    names = set().union(*(_imported_names(b) for b in BLOCKS))
    assert {"RegisterBackend", "RegisterPolicy", "Plan", "Candidate"} <= names
    missing = sorted(n for n in names if not hasattr(gateway, n))
    assert not missing, f"docs/plugins.md imports names gateway lacks: {missing}"


def test_every_gateway_dotted_name_in_the_plugin_docs_resolves() -> None:
    dotted = set(re.findall(r"\bgateway\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", DOC))
    assert "Candidate.make" in dotted and "evaluate" in dotted
    broken = []
    for name in sorted(dotted):
        try:
            _resolve(name)
        except AttributeError:
            broken.append(name)
    assert not broken, f"docs/plugins.md names gateway.{broken} which do not exist"


def test_the_routing_signatures_name_only_gateway_types() -> None:
    block = next(b for b in BLOCKS if "class RoutingPolicy(Protocol)" in b)
    names = set(re.findall(r"\b[A-Z][A-Za-z]+\b", block)) - TYPING
    assert {"RegisterPolicy", "RegisterPlanEditor", "PolicyFactory", "PlanEditor"} <= names
    missing = sorted(n for n in names if not hasattr(gateway, n))
    assert not missing, f"the routing plugin signatures name {missing}, not in gateway"


def test_the_python_examples_run_and_the_policy_test_example_passes() -> None:
    ns: dict[str, Any] = {}
    ran = 0
    for code in BLOCKS:
        try:
            tree = ast.parse(code)
        except SyntaxError:  # a signature listing, checked above
            continue
        exec(compile(tree, "docs/plugins.md", "exec"), ns)  # noqa: S102 - our own docs
        ran += 1
    tests = [f for name, f in ns.items() if name.startswith("test_") and callable(f)]
    assert ran >= 3 and tests, "the examples and the policy test example are found"
    for t in tests:
        t()


@pytest.mark.parametrize("cls", [gateway.RequestFeatures, gateway.Candidate,
                                 gateway.BackendStats, gateway.BackendLoad,
                                 gateway.Constraints, gateway.Prediction, gateway.Plan,
                                 gateway.Exchange])
def test_every_field_a_policy_receives_is_documented(cls: type) -> None:
    undocumented = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in DOC]
    assert not undocumented, f"docs/plugins.md does not name {cls.__name__}'s {undocumented}"
