"""Every LiteLLM config under tests/fixtures/litellm/ (taken from LiteLLM's own repository and
proxy docs, each naming its source): ``switchyard import-litellm`` exits 0, ``check-config``
accepts what it wrote (the variables it references set to dummies), and ``serve`` starts on
it and lists every ``model_name`` in ``GET /v1/models`` with as many backends as the
LiteLLM file had deployments for it (plus its fallbacks' deployments, which follow them).

The imported configs name real providers: the gateway is never sent a request here, its
backends' addresses are pointed at a closed loopback port before ``serve`` (the health
probes of openai_compatible and vllm backends would otherwise reach them), and a guard fails
the test on any connection, or name lookup, that is not for loopback."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import free_port, serve

from gateway.cli import main
from gateway.config import load_settings

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "litellm").glob("*.yaml"))
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def dummy(var: str) -> str:
    if "BASE" in var or "URL" in var:
        return "http://127.0.0.1:9/v1"
    if "PORT" in var:
        return "6379"
    return "127.0.0.1" if "HOST" in var else f"dummy-{var.lower()}"


def _loopback(host: Any) -> bool:
    if host in (None, "localhost", "") or not isinstance(host, str):
        return host in (None, "localhost", "")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any name lookup or connection that is not for loopback is refused and recorded."""
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *a: Any, **kw: Any) -> Any:
        if not _loopback(host.decode() if isinstance(host, bytes) else host):
            attempts.append(f"lookup {host}")
            raise socket.gaierror(socket.EAI_NONAME, "refused by the test: not loopback")
        return real_getaddrinfo(host, *a, **kw)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and not _loopback(address[0]):
            attempts.append(f"connect {address[0]}")
            raise ConnectionRefusedError("refused by the test: not loopback")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"the gateway tried to reach beyond loopback: {attempts}"


def expected_backends(litellm: dict[str, Any]) -> dict[str, int]:
    """From the LiteLLM file itself: each model_name's deployments, plus those of the
    groups (or the deployment ids) its fallbacks name, each deployment once; an alias has
    its target's."""
    own: dict[str, list[int]] = {}
    ids: dict[str, int] = {}
    for i, dep in enumerate(litellm.get("model_list") or []):
        name, model = str(dep.get("model_name")), (dep.get("litellm_params") or {}).get("model")
        if model and "*" not in name and "*" not in str(model):
            own.setdefault(name, []).append(i)
            if (dep.get("model_info") or {}).get("id"):
                ids[str(dep["model_info"]["id"])] = i
    members = {group: list(deps) for group, deps in own.items()}
    settings = [litellm.get("litellm_settings") or {}, litellm.get("router_settings") or {}]
    for section in settings:
        for kind in ("fallbacks", "context_window_fallbacks"):
            for item in section.get(kind) or []:
                for group, targets in item.items():
                    for t in targets if group in own else []:
                        members[group] += own.get(t, [ids[t]] if t in ids else [])
    total = {group: len(set(deps)) for group, deps in members.items()}
    for section in settings:
        for alias, target in (section.get("model_group_alias") or {}).items():
            if target in own and alias not in own:
                total[alias] = total[target]
    return total


def import_and_check(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    out = tmp_path / "switchyard.yaml"
    assert main(["import-litellm", str(src), "-o", str(out)]) == 0
    report = capsys.readouterr().err
    for var in set(_VAR.findall(out.read_text())):
        monkeypatch.setenv(var, dummy(var))
    rc = main(["check-config", str(out)])
    checked = capsys.readouterr()
    assert rc == 0, checked.err
    return out, report


def served_copy(imported: Path, tmp_path: Path) -> Path:
    """The imported config with every backend address on a closed loopback port."""
    cfg = yaml.safe_load(imported.read_text())
    closed = f"http://127.0.0.1:{free_port()}/v1"
    for b in cfg.get("backends") or []:
        for key in ("base_url", "api_base"):
            if key in b:
                b[key] = closed
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("src", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_imported_config_checks_and_serves_every_model_name(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], loopback_only: list[str], redis_url: str) -> None:
    import openai

    from gateway.http.app import create_app

    litellm = yaml.safe_load(src.read_text())
    imported, report = import_and_check(src, tmp_path, monkeypatch, capsys)
    for i, dep in enumerate(litellm.get("model_list") or []):
        if "*" in str(dep.get("model_name")):
            assert f"model_list[{i}]: not mapped (wildcard" in report
    monkeypatch.setenv("SWITCHYARD_LEDGER__PATH", str(tmp_path / "ledger.sqlite3"))
    monkeypatch.setenv("SWITCHYARD_STATE__URL", redis_url)  # used only by a redis state
    monkeypatch.setenv("SWITCHYARD_STATE__PREFIX", f"litellm-import-{src.stem}:")
    app = create_app(load_settings(served_copy(imported, tmp_path)))
    expected = expected_backends(litellm)
    with serve(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        models = {m.id: m.model_extra["switchyard"] for m in client.models.list()}
        client.close()
    for name, count in expected.items():
        assert models[name]["kind"] == "route", name
        assert len(models[name]["backends"]) == count, (name, models[name])
    assert not expected or set(expected) <= set(models)
    for dep in litellm.get("model_list") or []:  # embedding models: on /v1/embeddings
        model = str((dep.get("litellm_params") or {}).get("model") or "")
        if "embed" in model.lower() or (dep.get("model_info") or {}).get("mode") == "embedding":
            assert "embeddings" in models[str(dep["model_name"])]["endpoints"], dep
