"""Local CA and registry commands: init, unit, cert, crl, and role identities.

These act on the data directory directly, so they work whether or not the gateway is running; a
running gateway notices revocations within a fraction of a second (it watches the registry).
"""

from __future__ import annotations

import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.cli.backends import LocalBackend, certificate_row
from gateway.cli.bulk_units import add_from_csv, add_one_remotely
from gateway.cli.command_groups import OrderedGroup
from gateway.cli.common import (
    CliError,
    NotFoundError,
    data_option,
    emit_json,
    friendly_errors,
    json_option,
    local_actor,
    new_passphrase,
    open_local,
    utc_now,
    warn,
    write_client_ca_bundle,
)
from gateway.cli.ops_commands import (
    backend,
    ops_errors,
    remote_options,
    split_where,
    where_options,
)
from gateway.cli.output import Column, output_option, show_object, show_rows
from gateway.config import load_config
from gateway.stores.audit_log import AuditLog
from gateway.stores.broker_store import SqliteBrokerStore
from gateway.stores.datadir import PASSPHRASE_ENV, DataDir, ca_passphrase
from pki.authority import CertificateAuthority, parse_revocation_reason
from pki.keys import write_public_file
from pki.names import CLIENT_KINDS, make_identity, validate_trust_domain
from pki.records import CertificateRecord
from pki.service import FleetCA
from pki.store import Registry, open_database


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def default_hostnames() -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    host = socket.gethostname()
    if host and host not in names:
        names.append(host)
    return names


@click.command()
@data_option
@click.option("--trust-domain", default="fleet.local", show_default=True, help="SPIFFE trust domain.")
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="DNS name or IP clients use to reach the gateway (repeatable); localhost, 127.0.0.1, ::1 "
    "and this machine's name are always included.",
)
@click.option("--crl-url", default=None, help="CRL distribution point URL written into certificates.")
@click.option(
    "--insecure-unencrypted-keys",
    is_flag=True,
    help="Write the CA keys without a passphrase: for a throwaway demo or test, never for a fleet.",
)
@json_option
@friendly_errors
def init(
    data_dir: Path | None,
    trust_domain: str,
    hostnames: tuple[str, ...],
    crl_url: str | None,
    insecure_unencrypted_keys: bool,
    as_json: bool,
) -> None:
    """Create a data directory: root and issuing CA, the gateway's server certificate, the registry.

    The CA keys are encrypted with a passphrase: $FLEETGATE_CA_PASSPHRASE, or asked at a terminal.
    """
    data = DataDir.resolve(data_dir)
    validate_trust_domain(trust_domain)
    if data.root_cert.exists() or data.database.exists():
        raise CliError(
            f"a CA already exists in {data.root}; refusing to overwrite it (choose another --data)"
        )
    secret = _init_passphrase(insecure_unencrypted_keys)
    names = list(dict.fromkeys([*hostnames, *default_hostnames()]))  # the given names first
    now = utc_now()
    data.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    crl_url = crl_url or f"https://{names[0]}:8443/crl"
    authority = CertificateAuthority.create(
        data.ca_dir, trust_domain, now, passphrase=secret, crl_url=crl_url
    )
    write_client_ca_bundle(data, authority)
    conn = open_database(data.database)
    try:
        registry = Registry(conn)
        SqliteBrokerStore(conn)  # creates the broker's tables now, so the first start finds a full schema
        ca = FleetCA(authority, registry, data.crl_dir)
        lifetime = timedelta(days=load_config().certificates.server_lifetime_days)
        ca.issue_server_certificate("gateway", names, data.server_dir, now, lifetime)
        ca.write_crl(now)
        AuditLog(conn).append(
            actor=local_actor(),
            action="ca.init",
            subject=trust_domain,
            outcome="ok",
            details={
                "hostnames": names,
                "root_sha256": fingerprint(authority.root),
                "keys_encrypted": secret is not None,
            },
            now=now,
        )
    finally:
        conn.close()
    result = {
        "data": str(data.root),
        "trust_domain": trust_domain,
        "hostnames": names,
        "root": str(data.root_cert),
        "root_sha256": fingerprint(authority.root),
        "keys_encrypted": secret is not None,
    }
    if as_json:
        emit_json(result)
    else:
        click.echo(f"Initialised {data.root} for trust domain {trust_domain}.")
        click.echo(f"Root CA {data.root_cert} (SHA-256 {result['root_sha256']}).")
        if secret is not None:
            click.echo(f"The CA keys are encrypted: `fleetgate serve` needs {PASSPHRASE_ENV}.")
        click.echo(
            "The root key is needed only to rotate the issuing CA: take it off this host with "
            "`fleetgate ca export-root-key FILE` and `fleetgate ca remove-root-key --copy FILE`."
        )
        click.echo("Next: `fleetgate serve`, then `fleetgate unit add TRK-00001`.")


