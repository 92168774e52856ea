"""`fleetgate renew --daemon`: keep a device's certificate fresh, as its init system would run it.

The plan is pki/renewal.py's (2/3 of the life or `--expires-in`, moved earlier by jitter). This loop
reads the certificate file again before each plan (another process may have renewed it), sleeps until
the time comes, renews over EST, runs `--exec` after each renewal, and retries failures with growing
pauses. It stops for good, with the reason, when renewing cannot work any more: the gateway refused
(revoked, expired, not allowed to renew) or the certificate has expired meanwhile. SIGTERM and
Ctrl-C end it cleanly between steps.

Clock, sleep and randomness are given by the caller, so a test runs days of renewals in a second.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.cli.common import CliError, utc_now
from gateway.cli.device_files import device_csr, read_metadata, save_device_files
from pki.est_client import EstClientError, bootstrap, simplereenroll
from pki.keys import generate_private_key, load_private_key
from pki.renewal import Validity, next_renewal, retry_after, too_eager

PERMANENT = frozenset({400, 401, 403, 404})  # the gateway said no: asking again changes nothing


class RenewalStopped(Exception):
    """Renewing cannot work any more; the message says why and what to do."""


@dataclass
class Daemon:
    renew_once: Callable[[], Validity]  # renews over EST and saves the files; the new validity
    read_validity: Callable[[], Validity]  # the certificate file as it is now
    clock: Callable[[], datetime]
    sleep: Callable[[float], None]
    rng: random.Random
    report: Callable[[dict[str, Any]], None]  # one event: planned, renewed, failed, exec_failed
    expires_in: timedelta | None = None
    jitter: timedelta | None = None
    exec_command: str | None = None
    exec_env: Callable[[], dict[str, str]] = dict

    def run(self, max_renewals: int | None = None) -> int:
        """Renew forever (or `max_renewals` times); returns how many renewals were made."""
        renewals = 0
        while max_renewals is None or renewals < max_renewals:
            validity = self.read_validity()
            if too_eager(validity, self.expires_in):
                raise RenewalStopped(
                    f"--expires-in {self.expires_in} is not shorter than a certificate's whole life "
                    f"({validity.lifetime}): every new certificate would be renewed at once; choose less"
                )
            when = next_renewal(validity, self.clock(), self.expires_in, self.jitter, self.rng)
            self.report(
                {"event": "planned", "at": when.isoformat(), "not_after": validity.not_after.isoformat()}
            )
            self._wait_until(when)
            self._renew_with_retries(validity)
            renewals += 1
        return renewals

    def _renew_with_retries(self, validity: Validity) -> None:
        attempt = 0
        while True:
            now = self.clock()
            if now >= validity.not_after:
                raise RenewalStopped(
                    f"the certificate expired at {validity.not_after.isoformat()} before it could be "
                    "renewed; enroll again with a new token (`fleetgate unit token UNIT` on the gateway)"
                )
            try:
                renewed = self.renew_once()
            except EstClientError as exc:
                if exc.status in PERMANENT:
                    raise RenewalStopped(str(exc)) from None
                attempt += 1
                again = retry_after(attempt, validity, now, self.rng)
                self.report(
                    {"event": "failed", "error": str(exc), "attempt": attempt, "retry_at": again.isoformat()}
                )
                self._wait_until(again)
                continue
            self.report({"event": "renewed", "not_after": renewed.not_after.isoformat()})
            self._exec()
            return

    def _wait_until(self, when: datetime) -> None:
        left = (when - self.clock()).total_seconds()
        if left > 0:
            self.sleep(left)

    def _exec(self) -> None:
        if not self.exec_command:
            return
        status = run_exec(self.exec_command, self.exec_env())
        if status != 0:
            self.report({"event": "exec_failed", "command": self.exec_command, "status": status})


def run_exec(command: str, env: dict[str, str]) -> int:
    """`--exec` after a single renewal: the command's exit status."""
    return subprocess.run(command, shell=True, env={**os.environ, **env}, check=False).returncode


class Renewer:
    """One device's certificate files and the EST server that renews them."""

    def __init__(self, cert_file: Path, key_file: Path, server: str | None, ca_file: Path | None) -> None:
        meta = read_metadata(cert_file.parent)
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
        return save_device_files(self.cert_file.parent.absolute(), self.unit_id, key, cert, est)

    def exec_env(self) -> dict[str, str]:
        return {
            "FLEETGATE_CERT": str(self.cert_file.absolute()),
            "FLEETGATE_KEY": str(self.key_file.absolute()),
            "FLEETGATE_SERIAL": format(self.current().serial_number, "x"),
        }


def run_daemon(
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
            click.echo(event_line(renewer.unit_id, event), err=event["event"] in ("failed", "exec_failed"))
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


def event_line(unit_id: str, event: dict[str, Any]) -> str:
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
