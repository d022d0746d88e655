"""``ledger: {kind: sqlite, path: ...}``: the embedded default, one SQLite file per replica
(WAL mode, a writer thread; ``gateway.SQLiteLedger``). For one ledger shared by several
replicas, use ``kind: postgres`` (plugins/ledger_postgres.py)."""

from __future__ import annotations

from gateway import LedgerConfig, RegisterLedger, SQLiteLedger, hookimpl


def sqlite_ledger(config: LedgerConfig) -> SQLiteLedger:
    return SQLiteLedger(config.path, config.flush_interval_s, config.buffer_max)


@hookimpl(trylast=True)
def switchyard_register_ledgers(register: RegisterLedger) -> None:
    register("sqlite", sqlite_ledger)