def _init_passphrase(insecure_unencrypted_keys: bool) -> bytes | None:
    if not insecure_unencrypted_keys:
        return new_passphrase(
            PASSPHRASE_ENV,
            "the CA keys",
            f"the CA keys are encrypted at rest and no passphrase was given: set {PASSPHRASE_ENV}, run "
            "`fleetgate init` at a terminal to be asked for one, or pass --insecure-unencrypted-keys for "
            "a throwaway demo",
        )
    if ca_passphrase() is not None:
        raise CliError(
            f"{PASSPHRASE_ENV} is set but --insecure-unencrypted-keys asks for keys without one; "
            "drop one of them"
        )
    warn("the CA keys are written without a passphrase (--insecure-unencrypted-keys): a demo, not a fleet")
    return None


# --- units --------------------------------------------------------------------------------------


@click.group(cls=OrderedGroup)
def unit() -> None:
    """Register, enroll, watch, contain and cut off telematics units."""


@unit.command("add")
@click.argument("unit_id", required=False)
@data_option
@click.option("--vin", default=None, help="Vehicle identification number (metadata).")
@click.option("--ttl-hours", type=float, default=None, help="Token lifetime (default from config: 24 h).")
@click.option(
    "--from-csv",
    "csv_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Register every unit of this CSV file (header `unit,vin`), all or nothing, with a report per row.",
)
@click.option(
    "--tokens-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --from-csv: write unit,token,expires_at here (0600; JSON if it ends in .json, else CSV).",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="With --from-csv: report units registered already as `exists` instead of refusing the file.",
)
@remote_options
@json_option
@friendly_errors
def unit_add(
    unit_id: str | None,
    data_dir: Path | None,
    vin: str | None,
    ttl_hours: float | None,
    as_json: bool,
    csv_file: Path | None = None,
    tokens_out: Path | None = None,
    skip_existing: bool = False,
    **remote: Any,
) -> None:
    """Register UNIT_ID (or every unit of a CSV file) and print its one-time enrollment token.

    On the data dir, or through the admin API with --profile (POST /api/units; an integrator's role
    may do this and nothing more)."""
    if (csv_file is None) == (unit_id is None):
        raise click.UsageError("give one UNIT_ID, or --from-csv FILE")
    ttl = timedelta(hours=ttl_hours) if ttl_hours is not None else None
    where = backend({**remote, "data_dir": data_dir})
    if csv_file is not None:
        add_from_csv(where, csv_file, tokens_out, ttl, skip_existing, as_json)
        return
    assert unit_id is not None
    if not isinstance(where, LocalBackend):
        add_one_remotely(where, unit_id, vin, ttl, as_json)
        return
    with open_local(data_dir) as state:
        make_identity("unit", unit_id, state.trust_domain)
        now = utc_now()
        ttl = timedelta(
            hours=ttl_hours if ttl_hours is not None else load_config().certificates.token_ttl_hours
        )
        metadata = {"vin": vin} if vin else None
        token = state.ca.register_unit(unit_id, now, token_ttl=ttl, metadata=metadata)
        state.audit.append(
            actor=local_actor(),
            action="unit.add",
            subject=f"unit/{unit_id}",
            outcome="ok",
            details={"expires_at": (now + ttl).isoformat()},
            now=now,
        )
        root_sha = fingerprint(state.ca.authority.root)
    if as_json:
        emit_json(
            {"unit": unit_id, "token": token, "expires_at": (now + ttl).isoformat(), "ca_sha256": root_sha}
        )
    else:
        click.echo(
            f"Registered unit {unit_id}. One-time enrollment token (valid {ttl.total_seconds() / 3600:g} h):"
        )
        click.echo(token)
        click.echo(
            f"Enroll with: fleetgate enroll --unit {unit_id} --token <token> --server https://HOST:8443 "
            f"--ca-sha256 {root_sha}"
        )


