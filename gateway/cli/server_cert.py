"""`fleetgate server-cert`: the gateway's own TLS certificate, re-issued without touching the CA.

A new key and a certificate for the names clients use (always the loopback names too), issued by the
fleet's issuing CA, replace `DATA/server/` — the key first, then the certificate, each atomically.
A running gateway serves them after a reload (`systemctl reload fleetgate`, i.e. SIGHUP), which also
re-signs the retained mode commands with the new key. Units need nothing: they trust the fleet root,
not this certificate.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import click
from cryptography import x509

from gateway.cli.ca_commands import default_hostnames, fingerprint
from gateway.cli.common import (
    LocalState,
    data_option,
    emit_json,
    friendly_errors,
    json_option,
    local_actor,
    open_local,
    utc_now,
)
from gateway.config import load_config


@click.group("server-cert")
def server_cert() -> None:
    """The gateway's own TLS server certificate."""


@server_cert.command("issue")
@data_option
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="DNS name or IP clients use to reach the gateway (repeatable); loopback names are always in.",
)
@click.option(
    "--days", type=float, default=None, help="Lifetime in days (default: certificates.server_lifetime_days)."
)
@json_option
@friendly_errors
def issue(data_dir: Path | None, hostnames: tuple[str, ...], days: float | None, as_json: bool) -> None:
    """Issue a new key and server certificate for these names; reload the gateway to serve them."""
    names = list(dict.fromkeys([*hostnames, *default_hostnames()]))
    lifetime = timedelta(days=days if days is not None else load_config().certificates.server_lifetime_days)
    now = utc_now()
    with open_local(data_dir) as state:
        cert = replace_server_certificate(state, names, now, lifetime)
    result = {"hostnames": names, "sha256": fingerprint(cert), "not_after": _iso(cert)}
    if as_json:
        emit_json(result)
        return
    click.echo(f"server certificate for {', '.join(names)}, valid until {result['not_after']}")
    click.echo(
        "a running gateway serves it after a reload: systemctl reload fleetgate (or kill -HUP its pid)"
    )


def replace_server_certificate(
    state: LocalState, names: list[str], now: datetime, lifetime: timedelta
) -> x509.Certificate:
    """A new key and certificate from the issuing CA that issues now, in place of DATA/server/."""
    server_dir = state.data.server_dir
    with tempfile.TemporaryDirectory(prefix=".server-", dir=server_dir) as staging:
        cert = state.ca.issue_server_certificate("gateway", names, Path(staging), now, lifetime)
        for name in ("server.key", "server.crt"):  # the key first: the old cert never meets a new key
            os.replace(Path(staging) / name, server_dir / name)
    state.audit.append(
        actor=local_actor(),
        action="server.certificate_issued",
        subject="gateway",
        outcome="ok",
        details={"hostnames": names, "sha256": fingerprint(cert), "not_after": _iso(cert)},
        now=now,
    )
    return cert


def served_hostnames(server_cert: Path) -> list[str]:
    """The DNS names and IP addresses the current server certificate is for, in its order."""
    cert = x509.load_pem_x509_certificate(server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def _iso(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.isoformat(timespec="seconds")
