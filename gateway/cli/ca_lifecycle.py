"""`fleetgate ca`: the issuing CA's lifecycle without re-enrolling the fleet, and an offline root.

    status            the root, every issuing CA, how many certificates each issued are in use
    rotate            a new issuing CA under the same root issues from now on; the old one stays
                      trusted (overlap) and the server certificate is re-issued under the new one
    retire N          stop trusting issuing CA N: refused while certificates it issued are in use
    export-root-key   an encrypted copy of the root key, for offline storage
    remove-root-key   delete the root key from this host once its copy is checked

A running gateway follows rotation and retirement at its next reload (SIGHUP); what takes effect
when is in docs/operations.md ("Rotating the issuing CA").
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.cli.ca_commands import fingerprint
from gateway.cli.common import (
    CliError,
    LocalState,
    data_option,
    emit_json,
    friendly_errors,
    json_option,
    local_actor,
    new_passphrase,
    open_local,
    passphrase_source,
    utc_now,
    write_client_ca_bundle,
)
from gateway.cli.output import output_option, table
from gateway.cli.server_cert import replace_server_certificate, served_hostnames
from gateway.config import load_config
from gateway.stores.datadir import ROOT_PASSPHRASE_ENV
from pki.authority import load_root_key
from pki.errors import PkiError
from pki.keys import PrivateKey, is_encrypted_key_file, write_private_key

RELOAD_HINT = "reload the gateway (systemctl reload fleetgate, or kill -HUP its pid)"


@click.group("ca")
def ca_group() -> None:
    """Rotate and retire issuing CAs; take the root key offline."""


def _date(cert: x509.Certificate, attribute: str) -> str:
    moment = getattr(cert, attribute)
    return str(moment.isoformat(timespec="seconds"))


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else _name(cert)


# --- status ---------------------------------------------------------------------------------------


@ca_group.command("status")
@data_option
@output_option
@friendly_errors
def status(data_dir: Path | None, output: str) -> None:
    """The root and the issuing CAs: validity, and how many certificates each issued are in use."""
    with open_local(data_dir) as state:
        authority = state.ca.authority
        counts = state.registry.issued_counts(utc_now())
        key_state = _root_key_state(state.data.root_key)
    issuing: list[dict[str, Any]] = []
    trusted = {ca.generation: ca for ca in authority.issuing_cas}
    for generation in range(1, authority.generation + 1):
        ca = trusted.get(generation)
        count = counts.get(generation, {})
        row: dict[str, Any] = {
            "generation": generation,
            "state": _ca_state(ca is not None, generation == authority.generation),
            "in_use": count.get("in_use", 0),
            "in_use_by_kind": {k[len("in_use_") :]: v for k, v in count.items() if k.startswith("in_use_")},
            "valid": count.get("valid", 0),
        }
        if ca is not None:
            row |= {
                "name": _common_name(ca.certificate),
                "subject": _name(ca.certificate),
                "not_before": _date(ca.certificate, "not_valid_before_utc"),
                "not_after": _date(ca.certificate, "not_valid_after_utc"),
                "sha256": ca.sha256,
                "crl_url": ca.crl_url,
            }
        issuing.append(row)
    root = {
        "subject": _name(authority.root),
        "not_after": _date(authority.root, "not_valid_after_utc"),
        "sha256": fingerprint(authority.root),
        "key": key_state,
    }
    result = {"root": root, "issuing": issuing}
    if output == "json":
        emit_json(result)
        return
    if output == "name":  # the trusted issuing CAs, one per line
        for row in issuing:
            if row["state"] != "retired":
                click.echo(row.get("name", row["generation"]))
        return
    click.echo(f"root: {root['subject']}, valid until {root['not_after']}, key {key_state}")
    table(
        "issuing CAs",
        ["#", "state", "name", "valid until", "in use", "valid"],
        [
            [
                str(r["generation"]),
                r["state"],
                r.get("name", "-"),
                str(r.get("not_after", "-"))[:10],
                f"{r['in_use']}" + (f" ({_kinds(r['in_use_by_kind'])})" if r["in_use"] else ""),
                str(r["valid"]),
            ]
            for r in issuing
        ],
    )


def _root_key_state(path: Path) -> str:
    if not path.exists():
        return "offline"
    return "on this host, encrypted" if is_encrypted_key_file(path) else "on this host, NOT encrypted"


def _ca_state(trusted: bool, current: bool) -> str:
    if not trusted:
        return "retired"
    return "issuing" if current else "trusted"


def _kinds(by_kind: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(by_kind.items()))


# --- rotate ---------------------------------------------------------------------------------------


@ca_group.command("rotate")
@data_option
@click.option(
    "--root-key",
    "root_key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The root key's offline copy (from `fleetgate ca export-root-key`), when ca/root.key is not on "
    f"this host; its passphrase from ${ROOT_PASSPHRASE_ENV} or asked.",
)
@json_option
@friendly_errors
def rotate(data_dir: Path | None, root_key_file: Path | None, as_json: bool) -> None:
    """Make a new issuing CA (new key, signed by the root) the one that issues; the old one stays trusted.

    The gateway's server certificate is re-issued under the new issuing CA (units trust the root,
    so they accept it). Then reload the gateway; units move over as they renew.
    """
    now = utc_now()
    config = load_config()
    with open_local(data_dir) as state:
        previous = state.ca.authority.generation
        root_key = _root_key(state, root_key_file)
        issuing = state.ca.rotate_issuing_ca(state.data.ca_dir, root_key, now)
        write_client_ca_bundle(state.data, state.ca.authority)
        names = served_hostnames(state.data.server_cert)
        lifetime = timedelta(days=config.certificates.server_lifetime_days)
        server = replace_server_certificate(state, names, now, lifetime)
        details = {
            "generation": issuing.generation,
            "previous": previous,
            "sha256": issuing.sha256,
            "not_after": _date(issuing.certificate, "not_valid_after_utc"),
            "server_sha256": fingerprint(server),
            "root_key_from": "file" if root_key_file is not None else "data_dir",
        }
        state.audit.append(
            actor=local_actor(), action="ca.rotate", subject="ca", outcome="ok", details=details, now=now
        )
    result = {**details, "subject": _name(issuing.certificate), "hostnames": names}
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"Issuing CA {issuing.generation} ({result['subject']}, valid until {details['not_after']}) issues "
        f"from now on; issuing CA {previous} stays trusted until `fleetgate ca retire {previous}`."
    )
    click.echo(f"Server certificate re-issued under it for {', '.join(names)}.")
    click.echo(
        f"Next: {RELOAD_HINT}; units move to issuing CA {issuing.generation} as they renew "
        f"(`fleetgate ca status` counts those still on {previous})."
    )


def _root_key(state: LocalState, copy: Path | None) -> PrivateKey:
    root = state.ca.authority.root
    if copy is not None:
        return load_root_key(copy, root, passphrase_source(ROOT_PASSPHRASE_ENV))
    if not state.data.root_key.exists():
        raise CliError(
            f"the root key is not on this host ({state.data.root_key} was taken offline); "
            "pass its copy with --root-key FILE"
        )
    return load_root_key(state.data.root_key, root, state.passphrase)


# --- retire ---------------------------------------------------------------------------------------


@ca_group.command("retire")
@click.argument("generation", type=int)
@data_option
@click.option(
    "--force",
    is_flag=True,
    help="Retire even while certificates it issued are in use: they are refused from then on, and their "
    "holders need new ones (units: `fleetgate unit token`).",
)
@json_option
@friendly_errors
def retire(generation: int, data_dir: Path | None, force: bool, as_json: bool) -> None:
    """Stop trusting issuing CA GENERATION (see `fleetgate ca status`); its key is deleted.

    Refused, with the count, while certificates it issued are still in use.
    """
    now = utc_now()
    with open_local(data_dir) as state:
        try:
            retired = state.ca.retire_issuing_ca(state.data.ca_dir, generation, now, force=force)
        except PkiError as exc:
            state.audit.append(
                actor=local_actor(),
                action="ca.retire",
                subject=f"issuing/{generation}",
                outcome="refused",
                reason=exc.reason,
                now=now,
            )
            raise
        write_client_ca_bundle(state.data, state.ca.authority)
        details: dict[str, object] = {
            "generation": generation,
            "revoked": retired.revoked,
            "forced_in_use": retired.forced_in_use,
        }
        state.audit.append(
            actor=local_actor(),
            action="ca.retire",
            subject=f"issuing/{generation}",
            outcome="ok",
            details=details,
            now=now,
        )
    if as_json:
        emit_json(details)
        return
    click.echo(
        f"Retired issuing CA {generation}: its key is deleted and the {retired.revoked} unexpired "
        "certificate(s) it issued are recorded as revoked (superseded); a running gateway refuses them now."
    )
    if retired.forced_in_use:
        click.echo(f"{retired.forced_in_use} of them were still in use: their holders need new certificates.")
    click.echo(
        f"Next: {RELOAD_HINT}, so that MQTT handshakes stop trusting it; the HTTPS listener drops it at "
        "the next restart."
    )


# --- the root key ---------------------------------------------------------------------------------


@ca_group.command("export-root-key")
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
@data_option
@json_option
@friendly_errors
def export_root_key(destination: Path, data_dir: Path | None, as_json: bool) -> None:
    """Write the root key to DESTINATION (say, removable media), encrypted with a passphrase of its own.

    The passphrase comes from $FLEETGATE_ROOT_KEY_PASSPHRASE or is asked twice; the copy is read
    back before this command says it is done.
    """
    now = utc_now()
    with open_local(data_dir) as state:
        root = state.ca.authority.root
        if not state.data.root_key.exists():
            raise CliError(
                f"the root key is not on this host ({state.data.root_key} is gone): it is offline already"
            )
        if destination.exists():
            raise CliError(f"{destination} already exists; name a new file (nothing is overwritten)")
        key = load_root_key(state.data.root_key, root, state.passphrase)
        secret = new_passphrase(
            ROOT_PASSPHRASE_ENV,
            f"the root key's copy {destination}",
            f"the root key's copy is encrypted with a passphrase of its own: set {ROOT_PASSPHRASE_ENV} or "
            "run this command at a terminal to be asked for one",
        )
        write_private_key(destination, key, secret)
        load_root_key(destination, root, secret)  # the copy opens and holds this root's key
        state.audit.append(
            actor=local_actor(),
            action="ca.root_key_exported",
            subject="ca",
            outcome="ok",
            details={"destination": str(destination.absolute()), "root_sha256": fingerprint(root)},
            now=now,
        )
    if as_json:
        emit_json({"destination": str(destination.absolute()), "root_sha256": fingerprint(root)})
        return
    click.echo(f"Wrote the root key to {destination}, encrypted with its own passphrase.")
    click.echo(f"Store it offline, then: fleetgate ca remove-root-key --copy {destination}")


@ca_group.command("remove-root-key")
@click.option(
    "--copy",
    "copy_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The copy `fleetgate ca export-root-key` wrote; it must open (passphrase from "
    f"${ROOT_PASSPHRASE_ENV} or asked) and hold this root's key before the one here is deleted.",
)
@data_option
@json_option
@friendly_errors
def remove_root_key(copy_file: Path, data_dir: Path | None, as_json: bool) -> None:
    """Delete the root key from this host; the gateway needs only the issuing CA's key.

    Rotating the issuing CA then takes the offline copy: `fleetgate ca rotate --root-key FILE`.
    """
    now = utc_now()
    with open_local(data_dir) as state:
        root = state.ca.authority.root
        if not state.data.root_key.exists():
            raise CliError(f"there is no root key on this host to remove ({state.data.root_key} is gone)")
        load_root_key(copy_file, root, passphrase_source(ROOT_PASSPHRASE_ENV))
        state.data.root_key.unlink()
        state.audit.append(
            actor=local_actor(),
            action="ca.root_key_removed",
            subject="ca",
            outcome="ok",
            details={"copy": str(copy_file.absolute()), "root_sha256": fingerprint(root)},
            now=now,
        )
    if as_json:
        emit_json({"removed": str(state.data.root_key), "copy": str(copy_file.absolute())})
        return
    click.echo(f"Removed {state.data.root_key}; the gateway runs on the issuing CA's key alone.")
    click.echo(f"To rotate the issuing CA later: fleetgate ca rotate --root-key {copy_file}")
