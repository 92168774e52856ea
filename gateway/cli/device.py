"""Device-side commands: enroll and renew over EST. The private key is made here and never leaves.

The files they keep: gateway/cli/device_files.py; renewing on a schedule: gateway/cli/renew_daemon.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from gateway.cli.common import emit_json, friendly_errors, json_option, utc_now, warn
from gateway.cli.device_files import device_csr, save_device_files
from gateway.cli.renew_daemon import Renewer, run_daemon, run_exec
from gateway.ops.status import parse_duration
from pki.est_client import bootstrap, simpleenroll
from pki.keys import generate_private_key
from pki.names import validate_id
from pki.renewal import should_renew

__all__ = ["device_csr", "enroll", "renew"]  # device_csr: tests and tools build a unit's CSR with it


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
    paths = save_device_files((out or Path(unit_id)).absolute(), unit_id, key, cert, est)
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
        run_daemon(renewer, within, spread, exec_command, as_json)
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
