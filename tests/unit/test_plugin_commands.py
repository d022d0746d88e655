"""``switchyard_register_commands``: a plugin installed with an entry point adds a command that
``switchyard`` runs (its options parsed, its exit status returned); bad names are refused."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import RegisterCommand, hookimpl
from gateway.cli import build_parser
from gateway.errors import ConfigError
from gateway.registry import BUILTIN_COMMANDS, build_registry

SWITCHYARD = Path(sys.executable).parent / "switchyard"

PLUGIN = '''
import argparse
from gateway import RegisterCommand, hookimpl

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True)
    parser.add_argument("--times", type=int, default=1)

def run(args: argparse.Namespace) -> int:
    print(" ".join([f"hello {args.name}"] * args.times))
    return 3

@hookimpl
def switchyard_register_commands(register: RegisterCommand) -> None:
    register("greet loud", configure, run, help="greets somebody loudly")
'''


def _switchyard(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SWITCHYARD), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def _install(tmp_path: Path) -> dict[str, str]:
    """A third-party package with an entry point, found on PYTHONPATH like an installed one."""
    (tmp_path / "sy_greeter.py").write_text(PLUGIN)
    info = tmp_path / "sy_greeter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sy-greeter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[switchyard]\ngreeter = sy_greeter\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return env


def test_an_installed_plugins_command_runs_through_switchyard(tmp_path: Path) -> None:
    env = _install(tmp_path)
    r = _switchyard("greet", "loud", "--name", "Ada", "--times", "2", env=env)
    assert r.returncode == 3, r.stderr  # the command's own exit status
    assert r.stdout.strip() == "hello Ada hello Ada"
    helped = _switchyard("greet", "--help", env=env)
    assert helped.returncode == 0 and "greets somebody loudly" in helped.stdout
    bad = _switchyard("greet", "loud", env=env)
    assert bad.returncode == 2 and "--name" in bad.stderr  # argparse names the missing option


def _plugin(*names: str) -> Any:
    class Plugin:
        @hookimpl
        def switchyard_register_commands(self, register: RegisterCommand) -> None:
            for name in names:
                register(name, lambda p: None, lambda a: 0, help=name)

    return Plugin()


@pytest.mark.parametrize(("names", "says"), [
    (("serve",), "'serve' is a built-in command"),
    (("eval  cache",), "lowercase words"),
    (("Eval",), "lowercase words"),
    (("eval", "eval cache"), "also the group of 'eval cache'"),
])
def test_bad_command_names_stop_the_cli(names: tuple[str, ...], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_registry(load_entry_points=False, extra=[_plugin(*names)], commands=True)
    assert says in str(e.value)


def test_two_plugins_cannot_register_one_command() -> None:
    with pytest.raises(ConfigError, match="registered by both"):
        build_registry(load_entry_points=False, extra=[_plugin("eval x"), _plugin("eval x")],
                       commands=True)


def test_commands_are_collected_only_for_the_cli() -> None:
    reg = build_registry(load_entry_points=False, extra=[_plugin("eval x")])
    assert reg.commands == {}
    reg = build_registry(load_entry_points=False, extra=[_plugin("eval x")], commands=True)
    assert reg.commands["eval x"].value.help == "eval x"


def test_the_builtin_command_names_are_the_parsers() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == BUILTIN_COMMANDS
