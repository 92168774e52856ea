"""The shared stores on PostgreSQL: the same store classes, the same SQL, another engine.

Why this shape. Every store (pki/store.Registry, gateway/stores/audit_log.AuditLog...) is written
against the small part of the DB-API that sqlite3 offers (`execute` with `?` parameters,
`in_transaction`, `BEGIN IMMEDIATE` through pki/sqlite.transaction). `PgConnection` offers that same
part on top of psycopg 3, so a store has one implementation and its tests run against both engines;
what differs is said here once:

- placeholders: `?` becomes `%s` (and a literal `%` is doubled) when parameters are given;
- `BEGIN IMMEDIATE` (SQLite: take the one write lock first) becomes `BEGIN` plus a transaction-scoped
  advisory lock, one for the whole database. So writers from every node are serialised exactly as
  two processes on one SQLite file are: an audit append reads the head under that lock (the chain
  never forks), a token is consumed once, a migration runs once. Reads take no lock. Writes are short
  (one registry change and its audit record), so one lock costs little at the rates operations run;
  EST bursts are the one place to measure if it ever matters (docs/cluster.md);
- plain `BEGIN` (a read snapshot: `audit verify`, exports) becomes REPEATABLE READ, so the head and
  the records are seen at one instant as in SQLite's WAL;
- errors: psycopg's are raised as the sqlite3 exception the stores and their callers already handle
  (IntegrityError for constraint and trigger refusals, OperationalError for a database that cannot be
  reached), with one plain sentence. So the admin API answers 503, EST 503 and the CLI one line, the
  same as for a full disk under SQLite.
- a lost connection is reopened on the next statement outside a transaction (the gateway keeps going
  when PostgreSQL comes back; nothing to restart).

Why psycopg 3 (sync) and not asyncpg: the stores are synchronous by design (the pure cores call
them with `now`; asyncio lives only at the edge), psycopg 3 is the maintained reference driver,
ships binary wheels, speaks LISTEN/NOTIFY on a plain connection (`notifies`), and its file
descriptor can be watched by the event loop, which is all the control plane needs.

Component schemas: each store gives its PostgreSQL DDL next to its SQLite steps (`apply_migrations`
picks by `conn.dialect`); PostgreSQL gets its own version numbers (it starts at the current shape).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

# One key for the whole database: pg_advisory_xact_lock(WRITE_LOCK) is SQLite's write lock.
WRITE_LOCK = 0x666C6565  # "flee"
CONNECT_TIMEOUT_S = 1
# After a failed connect, statements fail at once for this long instead of connecting again: the
# stores are called on the event loop, and a host that drops packets would otherwise stall it for a
# connect timeout at every statement (docs/cluster.md, "What each failure costs").
RETRY_AFTER_S = 5.0
NOTIFY_CHANNEL = "fleetgate_registry"
DATABASE_URL_ENV = "FLEETGATE_DATABASE_URL"


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def describe_url(url: str) -> str:
    """host:port/dbname, never the password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    return f"{host}:{port}{parts.path or ''}"


def unreachable(url: str, exc: BaseException) -> sqlite3.OperationalError:
    text = str(exc).strip()
    # psycopg says "connection failed: connection to server at "h", port p failed: Connection refused"
    # (and more lines); the host and port are in our own sentence, the cause is the last clause.
    cause = text.splitlines()[0].rsplit("failed:", 1)[-1].strip() if text else type(exc).__name__
    return sqlite3.OperationalError(
        f"PostgreSQL at {describe_url(url)} is unreachable ({cause}); nothing was changed, try again when "
        "it is back"
    )


