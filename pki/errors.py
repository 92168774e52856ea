"""The exceptions pki raises.

Every error carries a stable ``reason`` code (snake_case, used in audit records, metrics and API
answers) and a one-sentence human message that says what to do. Callers convert them at one boundary
(CLI exit message, HTTP status); nothing inside pki formats them for a particular surface.
"""

from __future__ import annotations


class PkiError(Exception):
    """Base of every error pki raises on purpose."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class WeakKeyError(PkiError):
    """A public key we will not certify (too small, or an algorithm we do not accept)."""


class KeyFileError(PkiError):
    """A private key file that is missing, unreadable, too permissive, or cannot be decrypted."""


class CAError(PkiError):
    """The certificate authority on disk is missing, incomplete, corrupt or cannot be unlocked."""


class CAExistsError(CAError):
    """Refusal to create a CA over an existing one."""


class CSRError(PkiError):
    """A certificate signing request we will not sign (bad proof of possession, wrong subject...)."""


class VerificationError(PkiError):
    """A certificate or CRL that does not verify at the given time."""


class EstBodyError(PkiError):
    """An EST request or response body that cannot be decoded."""


class StoreError(PkiError):
    """The registry database cannot be opened, migrated or written."""


class AlreadyExistsError(StoreError):
    """A record that would duplicate an existing one."""


class NotFoundError(StoreError):
    """A record the caller named that does not exist."""
