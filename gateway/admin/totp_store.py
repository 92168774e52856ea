"""Operator TOTP secrets on disk and the admin API's second-factor check.

Secrets live in DATA/totp/ (directory 0700, one file per operator, 0600, base32): the CLI enrolls
(`fleetgate operator add NAME --totp`) in its own process and the gateway reads the file when a code
is checked, so enrollment needs no restart. A secret is never logged, audited or printed, except once
at enrollment as the provisioning URI (and its QR PNG) for the operator's authenticator app.

The last accepted 30-second step of each operator is persisted beside its secret, so a restart cannot
make a just-used code valid again. Which operators must give a code: those enrolled. An operator not
enrolled acts on its certificate alone, and the audit record of each sensitive action says so
(`second_factor: not_enrolled`); enrolling every operator is the deployment's step to full MFA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.admin.qr import provisioning_qr_png
from gateway.admin.totp import (
    TotpResult,
    TotpVerifier,
    new_secret,
    provisioning_uri,
    secret_from_base32,
    secret_to_base32,
)
from gateway.policy.second_factor import SecondFactorPolicy

TOTP_DIR = "totp"
HEADER = "X-Fleetgate-TOTP"


def _dir(root: Path) -> Path:
    path = root / TOTP_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Enrollment:
    uri: str  # otpauth://totp/... : shown once
    qr_png: Path  # the same URI as a QR code, 0600 beside the operator's files


def enroll(root: Path, operator_id: str, issuer: str, qr_dir: Path) -> Enrollment:
    """A fresh secret for the operator (replacing any earlier one); the URI and QR for its app."""
    secret = new_secret()
    directory = _dir(root)
    _write_private(directory / f"{operator_id}.secret", secret_to_base32(secret) + "\n")
    (directory / f"{operator_id}.step").unlink(missing_ok=True)
    uri = provisioning_uri(secret, operator_id, issuer)
    qr = qr_dir / f"{operator_id}.totp.png"
    fd = os.open(qr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(provisioning_qr_png(uri))
    return Enrollment(uri, qr)


class TotpStore:
    """The gateway's view of the enrolled secrets, and its verifier (replay, lockout) over them."""

    def __init__(self, root: Path, policy: SecondFactorPolicy) -> None:
        self._root = root
        self.policy = policy
        self.verifier = TotpVerifier.for_policy(policy, self.secret_for)
        self._restored: set[str] = set()

    def reload(self, policy: SecondFactorPolicy) -> None:
        if policy != self.policy:
            state = {op: self.verifier.used_step(op) for op in self._restored}
            self.policy, self.verifier = policy, TotpVerifier.for_policy(policy, self.secret_for)
            for op, step in state.items():
                if step is not None:
                    self.verifier.restore_used_step(op, step)

    def secret_for(self, operator_id: str) -> bytes | None:
        try:
            text = (self._root / TOTP_DIR / f"{operator_id}.secret").read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return secret_from_base32(text)

    def enrolled(self, operator_id: str) -> bool:
        return (self._root / TOTP_DIR / f"{operator_id}.secret").exists()

    def verify(self, operator_id: str, code: str, now: float) -> TotpResult:
        if operator_id not in self._restored:
            self._restored.add(operator_id)
            try:
                step = int((self._root / TOTP_DIR / f"{operator_id}.step").read_text())
                self.verifier.restore_used_step(operator_id, step)
            except (FileNotFoundError, ValueError):
                pass
        result = self.verifier.verify(operator_id, code, now)
        used = self.verifier.used_step(operator_id)
        if result.ok and used is not None:
            _write_private(_dir(self._root) / f"{operator_id}.step", f"{used}\n")
        return result
