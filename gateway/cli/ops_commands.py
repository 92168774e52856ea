"""Fleet operations from the command line: `unit quarantine|release|revoke|list|show`, `KIND revoke`,
`events`, `partner disconnect`; and the spellings they replace (`quarantine`, `release`, `revoke
KIND/ID`, `status`), kept as deprecated aliases.

Each command talks to a running gateway's admin API when a server is given (`--server/--cert/--key
[--ca]`, or `--profile FILE` / $FLEETGATE_PROFILE), else acts on the data dir (`--data`) directly.
Reading commands take `-o table|wide|json|name` (gateway/cli/output.py); changing ones `--json`.
Exit codes: gateway/cli/common.py (EXIT_*).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.cli.admin_client import resolve_remote
from gateway.cli.backends import Backend, LocalBackend, RemoteBackend
from gateway.cli.command_groups import deprecated_alias, deprecation_note
from gateway.cli.common import (
    EXIT_CODES,
    CliError,
    data_option,
    emit_json,
    error_for,
    friendly_errors,
    hint,
    json_option,
    warn,
)
from gateway.cli.output import Column, output_option, show_object, show_rows
from gateway.ops.quarantine import BY_KEY, REASON_KEY, SINCE_KEY, OpsError
from gateway.ops.status import UNIT_STATES, UnitFilter, parse_duration
from gateway.render.safe_text import printable

F = TypeVar("F", bound=Callable[..., Any])


def _where(fn: F, *, changes: bool, data_and_output: bool = True) -> F:
    path = click.Path(dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--server", default=None, help="Admin API URL, e.g. https://gateway:8443 (default: act locally)."
        ),
        click.option("--cert", type=path, default=None, help="Operator certificate (PEM) for the admin API."),
        click.option("--key", type=path, default=None, help="Its private key."),
        click.option("--ca", type=path, default=None, help="Fleet root certificate to verify the gateway."),
        click.option(
            "--profile",
            type=path,
            default=None,
            help="JSON file with server/cert/key/ca (or $FLEETGATE_PROFILE).",
        ),
    ]
    if data_and_output:
        options += [data_option, json_option if changes else output_option]
    if changes:  # reads never need a second factor, so they do not offer the option
        options.insert(
            5,
            click.option(
                "--totp",
                default=None,
                metavar="CODE",
                help="TOTP code from your authenticator, for sensitive actions (release, revoke, ...).",
            ),
        )
    for option in reversed(options):
        fn = option(fn)
    return fn


def where_options(fn: F) -> F:
    """Where a changing command acts (admin API or data dir), with --totp for sensitive actions."""
    return _where(fn, changes=True)


def remote_options(fn: F) -> F:
    """--server/--cert/--key/--ca/--profile/--totp for a command that has --data and --json already
    and acts on the data dir unless a server is given."""
    return _where(fn, changes=True, data_and_output=False)


def read_where_options(fn: F) -> F:
    """Where a reading command looks (admin API or data dir)."""
    return _where(fn, changes=False)


def backend(where: dict[str, Any]) -> Backend:
    remote = resolve_remote(where["server"], where["cert"], where["key"], where["ca"], where["profile"])
    if remote is not None and where.get("totp"):
        remote = replace(remote, totp=where["totp"])
    return RemoteBackend(remote) if remote is not None else LocalBackend(where["data_dir"])


def split_where(where: dict[str, Any]) -> tuple[Backend, bool]:
    """A changing command's backend, and whether it prints JSON."""
    return backend(where), bool(where["as_json"])


def read_where(where: dict[str, Any]) -> tuple[Backend, str]:
    """A reading command's backend, and its output format (-o)."""
    return backend(where), str(where["output"])


