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

import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pki.est_client import EstClientError
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
