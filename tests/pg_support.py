"""Real PostgreSQL for the ledger tests (importable as ``pg_support``; import the fixtures
into a test module to use them).

``pg_admin_url``: the machine's PostgreSQL on 127.0.0.1:5432 when it answers (user
``postgres``, trust auth, as on these machines); else a server of our own, made with
Debian's ``initdb`` and ``pg_ctl`` in a temp dir on a free port (as the ``postgres`` user
when the tests run as root: ``initdb`` refuses root). ``SWITCHYARD_TEST_OWN_POSTGRES=1``
forces our own. ``pg_url``: a database of the test's own (a unique name), dropped after.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port

MACHINE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"no {name}: install Debian's postgresql package")
    return found


class OwnPostgres:
    """A PostgreSQL server of our own: ``initdb`` + ``pg_ctl start`` in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.data = workdir / "data"
        root = os.geteuid() == 0
        self.as_user = ["runuser", "-u", "postgres", "--"] if root else []
        if root:
            shutil.chown(workdir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, cwd=self.workdir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def start(self) -> OwnPostgres:
        if not self.data.exists():
            self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8")
        opts = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", opts,
                  "-l", str(self.workdir / "server.log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    if not os.environ.get("SWITCHYARD_TEST_OWN_POSTGRES") and answers(MACHINE_URL):
        yield MACHINE_URL
        return
    # not under pytest's tmp dir: that is private to root, and the server runs as postgres
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-postgres-"))
    try:
        server = OwnPostgres(workdir).start()
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(admin_url: str) -> str:
    import psycopg

    name = f"switchyard_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def db_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A database of this test's own on ``pg_admin_url``'s server, dropped afterwards."""
    name = create_database(pg_admin_url)
    try:
        yield db_url(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)
