"""Device-side commands: enroll and renew over EST. The private key is made here and never leaves.

Files written (DIR defaults to ./UNIT-ID):
    DIR/UNIT.key   the unit's private key (0600)
    DIR/UNIT.crt   its certificate followed by the issuing CA (what MQTT clients present)
    DIR/ca.crt     the fleet root (what MQTT clients trust the gateway with)
    DIR/enrollment.json   server URL and file names, so `renew` needs nothing else
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.cli.common import CliError, emit_json, friendly_errors, json_option, utc_now, warn
from gateway.cli.renew_daemon import Daemon, RenewalStopped, run_exec
from gateway.ops.status import parse_duration
from pki.est_client import EstServer, bootstrap, cacerts, simpleenroll, simplereenroll
from pki.keys import PrivateKey, generate_private_key, load_private_key, write_private_key, write_public_file
from pki.names import validate_id
from pki.renewal import Validity, should_renew

METADATA = "enrollment.json"


def device_csr(key: PrivateKey, unit_id: str) -> x509.CertificateSigningRequest:
    # The device does not need to know the trust domain: the CA writes the SAN from its own records.
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    )
    return builder.sign(key, hashes.SHA256())


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _issuing_chain(server: EstServer) -> list[x509.Certificate]:
    return [c for c in cacerts(server) if c.issuer != c.subject]


def _save(
    out: Path, unit_id: str, key: PrivateKey, cert: x509.Certificate, server: EstServer
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path, ca_path = out / f"{unit_id}.key", out / f"{unit_id}.crt", out / "ca.crt"
    write_private_key(key_path, key)
    write_public_file(cert_path, _pem([cert, *_issuing_chain(server)]))
    write_public_file(ca_path, server.ca_pem)
    meta = {
        "server": server.url,
        "unit": unit_id,
        "cert": cert_path.name,
        "key": key_path.name,
        "ca": ca_path.name,
    }
    write_public_file(out / METADATA, json.dumps(meta, indent=2).encode())
    return {
        "cert": str(cert_path),
        "key": str(key_path),
        "ca": str(ca_path),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


@click.command()
@click.option("--server", required=True, help="Gateway HTTPS URL, e.g. https://gateway.example:8443.")
@click.option("--unit", "unit_id", required=True, help="The unit id the token was issued for.")
@click.option("--token", required=True, help="One-time enrollment token from `fleetgate unit add`.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the key and certificates (default: ./UNIT).",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The fleet root certificate, if you have it.",
)
@click.option("--ca-sha256", default=None, help="Or the root's SHA-256 fingerprint (from `unit add`).")
@click.option(
    "--key-type",
    type=click.Choice(["p256", "p384", "rsa2048", "rsa3072"]),
    default="p256",
    show_default=True,
    help="Key algorithm of the key made on this device (ECDSA P-256/P-384 or RSA).",
)
@json_option
@friendly_errors
def enroll(
    server: str,
    unit_id: str,
    token: str,
    out: Path | None,
    ca_file: Path | None,
    ca_sha256: str | None,
    key_type: str,
    as_json: bool,
) -> None:
    """Enroll this device over EST: a key made here, a one-time token, the certificate saved."""
    validate_id("unit", unit_id)
    est = bootstrap(server, ca_file=ca_file, ca_sha256=ca_sha256)
    key = generate_private_key(key_type)
    cert = simpleenroll(est, unit_id, token, device_csr(key, unit_id))
    paths = _save((out or Path(unit_id)).absolute(), unit_id, key, cert, est)
    if as_json:
        emit_json({"unit": unit_id, **paths})
    else:
        click.echo(f"Enrolled {unit_id}: certificate {paths['cert']} valid until {paths['not_after']}.")


@click.command()
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The current certificate (PEM), e.g. TRK-00042/TRK-00042.crt; replaced in place.",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Its private key; a fresh key replaces it.",
)
@click.option("--server", default=None, help="Gateway HTTPS URL (default: from enrollment.json).")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The fleet root certificate (default: ca.crt beside the certificate).",
)
@click.option(
    "--expires-in",
    metavar="DURATION",
    default=None,
    help="Renew only when the certificate ends within DURATION (10d, 12h); with --daemon, renew that "
    "long before its end instead of at 2/3 of its life.",
)
@click.option(
    "--daemon",
    is_flag=True,
    help="Keep running: renew each certificate at 2/3 of its life (with jitter), retry failures, stop "
    "only when renewing cannot work any more.",
)
@click.option(
    "--jitter",
    metavar="DURATION",
    default=None,
    help="With --daemon: renew up to this much earlier, at random, so a fleet does not renew at once "
    "(default: 1/20 of the certificate's life, at most 6h).",
)
@click.option(
    "--exec",
    "exec_command",
    metavar="COMMAND",
    default=None,
    help="Run COMMAND through the shell after each renewal (e.g. reload the MQTT client).",
)
@json_option
@friendly_errors
def renew(
    cert_file: Path,
    key_file: Path,
    server: str | None,
    ca_file: Path | None,
    expires_in: str | None,
    daemon: bool,
    jitter: str | None,
    exec_command: str | None,
    as_json: bool,
) -> None:
    """Renew this device's certificate over mTLS with a fresh key (simplereenroll).

    Once (now, or with --expires-in only when that little is left), or --daemon: keep renewing at
    2/3 of each certificate's life with jitter, retrying failures, as an init system would run it.
    --exec runs a command after each renewal (FLEETGATE_CERT, FLEETGATE_KEY, FLEETGATE_SERIAL set)."""
    within, spread = _duration(expires_in, "--expires-in"), _duration(jitter, "--jitter")
    if spread is not None and not daemon:
        raise click.UsageError("--jitter spreads the renewals of --daemon; add --daemon")
    renewer = Renewer(cert_file, key_file, server, ca_file)
    if daemon:
        _run_daemon(renewer, within, spread, exec_command, as_json)
        return
    validity = renewer.validity()
    if not should_renew(validity, utc_now(), within):
        left = validity.left(utc_now())
        if as_json:
            emit_json(
                {"unit": renewer.unit_id, "renewed": False, "not_after": validity.not_after.isoformat()}
            )
        else:
            click.echo(
                f"Not renewed: {renewer.unit_id}'s certificate is valid until "
                f"{validity.not_after.isoformat()} ({_span(left)} left, more than --expires-in {expires_in})."
            )
        return
    paths = renewer.renew()
    if exec_command:
        status = run_exec(exec_command, renewer.exec_env())
        if status != 0:
            warn(f"--exec {exec_command!r} exited with status {status}")
    if as_json:
        emit_json({"unit": renewer.unit_id, "renewed": True, **paths})
    else:
        click.echo(
            f"Renewed {renewer.unit_id}: certificate {paths['cert']} valid until {paths['not_after']}."
        )


class Renewer:
    """One device's certificate files and the EST server that renews them."""

    def __init__(self, cert_file: Path, key_file: Path, server: str | None, ca_file: Path | None) -> None:
        meta = _metadata(cert_file.parent)
        url = server or meta.get("server")
        ca = ca_file or (cert_file.parent / meta["ca"] if "ca" in meta else None)
        if not url or ca is None:
            raise CliError("no server known for this certificate; pass --server URL and --ca ROOT")
        load_private_key(key_file)  # fail early, clearly, on a missing or loose key file
        self.cert_file, self.key_file, self.url, self.ca = cert_file, key_file, url, ca
        current = self.current()
        self.unit_id = str(current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def current(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def validity(self) -> Validity:
        current = self.current()
        return Validity(current.not_valid_before_utc, current.not_valid_after_utc)

    def renew(self) -> dict[str, str]:
        est = bootstrap(self.url, ca_file=self.ca)
        key = generate_private_key()
        cert = simplereenroll(est, self.cert_file, self.key_file, device_csr(key, self.unit_id))
        return _save(self.cert_file.parent.absolute(), self.unit_id, key, cert, est)

    def exec_env(self) -> dict[str, str]:
        return {
            "FLEETGATE_CERT": str(self.cert_file.absolute()),
            "FLEETGATE_KEY": str(self.key_file.absolute()),
            "FLEETGATE_SERIAL": format(self.current().serial_number, "x"),
        }


def _run_daemon(
    renewer: Renewer,
    within: timedelta | None,
    spread: timedelta | None,
    exec_command: str | None,
    as_json: bool,
) -> None:
    def report(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps({"unit": renewer.unit_id, **event}, sort_keys=True))
        else:
            click.echo(_event_line(renewer.unit_id, event), err=event["event"] in ("failed", "exec_failed"))
        sys.stdout.flush()

    def renew_once() -> Validity:
        renewer.renew()
        return renewer.validity()

    daemon = Daemon(
        renew_once=renew_once,
        read_validity=renewer.validity,
        clock=utc_now,
        sleep=time.sleep,
        rng=random.SystemRandom(),
        report=report,
        expires_in=within,
        jitter=spread,
        exec_command=exec_command,
        exec_env=renewer.exec_env,
    )
    signal.signal(signal.SIGTERM, _stop)  # systemctl stop: end between steps, status 0
    try:
        daemon.run()
    except RenewalStopped as exc:
        raise CliError(str(exc), "renewal_stopped") from None
    except (KeyboardInterrupt, _Stopped):
        return


class _Stopped(Exception):
    """SIGTERM."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def _event_line(unit_id: str, event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind == "planned":
        return (
            f"{unit_id}: next renewal at {event['at']} (the certificate is valid until {event['not_after']})"
        )
    if kind == "renewed":
        return f"{unit_id}: renewed; the new certificate is valid until {event['not_after']}"
    if kind == "failed":
        return (
            f"{unit_id}: renewal failed ({event['error']}); attempt {event['attempt']}, "
            f"next at {event['retry_at']}"
        )
    return f"{unit_id}: --exec {event['command']!r} exited with status {event['status']}"


def _duration(text: str | None, option: str) -> timedelta | None:
    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    if value <= timedelta(0):
        raise click.BadParameter("must be longer than nothing", param_hint=option)
    return value


def _span(left: timedelta) -> str:
    days, seconds = left.days, left.seconds
    return f"{days}d {seconds // 3600}h" if days else f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _metadata(directory: Path) -> dict[str, str]:
    path = directory / METADATA
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