def connect(url: str) -> psycopg.Connection[Any]:
    """A raw autocommit connection, or sqlite3.OperationalError in one sentence."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise unreachable(url, exc) from None


def _translate(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _as_sqlite_error(url: str, exc: psycopg.Error) -> sqlite3.DatabaseError:
    text = (getattr(exc.diag, "message_primary", None) or str(exc)).strip()
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return sqlite3.IntegrityError(f"FOREIGN KEY constraint failed ({text})")
    if isinstance(exc, pg_errors.UniqueViolation):
        return sqlite3.IntegrityError(f"UNIQUE constraint failed ({text})")
    if isinstance(exc, psycopg.IntegrityError | pg_errors.RaiseException):
        return sqlite3.IntegrityError(text)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return unreachable(url, exc)
    return sqlite3.DatabaseError(text)


class PgConnection:
    """The sqlite3.Connection subset the stores use, on one psycopg connection (see module doc)."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = connect(url)
        self._failed: tuple[float, sqlite3.OperationalError] | None = None
        # Set by the serving gateway (reconnect_in_background): a lost connection is then reopened
        # by a thread, never by the statement that found it lost, because statements run on the
        # event loop and a host that drops packets holds a connect for CONNECT_TIMEOUT_S.
        self._background = False
        self._reconnecting: threading.Thread | None = None
        self._reopened: psycopg.Connection[Any] | None = None

    def reconnect_in_background(self) -> None:
        self._background = True

    def _live(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None and not conn.closed:
                conn.close()
            self._conn = None
            if self._background:
                return self._adopt_reopened()
            if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_AFTER_S:
                raise self._failed[1]
            try:
                self._conn = conn = connect(self.url)
            except sqlite3.OperationalError as exc:
                self._failed = (time.monotonic(), exc)
                raise
            self._failed = None
        return conn

    def _adopt_reopened(self) -> psycopg.Connection[Any]:
        """The connection the reconnecting thread made, or the outage's one sentence at once (and a
        reconnecting thread started, one at a time, RETRY_AFTER_S after the last failed one)."""
        reopened, self._reopened = self._reopened, None
        if reopened is not None:
            self._conn, self._failed = reopened, None
            return reopened
        failed = self._failed
        running = self._reconnecting is not None and self._reconnecting.is_alive()
        if not running and (failed is None or time.monotonic() - failed[0] >= RETRY_AFTER_S):
            self._reconnecting = threading.Thread(target=self._reconnect, name="pg-reconnect", daemon=True)
            self._reconnecting.start()
        raise (
            failed[1]
            if failed is not None
            else sqlite3.OperationalError(
                f"PostgreSQL at {describe_url(self.url)} is unreachable (reconnecting); nothing was changed, "
                "try again when it is back"
            )
        )

    def _reconnect(self) -> None:
        try:
            self._reopened = connect(self.url)  # handed over whole: one attribute, under the GIL
        except sqlite3.OperationalError as exc:
            self._failed = (time.monotonic(), exc)

    @property
    def in_transaction(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        return conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        statement = sql.strip().rstrip(";").strip().upper()
        conn = self._live()
        try:
            if statement == "BEGIN IMMEDIATE":
                cursor = conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                return cursor
            if statement == "BEGIN":
                return conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            if statement == "ROLLBACK" and conn.broken:
                return conn.cursor()  # the connection is gone, and its transaction with it
            if params:
                return conn.execute(_translate(sql), tuple(params))  # type: ignore[arg-type]
            return conn.execute(sql)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise _as_sqlite_error(self.url, exc) from None

    def executescript_pg(self, script: str) -> None:
        """A migration step: many statements (functions with $$ bodies) in one call, no parameters."""
        try:
            self._live().execute(script)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise _as_sqlite_error(self.url, exc) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def open_postgres(url: str) -> PgConnection:
    return PgConnection(url)


class Listener:
    """LISTEN on the registry channel, on a connection of its own; `fileno()` for the event loop.

    `drain()` returns the payloads of the notifications that arrived since the last call (empty when
    none; [""] after a reopening, which may have missed some); a broken connection raises
    sqlite3.OperationalError and is reopened by the next `drain()`.
    """

    def __init__(self, url: str, channel: str = NOTIFY_CHANNEL) -> None:
        self.url = url
        self.channel = channel
        self._conn: psycopg.Connection[Any] | None = None
        self.received = 0

    def open(self) -> None:
        conn = connect(self.url)
        try:
            conn.execute(f"LISTEN {self.channel}")  # type: ignore[arg-type]
        except psycopg.Error as exc:
            conn.close()
            raise unreachable(self.url, exc) from None
        self._conn = conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def fileno(self) -> int:
        assert self._conn is not None
        return self._conn.fileno()

    def drain(self) -> list[str]:
        if not self.connected:
            self.close()
            self.open()
            return [""]  # we may have missed some while away: the caller catches up in full
        assert self._conn is not None
        try:
            payloads = [notify.payload for notify in self._conn.notifies(timeout=0)]
        except psycopg.Error as exc:
            self.close()
            raise unreachable(self.url, exc) from None
        self.received += len(payloads)
        return payloads

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


def notify(conn: object, payload: str, channel: str = NOTIFY_CHANNEL) -> None:
    """Send one notification on `conn` (a PgConnection), delivered to every listener at commit."""
    conn.execute("SELECT pg_notify(?, ?)", (channel, payload))  # type: ignore[attr-defined]


@contextmanager
def raw(url: str) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()
