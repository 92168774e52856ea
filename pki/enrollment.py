"""Enrollment decisions: one-time tokens and the checks a CSR must pass before we sign it.

Pure: the caller looks up the token record and the unit's state, we decide. A decision is either
None (go ahead) or a Refusal whose reason has a stable code, an HTTP status and a message that tells
the device owner what to do. The order of checks matters: token problems are reported before CSR
problems, so a stranger probing with garbage CSRs learns nothing about units (they hear
"unknown token" first), while a legitimate unit with a bad CSR hears exactly what is wrong with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki.authority import csr_public_key
from pki.errors import CSRError, WeakKeyError
from pki.names import Identity, IdentityError, make_identity


def new_token() -> str:
    """A one-time enrollment token: 256 random bits, URL-safe so it fits in HTTP Basic and shells."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256-bit random values, so a fast unsalted hash is enough: there is nothing to
    # brute-force, and a stolen database must not hand out usable tokens.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_hash: str
    unit_id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    kind: str = "unit"


class RefusalReason(Enum):
    """Why an enrollment was refused. The value is the stable code."""

    UNKNOWN_TOKEN = "unknown_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_USED = "token_used"
    TOKEN_UNIT_MISMATCH = "token_unit_mismatch"
    UNKNOWN_UNIT = "unknown_unit"
    UNIT_REVOKED = "unit_revoked"
    CSR_IDENTITY_MISMATCH = "csr_identity_mismatch"
    BAD_CSR_SIGNATURE = "bad_csr_signature"
    WEAK_KEY = "weak_key"
    MALFORMED_CSR = "malformed_csr"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_EXPIRED = "certificate_expired"
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    IDENTITY_MISMATCH = "identity_mismatch"
    SELF_RENEWAL_REFUSED = "self_renewal_refused"

    @property
    def code(self) -> str:
        return self.value

    @property
    def http_status(self) -> int:
        return _DETAILS[self][0]

    @property
    def message(self) -> str:
        return _DETAILS[self][1]


# 401: the credential (token) is not good; 403: the caller holds a real credential but it does
# not allow this (another unit's token, a revoked unit, someone else's name in the CSR);
# 400: the request itself (the CSR) is unacceptable.
_DETAILS: dict[RefusalReason, tuple[int, str]] = {
    RefusalReason.UNKNOWN_TOKEN: (
        401,
        "the enrollment token is not known; ask fleet operations for a new one",
    ),
    RefusalReason.TOKEN_EXPIRED: (
        401,
        "the enrollment token has expired; ask fleet operations for a new one",
    ),
    RefusalReason.TOKEN_USED: (
        401,
        "the enrollment token was already used; ask fleet operations for a new one",
    ),
    RefusalReason.TOKEN_UNIT_MISMATCH: (
        403,
        "the enrollment token belongs to another unit; enroll with the unit id it was issued for",
    ),
    RefusalReason.UNKNOWN_UNIT: (
        403,
        "the unit is not registered; register it with `fleetgate unit add` first",
    ),
    RefusalReason.UNIT_REVOKED: (
        403,
        "the unit has been revoked; it must be registered again by fleet operations",
    ),
    RefusalReason.CSR_IDENTITY_MISMATCH: (
        403,
        "the CSR names a different identity; leave the subject empty or use this unit's id",
    ),
    RefusalReason.BAD_CSR_SIGNATURE: (
        400,
        "the CSR's signature does not verify; sign it with the key it carries",
    ),
    RefusalReason.WEAK_KEY: (400, "the CSR's key is too weak; use ECDSA P-256 or RSA of 2048 bits or more"),
    RefusalReason.MALFORMED_CSR: (400, "the CSR cannot be parsed; send one base64 DER PKCS#10 request"),
    RefusalReason.CERTIFICATE_REVOKED: (
        403,
        "the current certificate has been revoked; it cannot be renewed, ask fleet operations",
    ),
    RefusalReason.CERTIFICATE_EXPIRED: (
        403,
        "the current certificate has expired; enroll again with a new token",
    ),
    RefusalReason.UNKNOWN_CERTIFICATE: (
        403,
        "the current certificate was not issued by this CA; enroll with a token instead",
    ),
    RefusalReason.IDENTITY_MISMATCH: (
        403,
        "a certificate can only be renewed for its own identity; leave the CSR subject empty or use your id",
    ),
    RefusalReason.SELF_RENEWAL_REFUSED: (
        403,
        "this certificate is not renewed over EST; ask fleet operations to issue you a new one",
    ),
}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str = ""


