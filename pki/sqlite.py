"""SQLite plumbing shared by every fleetgate store: open, migrate, transact.

Conventions every store follows:
- one database file under the data directory, WAL journal (readers never block the writer), foreign
  keys on, a 5 s busy timeout so a second process (the CLI next to a running gateway) waits instead
  of failing;
- ``isolation_level=None``: the sqlite3 module never opens transactions behind our back; writes go
  through ``transaction(conn)``, which takes the write lock up front (BEGIN IMMEDIATE) so two
  writers cannot both read-then-write and deadlock on the upgrade;
- each component (``pki``, the broker, the audit log...) owns a version row in ``schema_versions``
  and a list of migration steps; step N moves the schema from version N to N+1.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from pki.errors import StoreError

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 5000


def _restore_hint(path: Path) -> str:
    return f"restore {path} from a `fleetgate backup` or move it aside to start empty"


def open_database(path: Path, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path``, or raise StoreError saying what to do."""
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:  # interpolated into a PRAGMA below, so checked strictly
        raise StoreError(
            "invalid_setting", f"synchronous={synchronous!r}; use one of {', '.join(SYNCHRONOUS_MODES)}"
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            # Token hashes and the certificate registry are nobody else's business.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            "unreadable_database", f"cannot open database {path} ({exc}); check its permissions"
        ) from None
    try:
        _configure(conn, mode)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _open_error(path, exc) from None
    return conn


def open_store(target: Path | str, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """The shared stores' database: a `postgresql://` URL opens PostgreSQL (pki/postgres.py), anything
    else is the SQLite file at that path. The one place the engine is chosen.

    A PgConnection offers the sqlite3.Connection subset the stores use and raises sqlite3's
    exceptions, so it is typed as one: the stores keep a single signature and a single implementation.
    """
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        from pki.postgres import open_postgres  # psycopg only where PostgreSQL is configured

        return cast(sqlite3.Connection, open_postgres(target))
    return open_database(Path(target), synchronous=synchronous)


def _open_error(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    text = str(exc)
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return StoreError(
            "unreadable_database", f"cannot open database {path} ({text}); check its permissions"
        )
    if "locked" in text:
        return StoreError("database_locked", f"database {path} is locked by another process; try again")
    return StoreError(
        "corrupt_database", f"{path} is not a usable fleetgate database ({text}); {_restore_hint(path)}"
    )


def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # The first statements that read the file: a garbage file fails here, not in some later query.
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    conn.execute("PRAGMA journal_mode = WAL").fetchone()
    conn.execute(f"PRAGMA synchronous = {synchronous}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

    Re-entrant: inside an open transaction it just joins it, so a service can group several store
    calls (each of which opens its own transaction when called alone) into one atomic change.
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full, I/O error) can leave the transaction open; the next caller would
        # then "join" it above and its changes would never be committed. Roll back so nothing stays
        # half written and the connection is usable again once the fault is gone.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT our open transaction first, so a step is split into statements;
    # complete_statement knows about quotes and trigger bodies, so ';' inside them is safe.
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        yield pending


def schema_version(conn: sqlite3.Connection, component: str) -> int:
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
    return int(row[0]) if row else 0


_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)


def apply_migrations(
    conn: sqlite3.Connection,
    component: str,
    steps: Sequence[str],
    postgres: Sequence[str] | None = None,
) -> int:
    """Bring ``component``'s schema up to ``len(steps)``; returns the resulting version.

    On PostgreSQL (pki/postgres.PgConnection) the component's ``postgres`` steps are applied instead,
    each as one script, and the table of versions is created under the write lock (two nodes
    starting at once must not race on CREATE TABLE).
    """
    on_postgres = getattr(conn, "dialect", "sqlite") == "postgresql"
    if on_postgres:
        if postgres is None:
            raise StoreError("unsupported_backend", f"the {component} store has no PostgreSQL schema")
        steps = postgres
        with transaction(conn):
            conn.execute(_VERSIONS_TABLE)
    else:
        conn.execute(_VERSIONS_TABLE)
    while True:
        with transaction(conn):
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = schema_version(conn, component)
            if current > len(steps):
                raise StoreError(
                    "schema_too_new",
                    f"the database's {component} schema is version {current} but this fleetgate knows only "
                    f"{len(steps)}; upgrade fleetgate or restore an older backup",
                )
            if current == len(steps):
                return current
            if on_postgres:
                conn.executescript_pg(steps[current])  # type: ignore[attr-defined]
            else:
                for statement in _statements(steps[current]):
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, current + 1),
            )
