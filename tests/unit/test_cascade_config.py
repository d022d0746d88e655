"""A route's ``cascade`` section through ``switchyard check-config``: stages that are known
backends of the route, a known judge with options its factory accepts (the scorer's model
file exists), every error at once with its path; a route with a cascade may leave out its
backends; ``switchyard_register_judges`` names are checked like every registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import JudgeFactory, RegisterJudge, hookimpl
from gateway.assembly import build_parts
from gateway.cli import main
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.registry import build_registry

BACKENDS = [{"name": n, "plugin": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
             "model": n} for n in ("cheap", "mid", "big")]


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], *routes: dict[str, Any]) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"backends": BACKENDS, "routes": list(routes),
                                    "ledger": {"kind": "none"}}))
    status = main(["check-config", str(path)])
    out = capsys.readouterr()
    return f"{status}\n{out.out}{out.err}"


def test_a_good_cascade_passes_and_its_backends_default_to_its_stages(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check(tmp_path, capsys, {"name": "ask", "cascade": {
        "stages": ["cheap", "big"], "judge": "logprob", "judge_options": {"threshold": 0.4}}})
    assert out.startswith("0\n") and "ask -> cheap, big" in out
    settings = load_settings(tmp_path / "c.yaml")
    target = build_parts(settings).router.targets["ask"]
    assert target.backends == ("cheap", "big") and target.cascade is not None
    assert target.cascade.stages == ("cheap", "big") and target.cascade.judge_name == "logprob"
    assert target.cascade.on_budget == "first_answer"


def test_every_cascade_error_is_reported_with_its_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check(
        tmp_path, capsys,
        {"name": "a", "backends": ["cheap", "big"], "cascade": {"stages": ["cheap", "mid"]}},
        {"name": "b", "cascade": {"stages": ["cheap", "ghost"]}},
        {"name": "c", "cascade": {"stages": ["cheap", "big"], "judge": "oracle"}},
        {"name": "d", "cascade": {"stages": ["cheap", "big"],
                                  "judge_options": {"threshold": 2, "statistic": "median"}}},
        {"name": "e", "cascade": {"stages": ["cheap", "big"], "judge": "scorer",
                                  "judge_options": {"path": str(tmp_path / "none.judge")}}},
    )
    assert out.startswith("2\n")
    assert "routes[0].cascade.stages[1]: 'mid' is not one of the route's backends" in out
    assert "routes[1].cascade.stages[1]: unknown backend 'ghost'" in out
    assert "routes[2].cascade.judge: unknown judge 'oracle' (known: logprob, scorer" in out
    assert "routes[3].cascade.judge_options.threshold:" in out
    assert "routes[3].cascade.judge_options.statistic:" in out
    assert f"routes[4].cascade.judge_options: path: no model file at {tmp_path}" in out


def test_the_cascade_section_itself_is_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check(tmp_path, capsys,
                {"name": "a", "cascade": {"stages": ["cheap"]}},
                {"name": "b", "cascade": {"stages": ["cheap", "cheap"]}},
                {"name": "c", "cascade": {"stages": ["cheap", "big"], "on_budget": "maybe",
                                          "judge_option": {}}})
    assert out.startswith("2\n")
    assert "routes[0].cascade.stages: List should have at least 2 items" in out
    assert "routes[1].cascade: Value error, a backend appears twice in cascade.stages" in out
    assert "routes[2].cascade.on_budget:" in out
    assert "routes[2].cascade.judge_option: unknown key 'judge_option' (misspelled?)" in out


class Judges:
    def __init__(self, name: str, factory: JudgeFactory, builtin: bool = False) -> None:
        self.__name__ = f"judges-{name}-{id(self)}"
        self.name, self.factory = name, factory

    @hookimpl
    def switchyard_register_judges(self, register: RegisterJudge) -> None:
        register(self.name, self.factory)


def test_judge_names_are_registered_once(tmp_path: Path) -> None:
    def factory(options: dict[str, Any]) -> Any:
        return object()

    with pytest.raises(ConfigError) as e:
        build_registry(load_entry_points=False, extra=[Judges("j", factory), Judges("j", factory)])
    [(_, msg)] = e.value.errors
    assert "judge 'j' is registered by both" in msg
    reg = build_registry(extra=[Judges("logprob", factory)])  # overrides the built-in
    assert reg.judges["logprob"].value is factory and not reg.judges["logprob"].builtin
    assert reg.judges["scorer"].builtin