def _check_token(unit_id: str, token: str, record: TokenRecord | None) -> Refusal | None:
    # compare_digest: the caller found the record by hash, but a timing-safe comparison here means
    # a future lookup-by-prefix or cache can never turn into a token oracle.
    if record is None or not hmac.compare_digest(record.token_hash, hash_token(token)):
        return Refusal(RefusalReason.UNKNOWN_TOKEN)
    if record.kind != "unit" or not hmac.compare_digest(record.unit_id.encode(), unit_id.encode()):
        return Refusal(RefusalReason.TOKEN_UNIT_MISMATCH, f"token is not for unit {unit_id}")
    return None


def _check_state(unit_state: str | None) -> Refusal | None:
    if unit_state is None:
        return Refusal(RefusalReason.UNKNOWN_UNIT)
    if unit_state == "revoked":
        return Refusal(RefusalReason.UNIT_REVOKED)
    return None


def _check_token_time(record: TokenRecord, now: datetime) -> Refusal | None:
    if now >= record.expires_at:
        return Refusal(RefusalReason.TOKEN_EXPIRED, f"expired at {record.expires_at:%Y-%m-%d %H:%M} UTC")
    if record.used_at is not None:
        return Refusal(RefusalReason.TOKEN_USED, f"used at {record.used_at:%Y-%m-%d %H:%M} UTC")
    return None


def check_csr(
    csr: x509.CertificateSigningRequest, identity: Identity, mismatch: RefusalReason
) -> Refusal | None:
    """Proof of possession, key strength, then: whatever the CSR names must be ``identity``."""
    try:
        csr_public_key(csr)
    except CSRError as exc:
        if exc.reason == "bad_csr_signature":
            return Refusal(RefusalReason.BAD_CSR_SIGNATURE)
        return Refusal(RefusalReason.WEAK_KEY, exc.message)
    except WeakKeyError as exc:
        return Refusal(RefusalReason.WEAK_KEY, exc.message)
    try:
        names = csr_names(csr)
    except ValueError as exc:
        return Refusal(RefusalReason.MALFORMED_CSR, str(exc))
    foreign = sorted(name for name in names if name not in _own_names(identity))
    if foreign:
        return Refusal(mismatch, f"CSR names {', '.join(foreign)}; expected {identity.spiffe_uri}")
    return None


def csr_names(csr: x509.CertificateSigningRequest) -> set[str]:
    """Every CN, URI SAN and DNS SAN the CSR carries (ValueError if they cannot be parsed)."""
    try:
        names = {str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
        sans = [ext.value for ext in csr.extensions if isinstance(ext.value, x509.SubjectAlternativeName)]
    except Exception as exc:  # lazily parsed fields of a hostile CSR fail in assorted ways
        raise ValueError(f"unparseable CSR subject or extensions: {exc}") from None
    for san in sans:
        names.update(san.get_values_for_type(x509.UniformResourceIdentifier))
        names.update(san.get_values_for_type(x509.DNSName))
    return names


def _own_names(identity: Identity) -> set[str]:
    return {identity.id, identity.spiffe_uri}


def check_enrollment(
    unit_id: str,
    token: str,
    record: TokenRecord | None,
    unit_state: str | None,
    csr: x509.CertificateSigningRequest,
    trust_domain: str,
    now: datetime,
) -> Refusal | None:
    """None if ``unit_id`` may enroll ``csr`` with ``token``; the first refusal otherwise."""
    refusal = _check_token(unit_id, token, record) or _check_state(unit_state)
    if refusal is None and record is not None:
        refusal = _check_token_time(record, now)
    if refusal is not None:
        return refusal
    try:
        identity = make_identity("unit", unit_id, trust_domain)
    except IdentityError as exc:
        return Refusal(RefusalReason.UNKNOWN_UNIT, exc.reason)
    return check_csr(csr, identity, RefusalReason.CSR_IDENTITY_MISMATCH)


def check_reenrollment(
    current: Identity,
    current_cert_revoked: bool,
    unit_state: str | None,
    csr: x509.CertificateSigningRequest,
    trust_domain: str,
    now: datetime,
    *,
    not_after: datetime | None = None,
) -> Refusal | None:
    """None if the holder of a certificate for ``current`` may renew it with ``csr``.

    Revoked certificates and revoked identities are refused; a quarantined unit may renew (its
    quarantine is a registry state and survives renewal). ``not_after``, if given, is the current
    certificate's expiry: an expired certificate cannot renew itself.
    """
    if current_cert_revoked:
        return Refusal(RefusalReason.CERTIFICATE_REVOKED)
    if not_after is not None and now > not_after:
        return Refusal(RefusalReason.CERTIFICATE_EXPIRED, f"expired at {not_after:%Y-%m-%d %H:%M} UTC")
    if current.trust_domain != trust_domain:
        return Refusal(RefusalReason.IDENTITY_MISMATCH, f"{current.spiffe_uri} is not in {trust_domain}")
    refusal = _check_state(unit_state)
    if refusal is not None:
        return Refusal(refusal.reason, str(current))
    return check_csr(csr, current, RefusalReason.IDENTITY_MISMATCH)
