"""STYLE.md: mypy --strict on gateway/, plugins/ and policies/ (config in pyproject.toml).
A type error anywhere in the code fails the suite, with mypy's report as the message."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_code_type_checks_strictly() -> None:
    from mypy import api

    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                str(ROOT / "gateway"), str(ROOT / "plugins"),
                                str(ROOT / "policies")])
    assert status == 0, out + err