def ops_errors(fn: F) -> F:
    """OpsError (local backend) → the same exit codes the API's answers get."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OpsError as exc:
            raise error_for(exc.status, str(exc), exc.code) from None

    return wrapper  # type: ignore[return-value]


def done(result: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        emit_json(result)
    else:
        click.echo(text)


def _local_note(b: Backend) -> str:
    return " A running gateway applies it within ~0.2 s." if isinstance(b, LocalBackend) else ""


# --- units: contain, release, cut off ------------------------------------------------------------


@click.command("quarantine", epilog=EXIT_CODES)
@click.argument("unit_id")
@click.option("--reason", required=True, help="Why (shown to the unit in its mode command and audited).")
@where_options
@friendly_errors
@ops_errors
def unit_quarantine(unit_id: str, reason: str, **where: Any) -> None:
    """Put UNIT_ID in diagnostic-only mode: its data stops, diagnostics and vehicle control keep flowing."""
    b, as_json = split_where(where)
    result = b.quarantine(unit_id, reason)
    already = "" if result["changed"] else " (it already was; the first reason stands)"
    done(result, as_json, f"Unit {unit_id} is quarantined{already}.{_local_note(b)}")


@click.command("release", epilog=EXIT_CODES)
@click.argument("unit_id")
@where_options
@friendly_errors
@ops_errors
def unit_release(unit_id: str, **where: Any) -> None:
    """End UNIT_ID's quarantine; the unit is told mode normal and its data flows again."""
    b, as_json = split_where(where)
    result = b.release(unit_id)
    text = f"Unit {unit_id} is released." if result["changed"] else f"Unit {unit_id} was not quarantined."
    done(result, as_json, text + (_local_note(b) if result["changed"] else ""))


REVOKE_REASON = "Why; an RFC 5280 name (keyCompromise, ...) also goes into the CRL."


@click.command("revoke", epilog=EXIT_CODES)
@click.argument("unit_id")
@click.option("--reason", required=True, help=REVOKE_REASON)
@click.option("--force", is_flag=True, help="Required: revoking a unit cuts its vehicle control too.")
@where_options
@friendly_errors
@ops_errors
def unit_revoke(unit_id: str, reason: str, force: bool, **where: Any) -> None:
    """Revoke every certificate and token of UNIT_ID and cut its whole session, vehicle control included."""
    _revoke("unit", unit_id, reason, force, where)


def identity_revoke(kind: str) -> click.Command:
    """`fleetgate KIND revoke NAME` for the role identities (operator, service, partner)."""

    @click.command("revoke", epilog=EXIT_CODES)
    @click.argument("name")
    @click.option("--reason", required=True, help=REVOKE_REASON)
    @where_options
    @friendly_errors
    @ops_errors
    def revoke_command(name: str, reason: str, **where: Any) -> None:
        _revoke(kind, name, reason, True, where)

    revoke_command.help = (
        f"Revoke every certificate and token of {kind} NAME and close its live sessions at once."
    )
    return revoke_command


def _revoke(kind: str, ident: str, reason: str, force: bool, where: dict[str, Any]) -> None:
    if kind == "unit" and not force:
        raise CliError(
            f"revoking unit {ident} cuts its whole session, vehicle control included; "
            f"use `fleetgate unit quarantine {ident}` to contain it, or add --force to revoke"
        )
    if kind == "unit":
        warn(f"unit {ident} loses its vehicle-control session too")
    b, as_json = split_where(where)
    result = b.revoke(kind, ident, reason)
    closed = result.get("sessions_closed")
    text = f"Revoked {kind}/{ident}: {len(result.get('revoked_serials') or [])} certificate(s)"
    text += f", {closed} live session(s) closed." if closed is not None else "." + _local_note(b)
    done(result, as_json, text)


# --- units: what they are doing -------------------------------------------------------------------


