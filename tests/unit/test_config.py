"""Settings: YAML, ``${VAR}`` substitution, ``SWITCHYARD_*`` overrides, every error at once
with its path, secrets kept secret, and the example configs in config/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from gateway.config import EMBEDDED_BACKENDS, check_settings, load_settings
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "switchyard.yaml"
    p.write_text(text)
    return p


def errors_of(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    return dict(exc.value.errors)


def test_an_empty_file_is_the_embedded_default(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""))
    assert [b.name for b in s.backends] == [b["name"] for b in EMBEDDED_BACKENDS]
    assert [(r.name, r.backends) for r in s.routes] == [("auto", ["local-smol"])]


def test_the_embedded_default_file_spells_out_the_default() -> None:
    spelled = load_settings(ROOT / "config" / "embedded.yaml")
    default = load_settings(None)
    assert spelled.model_dump(exclude={"backends"}) == default.model_dump(exclude={"backends"})
    assert [(b.name, b.plugin) for b in spelled.backends] == \
        [(b.name, b.plugin) for b in default.backends]


def test_env_references_are_substituted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SY_TEST_HOST", "0.0.0.0")
    monkeypatch.setenv("SY_TEST_EMPTY", "")
    monkeypatch.delenv("SY_TEST_UNSET", raising=False)
    s = load_settings(write(tmp_path, """
server: {host: "${SY_TEST_HOST}", port: "${SY_TEST_UNSET:-9123}"}
ledger: {path: "/var/${SY_TEST_EMPTY:-lib}/ledger.sqlite3"}
"""))
    assert s.server.host == "0.0.0.0" and s.server.port == 9123
    assert s.ledger.path == "/var/lib/ledger.sqlite3"  # :- also replaces an empty value


def test_a_missing_env_reference_is_an_error_with_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SY_TEST_UNSET", raising=False)
    errors = errors_of(write(tmp_path, "admin_key: ${SY_TEST_UNSET}\n"))
    assert errors == {"admin_key": "environment variable SY_TEST_UNSET is not set"}


def test_switchyard_env_vars_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_SERVER__PORT", "9090")
    monkeypatch.setenv("SWITCHYARD_LOG_LEVEL", "debug")
    monkeypatch.setenv("SWITCHYARD_STATE__KIND", "redis")
    s = load_settings(write(tmp_path, "server: {host: 0.0.0.0, port: 8000}\nlog_level: warning\n"))
    assert s.server.port == 9090 and s.log_level == "debug" and s.state.kind == "redis"
    assert s.server.host == "0.0.0.0"  # the rest of the section still comes from the file


def test_a_bad_env_override_is_reported_with_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHYARD_SERVER__PORT", "eighty")
    assert "server.port" in errors_of(write(tmp_path, ""))


def test_every_error_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SY_TEST_UNSET", raising=False)
    errors = errors_of(write(tmp_path, """
server: {port: eighty, hots: x}
log_level: loud
backends:
  - {name: a, plugin: llamacpp}
  - {name: a, plugin: llamacpp}
  - {plugin: llamacpp, api_key: "${SY_TEST_UNSET}"}
routes:
  - {name: auto, backends: [a, ghost]}
"""))
    assert set(errors) == {
        "server.port", "server.hots", "log_level", "backends[1].name", "backends[2].name",
        "backends[2].api_key", "routes[0].backends[1]",
    }
    assert errors["server.hots"] == "unknown key 'hots' (misspelled?)"
    assert errors["routes[0].backends[1]"].startswith("unknown backend 'ghost'")
    assert "more than once" in errors["backends[1].name"]


def test_check_settings_keeps_the_sections_that_validated(tmp_path: Path) -> None:
    settings, errors = check_settings(write(tmp_path, """
server: {port: eighty}
backends: [{name: x, plugin: nosuch}]
"""))
    assert [path for path, _ in errors] == ["server.port"]
    assert [b.plugin for b in settings.backends] == ["nosuch"]  # for the plugin checks


def test_secrets_are_secret_and_never_shown(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
admin_key: sk-admin-0123456789
state: {kind: redis, url: "redis://:hunter2@127.0.0.1:6379/0"}
backends:
  - {name: cloud, plugin: openai_compatible, base_url: "http://127.0.0.1:1/v1", model: m,
     api_key: sk-backend-0123456789}
"""))
    assert isinstance(s.admin_key, SecretStr) and isinstance(s.state.url, SecretStr)
    assert s.admin_key.get_secret_value() == "sk-admin-0123456789"
    shown = repr(s) + str(s)
    for secret in ("sk-admin-0123456789", "hunter2", "sk-backend-0123456789"):
        assert secret not in shown


def test_a_secret_in_a_broken_file_is_not_quoted(tmp_path: Path) -> None:
    bad_yaml = write(tmp_path, "admin_key: sk-admin-0123456789\nserver: {port: [1,\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(bad_yaml)
    assert "not valid YAML at line" in str(exc.value)
    assert "sk-admin" not in str(exc.value)


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
    s = load_settings(ROOT / "config" / "example.yaml")
    plugins = {b.plugin for b in s.backends}
    assert {"llamacpp", "vllm", "litellm", "openai_compatible"} <= plugins
    raw = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    for b in raw["backends"]:  # the shape of the issue: every backend is priced and metered
        assert "pricing" in b and "energy" in b, b["name"]


def test_example_config_needs_its_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    errors = errors_of(ROOT / "config" / "example.yaml")
    assert any("OPENAI_API_KEY" in msg for msg in errors.values())
