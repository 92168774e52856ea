"""A throwaway PostgreSQL (Debian's postgresql package) for the tests: one cluster in a temp dir on
loopback, started as an unprivileged user when the tests run as root, and a fresh database per test.

Outside CI a machine without the binaries skips these tests with that reason; `.ci/run` installs
the package, so CI never skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port

PG_BIN = Path(os.environ.get("FLEETGATE_PG_BIN", "/usr/lib/postgresql/15/bin"))
AS_USER = "postgres"  # Debian's package creates it; initdb/postgres refuse to run as root


def available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def skip_without_postgres() -> None:
    if not available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL binaries missing in {PG_BIN}; .ci/run installs the postgresql package")
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql)")


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", AS_USER, "--", *args] if os.geteuid() == 0 else args


class PgCluster:
    """One PostgreSQL server in `root` on 127.0.0.1:port (trust auth, fsync off: tests only)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()  # this worker's band (tests/harness.py)
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, AS_USER)
            os.chmod(root, 0o755)
            self._reachable()
        subprocess.run(
            _as_owner(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _reachable(self) -> None:
        """The server user must reach its own directory (pytest makes its temp dirs 0700, again and
        again, so this runs before every start)."""
        if os.geteuid() != 0:
            return
        for parent in self.root.parents:
            if str(parent).startswith("/tmp") and parent != Path("/tmp"):
                os.chmod(parent, os.stat(parent).st_mode | 0o011)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, *, durable: bool = False) -> None:
        """`durable`: fsync and synchronous commit as in production (scripts/bench_backbone.py);
        the tests run without them."""
        self._reachable()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c max_connections=200"
        )
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        done = subprocess.run(
            _as_owner(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(self.root / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=False,
            capture_output=True,
            text=True,
            timeout=90,
        )
        if done.returncode != 0:
            log = (self.root / "server.log").read_text()[-2000:]
            raise AssertionError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{log}")

    def stop(self) -> None:
        subprocess.run(
            _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
            timeout=90,
        )

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)

    def new_schema(self) -> str:
        """A fresh empty schema in the shared database (much cheaper than a database); its URL puts
        it first on the search path, so the stores see an empty database of their own."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
        return self.url() + f"?options=-csearch_path%3D{name}"


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    skip_without_postgres()
    cluster = PgCluster(tmp_path_factory.mktemp("postgres"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.new_schema()
