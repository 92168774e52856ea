"""Registry records and how they are written to and read from SQLite rows.

Timestamps are ISO-8601 UTC text with a fixed width (microseconds, ``+00:00``), so text order is
time order. Serial numbers are 40-digit lower-case hex: RFC 5280 allows 20 octets and our random
serials use 159 bits, while SQLite integers stop at 8 bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from pki.enrollment import TokenRecord

IDENTITY_STATES = ("registered", "enrolled", "quarantined", "revoked")
CERTIFICATE_STATUSES = ("valid", "revoked")


def to_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else from_text(text)


def serial_text(serial: int) -> str:
    return format(serial, "040x")


@dataclass(frozen=True)
class IdentityRecord:
    kind: str
    id: str
    state: str
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CertificateRecord:
    serial: int
    kind: str
    id: str
    not_before: datetime
    not_after: datetime
    status: str
    fingerprint: str
    pem: str
    revoked_at: datetime | None
    revocation_reason: x509.ReasonFlags | None
    renewed_from: int | None = None  # the serial whose holder renewed into this one (EST re-enrollment)
    issuing_ca: int = 1  # the generation of the issuing CA that signed it (pki/authority.py)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem.encode())

    def is_active(self, now: datetime) -> bool:
        return self.status == "valid" and self.not_before <= now <= self.not_after


def identity_from_row(row: tuple[Any, ...]) -> IdentityRecord:
    kind, ident, state, metadata, created, updated = row
    return IdentityRecord(kind, ident, state, json.loads(metadata), from_text(created), from_text(updated))


def token_from_row(row: tuple[Any, ...]) -> TokenRecord:
    token_hash, kind, unit_id, created, expires, used = row
    return TokenRecord(
        token_hash, unit_id, from_text(created), from_text(expires), _optional_time(used), kind
    )


def certificate_from_row(row: tuple[Any, ...]) -> CertificateRecord:
    serial, kind, ident, not_before, not_after, status, fingerprint, pem, revoked_at, reason, parent, ca = row
    return CertificateRecord(
        int(serial, 16),
        kind,
        ident,
        from_text(not_before),
        from_text(not_after),
        status,
        fingerprint,
        pem,
        _optional_time(revoked_at),
        None if reason is None else x509.ReasonFlags(reason),
        None if parent is None else int(parent, 16),
        int(ca),
    )


IDENTITY_COLUMNS = "kind, id, state, metadata, created_at, updated_at"
TOKEN_COLUMNS = "token_hash, kind, unit_id, created_at, expires_at, used_at"
CERT_COLUMNS = (
    "serial, kind, id, not_before, not_after, status, fingerprint, pem, revoked_at, revocation_reason, "
    "renewed_from, issuing_ca"
)