@unit.command("token")
@click.argument("unit_id")
@click.option("--ttl-hours", type=float, default=None, help="Token lifetime (default from config: 24 h).")
@click.option(
    "--replace",
    "replace_box",
    is_flag=True,
    help="A new box replaces the unit's: also revoke the old box's certificates (superseded).",
)
@where_options
@friendly_errors
@ops_errors
def unit_token(unit_id: str, ttl_hours: float | None, replace_box: bool, **where: Any) -> None:
    """Give an existing unit a new one-time enrollment token (new box, lost token, restored backup).

    Its older tokens become void. Its certificates stay as they are, unless --replace: then the old
    box's certificates are revoked in the same step and its live session is cut, while the unit keeps
    its state (a quarantine stays) and the new box enrolls with the token and a key of its own.
    """
    b, as_json = split_where(where)
    ttl = timedelta(hours=ttl_hours) if ttl_hours is not None else None
    result = b.new_token(unit_id, ttl, replace_box)
    if as_json:
        emit_json(result)
        return
    click.echo(f"New one-time enrollment token for unit {unit_id} (until {result['expires_at']}):")
    click.echo(result["token"])
    revoked = result.get("revoked_serials") or []
    if revoked:
        click.echo(f"Revoked the old box's {len(revoked)} certificate(s): {', '.join(revoked)}.")


@unit.command("remove")
@click.argument("unit_id")
@data_option
@click.option("--force", is_flag=True, help="Remove even if it holds valid certificates.")
@json_option
@friendly_errors
def unit_remove(unit_id: str, data_dir: Path | None, force: bool, as_json: bool) -> None:
    """Forget a unit (its certificates stay in the CA's records)."""
    with open_local(data_dir) as state:
        revoked = state.ca.remove_identity("unit", unit_id, utc_now(), force=force)
        serials = [format(serial, "x") for serial in revoked]
        state.audit.append(
            actor=local_actor(),
            action="unit.remove",
            subject=f"unit/{unit_id}",
            outcome="ok",
            details={"revoked_serials": serials},
            now=utc_now(),
        )
    if as_json:
        emit_json({"unit": unit_id, "removed": True, "revoked_serials": serials})
    else:
        click.echo(
            f"Removed unit {unit_id}" + (f"; revoked {len(serials)} certificate(s)." if serials else ".")
        )


# --- certificates -------------------------------------------------------------------------------


def _lineage(registry: Registry, record: CertificateRecord) -> dict[str, list[str]]:
    """Where a certificate comes from and what was renewed from it (what revoking it also revokes)."""
    return {
        "lineage": [format(c.serial, "x") for c in (*registry.ancestors(record.serial), record)],
        "renewed_into": [format(c.serial, "x") for c in registry.renewals_of(record.serial)],
        "descendants": [format(s, "x") for s in registry.descendants(record.serial)],
    }


def parse_serial(text: str) -> int:
    try:
        return int(text.replace(":", ""), 16)
    except ValueError:
        raise CliError(f"{text!r} is not a hexadecimal serial number; see `fleetgate cert list`") from None


@click.group(cls=OrderedGroup)
def cert() -> None:
    """List, show and revoke issued certificates."""


@cert.command("list")
@data_option
@click.option("--kind", type=click.Choice(CLIENT_KINDS), default=None, help="Only this kind's certificates.")
@click.option("--id", "ident", default=None, help="Only this identity's certificates.")
@output_option
@friendly_errors
def cert_list(data_dir: Path | None, kind: str | None, ident: str | None, output: str) -> None:
    """List issued certificates (-o wide: validity, fingerprint, revocation reason)."""
    with open_local(data_dir) as state:
        rows = [certificate_row(c) for c in state.registry.list_certificates(kind=kind, ident=ident)]
    columns = (
        Column("serial", "serial"),
        Column("identity", "identity"),
        Column("status", "status"),
        Column("not before", "not_before", wide=True),
        Column("not after", "not_after"),
        Column("renewed from", "renewed_from"),
        Column("revocation", "revocation_reason", wide=True),
        Column("sha256", "fingerprint", wide=True),
    )
    show_rows(rows, columns, output, title="certificates", name="serial")


