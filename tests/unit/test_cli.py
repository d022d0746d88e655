"""``switchyard check-config FILE``: every error at once with its path, exit status 2; a
summary and 0 on success; secrets never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
SWITCHYARD = Path(sys.executable).parent / "switchyard"

SECRETS = ("sk-admin-0123456789", "hunter2", "sk-backend-0123456789")

BROKEN = """
admin_key: sk-admin-0123456789
server: {port: eighty}
state: {kind: redis, url: "redis://:hunter2@127.0.0.1:6379/0"}
backends:
  - {name: local, plugin: lamacpp}
  - {name: remote, plugin: openai_compatible, base_url: "http://127.0.0.1:1/v1", model: m,
     api_key: "${SY_TEST_MISSING_KEY}"}
  - {name: other, plugin: openai_compatible, base_url: "http://127.0.0.1:1/v1", model: m,
     api_key: sk-backend-0123456789, timeout: 5}
routes:
  - {name: auto, backends: [local, remote, ghost]}
  - {name: odd, backends: [other], policy: fastest_please}
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "switchyard.yaml"
    path.write_text(text)
    rc = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> dict[str, str]:
    lines = [ln.strip() for ln in err.splitlines() if ln.startswith("  ")]
    return dict(ln.split(": ", 1) for ln in lines)


def test_every_error_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SY_TEST_MISSING_KEY", raising=False)
    rc, out, err = check(tmp_path, BROKEN, capsys)
    assert rc == 2 and out == ""
    errors = error_lines(err)
    assert set(errors) == {
        "server.port",              # bad type
        "backends[0].plugin",       # unknown plugin
        "backends[1].api_key",      # missing ${ENV_VAR}
        "backends[2].timeout",      # a key the plugin's model does not have
        "routes[0].backends[2]",    # unknown route backend
        "routes[1].policy",         # unknown policy
    }
    assert "'lamacpp'" in errors["backends[0].plugin"] and "llamacpp" in errors["backends[0].plugin"]
    assert "SY_TEST_MISSING_KEY" in errors["backends[1].api_key"]
    assert "'ghost'" in errors["routes[0].backends[2]"]
    assert "6 configuration error(s)" in err


def test_secrets_are_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SY_TEST_MISSING_KEY", raising=False)
    rc, out, err = check(tmp_path, BROKEN, capsys)
    assert rc == 2
    good = BROKEN.replace("{port: eighty}", "{port: 8080}").replace("lamacpp", "llamacpp") \
        .replace('"${SY_TEST_MISSING_KEY}"', "sk-backend-0123456789") \
        .replace(", timeout: 5", "").replace(", ghost", "").replace(", policy: fastest_please", "")
    rc_ok, out_ok, err_ok = check(tmp_path, good, capsys)
    assert rc_ok == 0, err_ok
    for secret in SECRETS:
        assert secret not in out + err + out_ok + err_ok


def test_a_good_file_gets_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = check(tmp_path, """
backends:
  - {name: local, plugin: llamacpp, n_ctx: 512}
  - {name: remote, plugin: openai_compatible, base_url: "http://127.0.0.1:1/v1", model: m}
routes:
  - {name: auto, backends: [local, remote]}
""", capsys)
    assert rc == 0 and err == ""
    assert ": OK" in out
    assert "2 backends: local (llamacpp), remote (openai_compatible)" in out
    assert "1 routes: auto -> local, remote [first_healthy]" in out


def test_an_unreadable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_embedded_default_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config" / "embedded.yaml")]) == 0
    assert "local-smol (llamacpp), minilm (sentence_transformers)" in capsys.readouterr().out


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | env
    return subprocess.run([str(SWITCHYARD), *args], capture_output=True, text=True, timeout=120,
                          check=False, env=full_env, cwd=ROOT)


def test_the_example_config_passes_with_its_key_set() -> None:
    done = run_cli("check-config", "config/example.yaml", OPENAI_API_KEY="sk-dummy-key-42")
    assert done.returncode == 0, done.stderr
    assert "4 backends" in done.stdout and "gpt-4o-mini (litellm)" in done.stdout
    assert "sk-dummy-key-42" not in done.stdout + done.stderr


def test_the_installed_command_exits_2_with_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BROKEN)
    done = run_cli("check-config", str(path), SWITCHYARD_LOG_LEVEL="loud")
    assert done.returncode == 2
    assert "log_level" in done.stderr  # the environment override is checked too
    assert "backends[0].plugin" in done.stderr and "routes[0].backends[2]" in done.stderr
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr


PICKY = '''
from gateway import hookimpl


class Picky:
    name = "picky"

    def plan(self, request, candidates, constraints):
        raise AssertionError("never routed in these tests")


def make(options):
    if options:
        raise ValueError(f"policy 'picky' takes no option {next(iter(options))!r}")
    return Picky()


@hookimpl
def switchyard_register_policies(register):
    register("picky", make)
'''

WRONG_OPTIONS = """
plugins: [sy_test_picky_policy]
backends:
  - {name: remote, plugin: openai_compatible, base_url: "http://127.0.0.1:1/v1", model: m}
routes:
  - {name: a, backends: [remote], policy: picky, policy_options: {colour: red}}
  - {name: b, backends: [remote], policy: weighted,
     policy_options: {weights: {cost: -1, latency: 0, energy: 0}}}
  - {name: c, backends: [remote], policy: first_healthy, policy_options: {fast: true}}
  - {name: d, backends: [remote], policy: picky}
"""


def _picky_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "sy_test_picky_policy.py").write_text(PICKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    path = tmp_path / "options.yaml"
    path.write_text(WRONG_OPTIONS)
    return path


def test_policy_options_a_factory_refuses_are_errors_with_their_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _picky_plugin(tmp_path, monkeypatch)
    try:
        rc = main(["check-config", str(path)])
    finally:
        sys.modules.pop("sy_test_picky_policy", None)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err
    errors = error_lines(err)
    assert set(errors) == {"routes[0].policy_options", "routes[1].policy_options",
                           "routes[2].policy_options"}  # route d: picky takes no options
    assert "'colour'" in errors["routes[0].policy_options"]  # a plugin's own factory
    assert "weights" in errors["routes[1].policy_options"]  # built-in policies too
    assert "first_healthy" in errors["routes[2].policy_options"]


def test_serve_refuses_the_same_options_with_the_same_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _picky_plugin(tmp_path, monkeypatch)
    checked = run_cli("check-config", str(path))
    served = run_cli("serve", "--config", str(path), "--port", "1")
    assert checked.returncode == served.returncode == 2
    assert "Traceback" not in served.stderr  # not a raw ValueError from the app
    assert error_lines(served.stderr) == error_lines(checked.stderr)
    assert "routes[0].policy_options" in error_lines(served.stderr)


def test_check_config_does_not_import_the_http_app() -> None:
    code = ("import sys; from gateway.cli import main; "
            "rc = main(['check-config', 'config/embedded.yaml']); "
            "print(rc, sorted(m for m in sys.modules if m.startswith('gateway.http')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout + done.stderr
