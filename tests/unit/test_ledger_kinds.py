"""``ledger.kind`` picks a registered ledger: the built-ins by name, a plugin's by its own,
and a bad kind or a PostgreSQL ledger without its URL stops start-up with the key's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import make_settings

from gateway import LedgerConfig, RegisterLedger, SQLiteLedger, hookimpl
from gateway.assembly import build_ledger, build_registry_for, validate
from gateway.errors import ConfigError
from plugins.ledger_postgres import PostgresLedger


def _ledger(tmp_path: Path, extra: tuple[object, ...] = (), **ledger: Any) -> Any:
    settings = make_settings(tmp_path, ledger={"path": str(tmp_path / "l.sqlite3"), **ledger})
    registry = build_registry_for(settings, extra)
    validate(settings, registry)
    return build_ledger(settings, registry)


def test_the_built_in_kinds(tmp_path: Path) -> None:
    sqlite = _ledger(tmp_path)
    assert isinstance(sqlite, SQLiteLedger) and sqlite.dialect == "sqlite"
    sqlite.close()
    pg = _ledger(tmp_path, kind="postgres", url="postgresql://u:hunter2@127.0.0.1:1/db")
    assert isinstance(pg, PostgresLedger) and pg.dialect == "postgres"  # no I/O until start
    assert _ledger(tmp_path, kind="none") is None


def test_an_unknown_kind_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _ledger(tmp_path, kind="mongo")
    (path, msg), = exc.value.errors
    assert path == "ledger.kind" and "none, postgres, sqlite" in msg


def test_postgres_needs_its_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _ledger(tmp_path, kind="postgres")
    (path, msg), = exc.value.errors
    assert path == "ledger" and "ledger.url is required" in msg


def test_a_plugin_adds_a_kind(tmp_path: Path) -> None:
    made: list[LedgerConfig] = []

    class Memory:
        @hookimpl
        def switchyard_register_ledgers(self, register: RegisterLedger) -> None:
            def factory(config: LedgerConfig) -> SQLiteLedger:
                made.append(config)
                return SQLiteLedger(tmp_path / "plugin.sqlite3")
            register("mine", factory)

    ledger = _ledger(tmp_path, (Memory(),), kind="mine", buffer_max=7)
    assert made[0].buffer_max == 7
    ledger.close()
