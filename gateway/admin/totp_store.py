"""Operator TOTP secrets on disk, the verifier's state beside them, and who is enrolled.

Secrets live in DATA/totp/ (directory 0700, one file per operator, 0600, base32): the CLI enrolls
(`fleetgate operator totp NAME`, or `operator add NAME --totp`) in its own process and the gateway
reads the file when a code is checked, so enrollment needs no restart. A secret is never logged,
audited or printed, except once at enrollment as the provisioning URI (and its QR PNG) for the
operator's authenticator app: a QR code drawn by segno, written as a PNG (0600) and, for an operator
enrolling over SSH, as text a terminal shows (Unicode half blocks).

Enrollment is recorded twice, on purpose: the secret file, and `totp: enrolled` in the operator's
registry metadata. The registry is what says an operator *has* a second factor, so a secret file that
went missing (a partial restore, a permission problem) is an error the admin API refuses and logs,
never a silent fall back to certificate-only. A secret file without the registry mark (enrolled before
the mark existed) counts as enrolled too: either sign means the code is asked for.

After every attempt, the verifier's state for that operator (last used 30-second step, recent failures,
lockout) is written beside the secret (`NAME.state`, 0600, JSON), so neither a restart nor a policy
reload re-opens a used code or lifts a lockout. A state or secret that cannot be read or written is an
error (TotpStoreError): the admin API answers 503 and the operator is not let through.
"""

from __future__ import annotations

import binascii
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import segno

from gateway.admin.totp import (
    OperatorState,
    TotpResult,
    TotpVerifier,
    new_secret,
    provisioning_uri,
    secret_from_base32,
    secret_to_base32,
)
from gateway.policy.second_factor import SecondFactorPolicy
from pki.store import Registry

TOTP_DIR = "totp"
HEADER = "X-Fleetgate-TOTP"
METADATA_KEY = "totp"  # registry metadata of an operator with a second factor: {"totp": "enrolled"}
ENROLLED = "enrolled"

Enrolment = Literal["enrolled", "not_enrolled", "secret_missing"]


class TotpStoreError(Exception):
    """A secret or state file that exists (or must) cannot be read or written; the message says which."""


def _dir(root: Path) -> Path:
    path = root / TOTP_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Enrollment:
    uri: str  # otpauth://totp/... : shown once
    qr_png: Path  # the same URI as a QR code, 0600 beside the operator's files
    qr_text: str  # and as lines of Unicode half blocks, for a terminal (light modules drawn, as
    # terminals draw light text on a dark background)


def provisioning_qr(uri: str) -> segno.QRCode:
    """The URI as a QR code at error correction level M (15 % of it may be unreadable), which an
    authenticator app reads off a screen or a photo of one; segno picks the smallest version."""
    return segno.make(uri, error="m", micro=False)


def enroll(root: Path, operator_id: str, issuer: str, qr_dir: Path) -> Enrollment:
    """A fresh secret for the operator (replacing any earlier one); the URI and QR for its app.

    The caller records the enrollment in the registry (`mark_enrolled`) once this returned."""
    secret = new_secret()
    directory = _dir(root)
    _write_private(directory / f"{operator_id}.secret", secret_to_base32(secret) + "\n")
    for stale in (f"{operator_id}.step", f"{operator_id}.state"):  # a new secret starts clean
        (directory / stale).unlink(missing_ok=True)
    uri = provisioning_uri(secret, operator_id, issuer)
    code = provisioning_qr(uri)
    png = qr_dir / f"{operator_id}.totp.png"
    fd = os.open(png, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        code.save(out, kind="png", scale=6, border=4)
    text = io.StringIO()
    code.terminal(out=text, compact=True)
    return Enrollment(uri, png, text.getvalue())


def mark_enrolled(registry: Registry, operator_id: str, now: datetime) -> dict[str, str]:
    """Record in the registry that the operator has a second factor; returns its new metadata."""
    record = registry.get_identity("operator", operator_id)
    if record is None:
        raise TotpStoreError(
            f"there is no operator {operator_id}; add it first with `fleetgate operator add`"
        )
    metadata = {**record.metadata, METADATA_KEY: ENROLLED}
    registry.update_metadata("operator", operator_id, metadata, now)
    return metadata


class TotpStore:
    """The gateway's view of the enrolled secrets, and its verifier (replay, lockout) over them."""

    def __init__(self, root: Path, policy: SecondFactorPolicy) -> None:
        self._root = root
        self.policy = policy
        self.verifier = TotpVerifier.for_policy(policy, self.secret_for)
        self._loaded: set[str] = set()  # operators whose saved state the verifier has taken up

    def reload(self, policy: SecondFactorPolicy) -> None:
        if policy != self.policy:
            # Every attempt's state is on disk: the new verifier takes it up again, lockouts included.
            self.policy, self.verifier = policy, TotpVerifier.for_policy(policy, self.secret_for)
            self._loaded.clear()

    def _secret_path(self, operator_id: str) -> Path:
        return self._root / TOTP_DIR / f"{operator_id}.secret"

    def secret_for(self, operator_id: str) -> bytes | None:
        path = self._secret_path(operator_id)
        try:
            text = path.read_text().strip()
            return secret_from_base32(text)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError, binascii.Error, ValueError) as exc:
            raise TotpStoreError(f"the TOTP secret {path} cannot be read ({exc})") from None

    def enrolment(self, operator_id: str, marked: bool) -> Enrolment:
        """`marked`: the registry says the operator is enrolled (metadata totp: enrolled)."""
        if self._secret_path(operator_id).exists():
            return "enrolled"
        return "secret_missing" if marked else "not_enrolled"

    def verify(self, operator_id: str, code: str, now: float) -> TotpResult:
        if operator_id not in self._loaded:
            saved = self._load(operator_id)
            if saved is not None:
                self.verifier.restore(operator_id, saved)
            self._loaded.add(operator_id)
        result = self.verifier.verify(operator_id, code, now)
        self._save(operator_id)
        return result

    def _load(self, operator_id: str) -> OperatorState | None:
        directory = self._root / TOTP_DIR
        path = directory / f"{operator_id}.state"
        try:
            data = json.loads(path.read_text())
            return OperatorState(
                None if data["last_step"] is None else int(data["last_step"]),
                tuple(float(t) for t in data["failures"]),
                None if data["locked_until"] is None else float(data["locked_until"]),
            )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TotpStoreError(
                f"the TOTP state {path} cannot be read ({exc}); delete it to start the operator afresh"
            ) from None
        try:  # written by earlier versions: the last used step alone
            return OperatorState(int((directory / f"{operator_id}.step").read_text()), (), None)
        except (FileNotFoundError, ValueError):
            return None

    def _save(self, operator_id: str) -> None:
        state = self.verifier.state_of(operator_id)
        text = json.dumps(
            {
                "last_step": state.last_step,
                "failures": list(state.failures),
                "locked_until": state.locked_until,
            }
        )
        try:
            _write_private(_dir(self._root) / f"{operator_id}.state", text + "\n")
        except OSError as exc:
            raise TotpStoreError(f"the TOTP state of {operator_id} cannot be saved ({exc})") from None
