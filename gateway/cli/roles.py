"""Role identities (operator, service, partner): a key made here and a certificate from the CA."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.admin.rights import ROLE_RIGHTS
from gateway.admin.totp_store import Enrollment, mark_enrolled
from gateway.admin.totp_store import enroll as enroll_totp
from gateway.cli.command_groups import OrderedGroup
from gateway.cli.common import (
    NotFoundError,
    console,
    data_option,
    emit_json,
    friendly_errors,
    json_option,
    local_actor,
    open_local,
    utc_now,
)
from gateway.cli.output import Column, output_option, show_rows
from gateway.config import load_config
from pki.est import build_csr
from pki.keys import generate_private_key, write_private_key, write_public_file
from pki.names import make_identity
from pki.records import IdentityRecord
from pki.service import FleetCA
from pki.store import Registry

KEY_TYPES = ("p256", "p384", "rsa2048", "rsa3072")
ROLES = tuple(ROLE_RIGHTS)

# --- role identities ----------------------------------------------------------------------------


def _role_command(kind: str, with_tier: bool) -> click.Command:
    @click.command("add", help=f"Issue a key and certificate for {_article(kind)} {kind} identity NAME.")
    @click.argument("name")
    @data_option
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where to write NAME.key, NAME.crt and ca.crt (default: DATA/identities/KIND).",
    )
    @click.option(
        "--key-type",
        type=click.Choice(KEY_TYPES),
        default="p256",
        show_default=True,
        help="Key algorithm of the new key (ECDSA P-256/P-384 or RSA).",
    )
    @json_option
    @friendly_errors
    def add(
        name: str,
        data_dir: Path | None,
        out: Path | None,
        key_type: str,
        as_json: bool,
        tier: int | None = None,
        role: str | None = None,
        org: str | None = None,
        server: str | None = None,
        totp: bool = False,
    ) -> None:
        with open_local(data_dir) as state:
            identity = make_identity(kind, name, state.trust_domain)
            target = (out or state.data.root / "identities" / kind).absolute()
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = generate_private_key(key_type)
            now = utc_now()
            facts = (("tier", tier), ("role", role), ("org", org))
            metadata = {k: str(v) for k, v in facts if v is not None}
            lifetime = timedelta(days=load_config().certificates.role_lifetime_days)
            issued = state.ca.issue_identity(
                kind, name, build_csr(key, identity), now, lifetime, metadata=metadata or None
            )
            paths = _write_identity_files(target, name, key, issued, state.ca)
            if kind == "operator":
                paths["profile"] = write_profile(target / f"{name}.profile.json", server, paths)
            enrollment = None
            if totp:  # the secret goes to DATA/totp (0600); only its URI and QR leave, once, below
                enrollment = enroll_totp(state.data.root, name, f"fleetgate {state.trust_domain}", target)
                metadata = mark_enrolled(state.registry, name, now)  # the registry says who has one
            state.audit.append(
                actor=local_actor(),
                action=f"{kind}.add",
                subject=str(identity),
                outcome="ok",
                details={"serial": format(issued.serial_number, "x"), **metadata},
                now=now,
            )
        once = {} if enrollment is None else {"totp_uri": enrollment.uri, "totp_qr": str(enrollment.qr_png)}
        if as_json:
            emit_json({kind: name, **{k: str(v) for k, v in paths.items()}, **metadata, **once})
        else:
            click.echo(f"Issued {identity} ({identity.spiffe_uri}).")
            for label, path in paths.items():
                click.echo(f"{label:>7}: {path}")
            if "profile" in paths:
                click.echo(f"Admin API from anywhere: fleetgate unit list --profile {paths['profile']}")
            if enrollment is not None:
                click.echo("TOTP enrolled; add it to your authenticator app now (shown only once):")
                click.echo(f"    {enrollment.uri}")
                _show_qr(enrollment)

    if with_tier:
        add = click.option(
            "--tier",
            type=click.IntRange(1, 3),
            required=True,
            help="Partner tier: 1 full feed, 2 reduced view, 3 trickle.",
        )(add)
    if kind == "operator":
        add = click.option(
            "--role",
            type=click.Choice(ROLES),
            default="ops",
            show_default=True,
            help="Admin role: its admin API rights and its MQTT grants (roles.operator.ROLE in the policy).",
        )(add)
        add = click.option(
            "--totp",
            is_flag=True,
            help="Enroll a TOTP second factor (sensitive admin actions need one: --totp CODE).",
        )(add)
        add = click.option(
            "--server",
            default="https://localhost:8443",
            show_default=True,
            help="Admin API URL written into NAME.profile.json.",
        )(add)
    if kind == "partner":
        add = click.option(
            "--org",
            default=None,
            help="Partner organisation this identity belongs to (`partner disconnect ORG` cuts them all).",
        )(add)
    return add


def _show_qr(enrollment: Enrollment) -> None:
    click.echo(f"    QR code: {enrollment.qr_png} (0600; delete it once scanned)")
    if console.is_terminal:  # over SSH the PNG is out of reach: scan the terminal instead
        click.echo(enrollment.qr_text, nl=False)


def write_profile(path: Path, server: str | None, paths: dict[str, Path]) -> Path:
    """A profile for the ops commands (--profile / $FLEETGATE_PROFILE); paths relative to it."""
    profile = {
        "server": server or "https://localhost:8443",
        "cert": paths["cert"].name,
        "key": paths["key"].name,
        "ca": paths["ca"].name,
    }
    write_public_file(path, json.dumps(profile, indent=2).encode() + b"\n")
    return path


def _write_identity_files(
    target: Path, name: str, key: object, issued: x509.Certificate, ca: FleetCA
) -> dict[str, Path]:
    key_path, cert_path, ca_path = target / f"{name}.key", target / f"{name}.crt", target / "ca.crt"
    if key_path.exists():
        key_path.unlink()  # a re-issued identity gets a fresh key; the old cert stays valid until revoked
    write_private_key(key_path, key)  # type: ignore[arg-type]
    chain = [issued, *ca.authority.chain()]
    write_public_file(cert_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    write_public_file(ca_path, ca.authority.root.public_bytes(serialization.Encoding.PEM))
    return {"cert": cert_path, "key": key_path, "ca": ca_path}


@click.command("totp", help="Enroll (or re-enroll) operator NAME for a TOTP second factor.")
@click.argument("name")
@data_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write NAME.totp.png, the QR code (default: DATA/identities/operator).",
)
@json_option
@friendly_errors
def operator_totp(name: str, data_dir: Path | None, out: Path | None, as_json: bool) -> None:
    """Sensitive admin rights need a second factor from every operator; this gives an existing operator
    one without issuing a new certificate. A new secret replaces any earlier one."""
    with open_local(data_dir) as state:
        identity = make_identity("operator", name, state.trust_domain)
        record = state.registry.get_identity("operator", name)
        if record is None or record.state == "revoked":
            raise click.ClickException(
                f"there is no operator {name} in good standing; add it with `fleetgate operator add {name}`"
            )
        target = (out or state.data.root / "identities" / "operator").absolute()
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = utc_now()
        enrollment = enroll_totp(state.data.root, name, f"fleetgate {state.trust_domain}", target)
        mark_enrolled(state.registry, name, now)
        state.audit.append(
            actor=local_actor(), action="operator.totp", subject=str(identity), outcome="ok", now=now
        )
    if as_json:
        emit_json(
            {
                "operator": name,
                "totp": "enrolled",
                "totp_uri": enrollment.uri,
                "totp_qr": str(enrollment.qr_png),
            }
        )
        return
    click.echo(f"TOTP enrolled for {identity}; add it to the authenticator app now (shown only once):")
    click.echo(f"    {enrollment.uri}")
    _show_qr(enrollment)


GROUP_HELP = {
    "operator": "People who run the fleet through the admin API (roles ops, security, auditor, metrics).",
    "service": "Backend services (dispatch, analytics): their certificates and grants.",
    "partner": "Carriers and brokers (tiers 1-3): their certificates, and cutting them off.",
}


def role_group(kind: str, with_tier: bool = False, extra: tuple[click.Command, ...] = ()) -> click.Group:
    group = OrderedGroup(kind, help=GROUP_HELP.get(kind, f"Manage {kind} identities."))
    group.add_command(_role_command(kind, with_tier))
    group.add_command(identity_list(kind))
    if kind == "operator":
        group.add_command(operator_set_role)
        group.add_command(operator_totp)
    group.add_command(identity_remove(kind))
    for command in extra:  # e.g. `partner disconnect`, `KIND revoke`
        group.add_command(command)
    return group


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


# --- list, remove, set-role ---------------------------------------------------------------------

FACTS = ("role", "tier", "org", "totp")  # the metadata worth a column
FACTS_BY_KIND = {"operator": ("role", "totp"), "partner": ("tier", "org")}


def identity_list(kind: str) -> click.Command:
    @click.command("list")
    @data_option
    @output_option
    @friendly_errors
    def list_command(data_dir: Path | None, output: str) -> None:
        with open_local(data_dir) as state:
            rows = [identity_row(state.registry, record) for record in state.registry.list_identities(kind)]
        facts = [Column(f, f) for f in FACTS_BY_KIND.get(kind, ())]
        columns = [
            Column("name", "name"),
            Column("state", "state"),
            *facts,
            Column("cert expires", "not_after"),
            Column("serial", "serial", wide=True),
            Column("created", "created_at", wide=True),
        ]
        show_rows(rows, columns, output, title=f"{kind}s", name="name")

    list_command.help = f"List {kind} identities: state, {_facts_text(kind)}newest certificate."
    return list_command


def _facts_text(kind: str) -> str:
    return {"operator": "role, second factor, ", "partner": "tier, organisation, "}.get(kind, "")


def identity_row(registry: Registry, record: IdentityRecord) -> dict[str, Any]:
    latest = registry.latest_certificate(record.kind, record.id)
    return {
        "name": record.id,
        "kind": record.kind,
        "state": record.state,
        **{f: record.metadata[f] for f in FACTS if f in record.metadata},
        "serial": format(latest.serial, "x") if latest else None,
        "not_after": latest.not_after.isoformat() if latest else None,
        "created_at": record.created_at.isoformat(),
    }


def identity_remove(kind: str) -> click.Command:
    @click.command("remove")
    @click.argument("name")
    @data_option
    @click.option(
        "--force", is_flag=True, help="Remove it even though it holds valid certificates (they are revoked)."
    )
    @json_option
    @friendly_errors
    def remove_command(name: str, data_dir: Path | None, force: bool, as_json: bool) -> None:
        with open_local(data_dir) as state:
            now = utc_now()
            revoked = state.ca.remove_identity(kind, name, now, force=force)
            serials = [format(serial, "x") for serial in revoked]
            state.audit.append(
                actor=local_actor(),
                action=f"{kind}.remove",
                subject=f"{kind}/{name}",
                outcome="ok",
                details={"revoked_serials": serials},
                now=now,
            )
        if as_json:
            emit_json({kind: name, "removed": True, "revoked_serials": serials})
            return
        done = f"; revoked {len(serials)} certificate(s), a running gateway cuts its sessions"
        click.echo(f"Removed {kind} {name}{done if serials else ''}.")

    remove_command.help = (
        f"Forget {kind} NAME; with --force its valid certificates are revoked first (cessationOfOperation)."
    )
    return remove_command


@click.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
@data_option
@json_option
@friendly_errors
def operator_set_role(name: str, role: str, data_dir: Path | None, as_json: bool) -> None:
    """Give operator NAME another admin API role; it counts from its next request (no new certificate)."""
    with open_local(data_dir) as state:
        now = utc_now()
        with state.registry.transaction():
            record = state.registry.get_identity("operator", name)
            if record is None:
                raise NotFoundError(
                    f"there is no operator {name}; see `fleetgate operator list`", "unknown_identity"
                )
            before = record.metadata.get("role", "")
            state.registry.update_metadata("operator", name, {**record.metadata, "role": role}, now)
        state.audit.append(
            actor=local_actor(),
            action="operator.set_role",
            subject=f"operator/{name}",
            outcome="ok" if before != role else "unchanged",
            details={"role": role, "previous": before},
            now=now,
        )
    if as_json:
        emit_json({"operator": name, "role": role, "previous": before or None})
    else:
        was = f" (was {before})" if before and before != role else ""
        click.echo(f"Operator {name} has role {role}{was}.")
