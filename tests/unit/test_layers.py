"""The layers of STYLE.md, kept by import-linter (contracts in pyproject.toml): the code
keeps them, and the contracts really catch a module that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

LAYERS = "gateway layers: cli -> http -> assembly -> pipeline -> leaf modules"
CORE = "gateway never imports plugins or policies (built-ins come through entry points)"
PUBLIC_API = "plugins and policies import only `gateway` (its __init__ API), never its modules"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(root)}  # this tree's packages, not the installed ones
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, check=False,
                          capture_output=True, text=True, timeout=120)


def broken(output: str) -> set[str]:
    return {name for name in (LAYERS, CORE, PUBLIC_API) if f"{name} BROKEN" in output
            or f"{name}BROKEN" in output}


def test_the_code_keeps_its_layers() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_the_contracts_catch_violations(tmp_path: Path) -> None:
    for part in ("gateway", "plugins", "policies"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "gateway" / "config.py").open("a") as f:  # a leaf module reaching up
        f.write("\nfrom gateway.pipeline import routing  # noqa\n")
    with (tmp_path / "gateway" / "errors.py").open("a") as f:  # the core naming a plugin
        f.write("\nimport plugins.vllm  # noqa\n")
    with (tmp_path / "policies" / "first_healthy.py").open("a") as f:  # past the public API
        f.write("\nfrom gateway.pipeline.routing import Router  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1
    assert broken(done.stdout) == {LAYERS, CORE, PUBLIC_API}
    assert "gateway.config -> gateway.pipeline.routing" in done.stdout
    assert "gateway.errors -> plugins.vllm" in done.stdout
    assert "policies.first_healthy -> gateway.pipeline.routing" in done.stdout


def test_plugins_may_import_each_other_and_the_public_api() -> None:
    vllm = (ROOT / "plugins" / "vllm.py").read_text()
    assert "from plugins.openai_compatible import" in vllm  # allowed, and lint passes above