@cert.command("show")
@click.argument("serial")
@data_option
@click.option("--pem", is_flag=True, help="Print the certificate itself (PEM) instead.")
@output_option
@friendly_errors
def cert_show(serial: str, data_dir: Path | None, pem: bool, output: str) -> None:
    """Show one certificate by serial (hex), with its renewal lineage."""
    with open_local(data_dir) as state:
        record = state.registry.get_certificate(parse_serial(serial))
        if record is None:
            raise _no_certificate(serial)
        lineage = _lineage(state.registry, record)
    row: dict[str, object] = {**certificate_row(record), **lineage}
    if pem:
        click.echo(record.pem, nl=False)
        return
    fields: list[tuple[str, object]] = []
    for key, value in row.items():
        if key == "lineage":
            value = " -> ".join(lineage["lineage"])  # the first issued first, this one last
        elif isinstance(value, list):
            value = ", ".join(value)
        fields.append((key, value))
    show_object(row, fields, output, name="serial")


def _no_certificate(serial: str) -> NotFoundError:
    return NotFoundError(
        f"no certificate with serial {serial}; see `fleetgate cert list`", "unknown_certificate"
    )


@cert.command("revoke")
@click.argument("serial")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, affiliationChanged, ... "
    "Every reason but superseded also revokes the certificates renewed from this one.",
)
@click.option(
    "--force", is_flag=True, help="Needed to revoke a unit's certificate (it cuts vehicle control too)."
)
@data_option
@json_option
@friendly_errors
def cert_revoke(serial: str, reason: str, force: bool, data_dir: Path | None, as_json: bool) -> None:
    """Revoke a certificate and the ones renewed from it; their live sessions are cut within a second."""
    flag = parse_revocation_reason(reason)
    with open_local(data_dir) as state:
        record = state.registry.get_certificate(parse_serial(serial))
        if record is None:
            raise _no_certificate(serial)
        if record.kind == "unit" and not force:
            raise CliError(
                f"revoking unit {record.id}'s certificate cuts its whole session, vehicle control included; "
                "use `fleetgate unit quarantine` to contain it, or add --force to revoke"
            )
        if record.kind == "unit":
            warn(f"unit {record.id} loses its vehicle-control session too")
        revocation = state.ca.revoke_certificate(record.serial, flag, utc_now())
        descendants = [format(s, "x") for s in revocation.descendants]
        state.audit.append(
            actor=local_actor(),
            action="cert.revoke",
            subject=f"{record.kind}/{record.id}",
            outcome="ok" if revocation.serials else "unchanged",
            reason=flag.name,
            details={"serial": format(record.serial, "x"), "descendants": descendants},
            now=utc_now(),
        )
    hex_serial = format(record.serial, "x")
    if as_json:
        emit_json(
            {
                "serial": hex_serial,
                "revoked": True,
                "changed": revocation.changed,
                "reason": flag.name,
                "descendants": descendants,
            }
        )
        return
    click.echo(
        f"Revoked {hex_serial} ({record.kind}/{record.id}, {flag.name})."
        if revocation.changed
        else f"{hex_serial} was already revoked."
    )
    if descendants:
        listed = ", ".join(descendants)
        click.echo(f"Also revoked {len(descendants)} certificate(s) renewed from it: {listed}.")


@click.command()
@data_option
@click.option("--der", is_flag=True, help="The current issuing CA's CRL alone, in DER.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write it to this file instead of printing it.",
)
@json_option
@friendly_errors
def crl(data_dir: Path | None, der: bool, out: Path | None, as_json: bool) -> None:
    """Print (or write) the certificate revocation lists (--json: what they say, as JSON).

    PEM holds one CRL per trusted issuing CA (the current one first), each signed by its own CA,
    which is what `openssl verify -CRLfile` and Mosquitto's crlfile take.
    """
    with open_local(data_dir) as state:
        crls = state.ca.current_crls(utc_now())
    if as_json and out is None:
        emit_json([crl_summary(c) for c in crls])
        return
    if der:
        body = crls[0].public_bytes(serialization.Encoding.DER)
    else:
        body = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)
    if out is not None:
        write_public_file(out, body)
        click.echo(f"Wrote {out}.")
    elif der:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    else:
        click.echo(body.decode(), nl=False)


def crl_summary(current: x509.CertificateRevocationList) -> dict[str, object]:
    """The CRL's contents, for scripts: who issued it, its number and validity, what it revokes."""
    number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    revoked = []
    for entry in current:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            reason = "unspecified"
        revoked.append(
            {
                "serial": format(entry.serial_number, "x"),
                "revoked_at": entry.revocation_date_utc.isoformat(),
                "reason": reason,
            }
        )
    return {
        "issuer": current.issuer.rfc4514_string(),
        "crl_number": number,
        "this_update": current.last_update_utc.isoformat(),
        "next_update": current.next_update_utc.isoformat() if current.next_update_utc else None,
        "revoked": revoked,
    }
