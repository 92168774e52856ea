"""What every fleetgate command shares: the data dir, --json output, one-sentence errors, exit codes.

No command ever shows a traceback to a user: known failures (PkiError, StoreError, ConfigError,
IdentityError, OSError, ...) become `error: <what was wrong; what to do>` and exit status 1; with
`-o json` (or `--json`) the error is the admin API's `{"error": ..., "code": ...}` instead, on stderr.
Exit codes mean one thing each: the EXIT_* constants below (docs/operations.md lists them too).
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives.serialization import Encoding
from rich.console import Console

from gateway.render.safe_text import printable
from gateway.stores.audit_log import AuditLog
from gateway.stores.datadir import PASSPHRASE_ENV, DataDir, remembered, shared_database
from pki.authority import CertificateAuthority
from pki.errors import KeyFileError
from pki.keys import PassphraseSource, write_public_file
from pki.service import FleetCA
from pki.sqlite import open_store
from pki.store import Registry

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0  # done
EXIT_FAILED = 1  # failed; the error says why in one sentence
EXIT_USAGE = 2  # bad usage: an unknown option, a missing argument (click)
EXIT_REFUSED = 3  # the admin API refused the certificate or its role (401/403)
EXIT_NOT_FOUND = 4  # no such unit, identity, partner, certificate or session (404)
EXIT_DENIED = 5  # `policy explain`: the policy denies the action asked about (not an error)
EXIT_INTERRUPTED = 130  # stopped with Ctrl-C (128 + SIGINT, as shells report it)
EXIT_CODES_TEXT = (  # `fleetgate --help` shows it; every other command points there
    f"Exit codes: {EXIT_OK} done, {EXIT_FAILED} failed (the error says why), {EXIT_USAGE} bad usage, "
    f"{EXIT_REFUSED} refused by the admin API (certificate, role), {EXIT_NOT_FOUND} not found, "
    f"{EXIT_DENIED} the policy denies (policy explain), {EXIT_INTERRUPTED} interrupted. With -o json or "
    '--json an error is {"error": ..., "code": ...} on stderr.'
)
EXIT_CODES = "Exit codes: see `fleetgate --help`."

console = Console()
err_console = Console(stderr=True)


class _ErrorFormat:
    """How errors are shown in this process: one sentence, or JSON when the command line asked for
    JSON output. Set once by the entry point from the command line, before anything can fail."""

    json = False


ERRORS = _ErrorFormat()


def report_error(message: str, code: str) -> None:
    if ERRORS.json:
        # json.dumps escapes every control and non-ASCII character itself: one line, nothing raw
        click.echo(json.dumps({"error": message, "code": code}, sort_keys=True), err=True)
    else:
        click.echo(f"error: {printable(message)}", err=True)


class CliError(click.ClickException):
    """A failure explained in one sentence; exit status 1. `code` is the stable reason a script can
    test (the admin API's `code` when the API refused)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code

    def show(self, file: Any = None) -> None:
        report_error(self.message, self.code)


class RefusedError(CliError):
    """The admin API refused the certificate or its role (401/403)."""

    exit_code = EXIT_REFUSED


class NotFoundError(CliError):
    """No such unit, identity, partner, certificate or session (404)."""

    exit_code = EXIT_NOT_FOUND

    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(message, code)


def error_for(status: int, message: str, code: str) -> CliError:
    """The CLI error for an API (or local) refusal with this HTTP status and reason code."""
    if status in (401, 403):
        return RefusedError(message, code)
    return NotFoundError(message, code) if status == 404 else CliError(message, code)


def data_option(fn: F) -> F:
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (default: $FLEETGATE_DATA or ./var).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def utc_now() -> datetime:
    return datetime.now(UTC)


def local_actor() -> str:
    """Who runs a local CLI command, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"local/{user}"


@dataclass
class LocalState:
    """The data dir opened for a local (no running gateway needed) command."""

    data: DataDir
    conn: sqlite3.Connection
    registry: Registry
    ca: FleetCA
    audit: AuditLog
    passphrase: PassphraseSource  # the CA keys' (asked once, only if a command signs something)

    @property
    def trust_domain(self) -> str:
        return self.ca.authority.trust_domain


@contextmanager
def open_local(data_dir: Path | None) -> Iterator[LocalState]:
    data = DataDir.resolve(data_dir)
    if not data.is_initialised():
        raise CliError(f"{data.root} has no fleetgate CA; run `fleetgate init --data {data.root}` first")
    # Keys are read only when the command signs (pki/authority.py): `status` needs no passphrase.
    source = passphrase_source()
    authority = CertificateAuthority.load(data.ca_dir, source)
    # The data dir's SQLite file, or a cluster's PostgreSQL ($FLEETGATE_DATABASE_URL, docs/cluster.md):
    # operations run against the database every node follows.
    conn = open_store(shared_database(data))
    try:
        registry = Registry(conn)
        ca = FleetCA(authority, registry, data.crl_dir)
        yield LocalState(data, conn, registry, ca, AuditLog(conn), source)
    finally:
        conn.close()


def passphrase_source(env: str = PASSPHRASE_ENV) -> PassphraseSource:
    """For an encrypted key file: $env, else a prompt at a terminal, else one sentence saying so.
    Asked once per command (every CA key of a data dir shares one passphrase)."""

    def ask(path: Path) -> bytes:
        value = os.environ.get(env)
        if value:
            return value.encode()
        if sys.stdin.isatty():
            return str(click.prompt(f"Passphrase for {path}", hide_input=True, err=True)).encode()
        raise KeyFileError(
            "passphrase_required",
            f"{path} is encrypted; set {env} to its passphrase, or run this command at a terminal to be "
            "asked for it",
        )

    return remembered(ask)


MIN_PASSPHRASE = 8


def new_passphrase(env: str, what: str, missing: str) -> bytes:
    """A passphrase to encrypt `what` with: $env, else asked twice at a terminal, else CliError(missing)."""
    value = os.environ.get(env)
    if not value and sys.stdin.isatty():
        value = click.prompt(
            f"New passphrase for {what}", hide_input=True, confirmation_prompt=True, err=True
        )
    if not value:
        raise CliError(missing)
    if len(value) < MIN_PASSPHRASE:
        raise CliError(
            f"the passphrase for {what} is shorter than {MIN_PASSPHRASE} characters; choose a longer one"
        )
    return str(value).encode()


def write_client_ca_bundle(data: DataDir, authority: CertificateAuthority) -> None:
    """DATA/ca/client-ca.pem: the root and every trusted issuing CA (for other TLS servers)."""
    bundle = b"".join(cert.public_bytes(Encoding.PEM) for cert in authority.trust_anchors())
    write_public_file(data.client_ca_bundle, bundle)


def friendly_errors(fn: F) -> F:
    """Turn every expected failure into a one-sentence CliError."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # a closed pipe is the reader's choice (`| head`): the entry point ends quietly
        except Exception as exc:
            reason = getattr(exc, "reason", None)  # PkiError and friends carry a stable reason
            raise CliError(describe_error(exc), reason if isinstance(reason, str) else "failed") from None

    return wrapper  # type: ignore[return-value]


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or text}; run as the user that owns the data directory"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or text}"
    if isinstance(exc, sqlite3.OperationalError) and text.startswith("PostgreSQL at "):
        return text  # already one sentence with the fix (pki/postgres.unreachable)
    if isinstance(exc, sqlite3.DatabaseError):
        return f"the database cannot be used ({text}); check the data directory or restore a backup"
    return text


def hint(message: str) -> None:
    """A note for a person at a terminal, on stderr; nothing at all when stdout goes to a pipe or a
    file: a script wants its output and a clean stderr (`fleetgate unit list | head -1`)."""
    if console.is_terminal:
        click.echo(printable(message), err=True)


def warn(message: str) -> None:
    click.echo(f"warning: {printable(message)}", err=True)