def _when(text: str | None) -> str | None:
    """An ISO time as `2026-03-01T12:00:00Z`: one token (awk counts columns by spaces), UTC said."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment.utcoffset() == timedelta(0) else moment.isoformat()


ONLINE = {True: "yes", False: "no", None: "?"}
QUARANTINE_KEYS = (REASON_KEY, SINCE_KEY, BY_KEY)
UNIT_COLUMNS = (
    Column("unit", "unit"),
    Column("state", "state"),
    Column("online", lambda r: ONLINE[r["online"]]),
    Column("last seen", lambda r: _when(r["last_seen"])),
    Column("cert expires", lambda r: _when(r["cert_not_after"])),
    Column("serial", "cert_serial", wide=True),
    Column("address", "address", wide=True),
    Column("quarantined since", lambda r: _when(r["quarantined_since"])),
    Column("why", "quarantine_reason", wide=True),
    Column("by", "quarantined_by", wide=True),
)


def _show_units(b: Backend, rows: list[dict[str, Any]], output: str) -> None:
    show_rows(rows, UNIT_COLUMNS, output, title=f"units ({b.where})", name="unit")
    if isinstance(b, LocalBackend) and output in ("table", "wide"):
        hint("online: ? — ask a running gateway (--server or --profile) to know who is connected.")


@click.command("list", epilog=EXIT_CODES)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(UNIT_STATES),
    help="Only units in this state (repeatable).",
)
@click.option(
    "--online/--offline",
    default=None,
    help="Only units connected now, or only the others (asks the running gateway).",
)
@click.option(
    "--expiring",
    metavar="DURATION",
    default=None,
    help="Only units whose certificate ends within DURATION (7d, 12h, 30m) or has ended.",
)
@read_where_options
@friendly_errors
@ops_errors
def unit_list(states: tuple[str, ...], online: bool | None, expiring: str | None, **where: Any) -> None:
    """Units: state, online, last seen, certificate expiry, and since when quarantined (-o wide: why)."""
    try:
        wanted = UnitFilter(
            states=frozenset(states) or None,
            online=online,
            expiring_within=parse_duration(expiring) if expiring else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expiring") from None
    b, output = read_where(where)
    _show_units(b, b.units(wanted), output)


CERT_COLUMNS = (
    Column("serial", "serial"),
    Column("status", "status"),
    Column("not before", lambda r: _when(r["not_before"]), wide=True),
    Column("not after", lambda r: _when(r["not_after"])),
    Column("renewed from", "renewed_from"),
    Column("revocation", "revocation_reason", wide=True),
)


@click.command("show", epilog=EXIT_CODES)
@click.argument("unit_id")
@read_where_options
@friendly_errors
@ops_errors
def unit_show(unit_id: str, **where: Any) -> None:
    """One unit: its status, and (on the data dir) its metadata and certificates."""
    b, output = read_where(where)
    shown = b.show(unit_id)
    show_object(shown, _show_fields(shown), output, name="unit")
    certs = shown.get("certificates")
    if certs and output in ("table", "wide"):
        click.echo("")
        show_rows(certs, CERT_COLUMNS, output, title="certificates", name="serial")


def _show_fields(shown: dict[str, Any]) -> list[tuple[str, object]]:
    fields: list[tuple[str, object]] = [
        ("unit", shown["unit"]),
        ("state", shown["state"]),
        ("online", ONLINE[shown["online"]]),
        ("last seen", _when(shown["last_seen"])),
        ("address", shown.get("address")),
        ("certificate", shown["cert_serial"]),
        ("expires", _when(shown["cert_not_after"])),
    ]
    if shown.get("quarantined_since"):
        fields += [
            ("quarantined since", _when(shown["quarantined_since"])),
            ("why", shown["quarantine_reason"]),
            ("by", shown["quarantined_by"]),
        ]
    for key, value in sorted((shown.get("metadata") or {}).items()):
        if key not in QUARANTINE_KEYS:  # shown above in words
            fields.append((key, value))  # vin, released_at, ...: one line each, never a Python repr
    return fields


# --- the audit feed and partners ------------------------------------------------------------------


@click.command(epilog=EXIT_CODES)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records as they are appended.")
@click.option(
    "--since", type=click.IntRange(min=0), default=None, help="Start after this audit sequence number."
)
@read_where_options
@friendly_errors
@ops_errors
def events(follow: bool, since: int | None, **where: Any) -> None:
    """Audit records as they happen (the admin API's live stream, or the local log).

    One record per line: -o json gives JSON lines, -o name the sequence numbers."""
    b, output = read_where(where)
    try:
        for record in b.events(since, follow):
            if output == "json":
                click.echo(json.dumps(record, sort_keys=True))
            elif output == "name":
                click.echo(str(record["seq"]))
            else:
                click.echo(event_line(record))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


def event_line(record: dict[str, Any]) -> str:
    """One audit record on one line. Every field is escaped: actors, subjects and reasons can hold
    what a client sent (a request path, a topic), and a newline or an ANSI escape there must not
    forge a line or repaint the operator's terminal."""
    fields = [record["at"], record["actor"], record["action"], record["subject"], record["outcome"]]
    reason = record.get("reason")
    return (
        f"{printable(record['seq']):>6} "
        + "  ".join(printable(f) for f in fields)
        + (f"  ({printable(reason)})" if reason else "")
    )


@click.command("disconnect", epilog=EXIT_CODES)
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Only report what would be cut off; change nothing.")
@where_options
@friendly_errors
@ops_errors
def partner_disconnect(name: str, dry_run: bool, **where: Any) -> None:
    """Cut partner NAME off at once: revoke every certificate and token, close its sessions."""
    b, as_json = split_where(where)
    report = b.partner_disconnect(name, dry_run)
    if as_json:
        emit_json(report)
        return
    verb = "Would revoke" if dry_run else "Revoked"
    sessions = report["sessions"]
    live = f"{sessions} live session(s)" if sessions is not None else "live sessions (by the running gateway)"
    click.echo(
        f"{verb} {report['certificates']} certificate(s) and {report['tokens']} pending token(s) of "
        f"{', '.join(report['identities'])}; {'would close' if dry_run else 'closed'} {live}"
        + (
            f" and purge {report['subscriptions']} subscription(s)"
            if report["subscriptions"] is not None
            else ""
        )
        + f" in {report['elapsed_ms']:.1f} ms."
    )


# --- the spellings before noun-verb, for one release --------------------------------------------


@click.command("revoke", epilog=EXIT_CODES, short_help="Deprecated: use `fleetgate KIND revoke ID`.")
@click.argument("target", metavar="KIND/ID")
@click.option("--reason", required=True, help=REVOKE_REASON)
@click.option("--force", is_flag=True, help="Needed for a unit: revoking it cuts its vehicle control too.")
@where_options
@friendly_errors
@ops_errors
def revoke(target: str, reason: str, force: bool, **where: Any) -> None:
    """Deprecated: use `fleetgate KIND revoke ID` (unit, operator, service, partner).

    Revoke every certificate and token of an identity (unit/TRK-1, partner/acme, ...) and cut it off."""
    kind, sep, ident = target.partition("/")
    if not sep or not kind or not ident:
        raise click.BadParameter(f"{target!r} is not KIND/ID, e.g. unit/TRK-00042", param_hint="KIND/ID")
    deprecation_note("revoke KIND/ID", f"{kind} revoke {ident}")
    _revoke(kind, ident, reason, force, where)


@click.command("status", epilog=EXIT_CODES, short_help="Deprecated: use `fleetgate unit list|show`.")
@click.argument("unit_id", required=False)
@read_where_options
@friendly_errors
@ops_errors
def status(unit_id: str | None, **where: Any) -> None:
    """Deprecated: use `fleetgate unit list` (or `fleetgate unit show UNIT_ID`).

    Units: state, online, last seen, certificate expiry, and since when and why quarantined."""
    deprecation_note("status", "unit list" if unit_id is None else "unit show UNIT_ID")
    b, output = read_where(where)
    _show_units(b, b.status(unit_id), "wide" if output == "table" else output)  # its columns before


quarantine = deprecated_alias(unit_quarantine, "quarantine", "unit quarantine")
release = deprecated_alias(unit_release, "release", "unit release")
