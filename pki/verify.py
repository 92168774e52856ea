"""Chain and revocation checks at a given time, with cryptography's own verifier.

The verifier reports failures as English text. We turn that into stable reason codes so the gateway
can audit and count them. Validity windows are checked first, by us, because "expired" and "not yet
valid" are the failures users meet most and deserve a precise reason and date.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from pki.errors import VerificationError
from pki.profiles import parse_hostname

# Substrings of cryptography's verifier messages, most specific first, and what each means for us.
_LIBRARY_REASONS: tuple[tuple[str, str, str], ...] = (
    (
        "unsupported name constraint",
        "unsupported_name_constraint",
        "the chain uses an unsupported constraint",
    ),
    ("name constraint", "name_constraint_violation", "the certificate names something its CA may not"),
    ("EKU", "wrong_purpose", "the certificate is not meant for this use (extended key usage)"),
    ("cA must not be asserted", "not_end_entity", "a CA certificate was presented as a client certificate"),
    ("key is too weak", "weak_key", "the certificate's key is too weak"),
    ("Forbidden public key algorithm", "weak_key", "the certificate's key type is not accepted"),
    (
        "Forbidden signature algorithm",
        "weak_signature",
        "the certificate's signature algorithm is not accepted",
    ),
    ("signature does not match", "untrusted", "the certificate was not issued by this fleet's CA"),
    ("candidates exhausted", "untrusted", "the certificate does not chain to this fleet's root CA"),
)


def _library_error(exc: Exception, leaf: x509.Certificate) -> VerificationError:
    text = str(exc)
    reason, meaning = next(
        ((reason, meaning) for needle, reason, meaning in _LIBRARY_REASONS if needle in text),
        ("untrusted", "the certificate chain does not verify"),
    )
    return VerificationError(
        reason, f"{meaning} ({_describe(leaf)}: {text}); present a certificate from this CA"
    )


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string() or 'no subject'}, serial {cert.serial_number:x}"


def check_validity(
    cert: x509.Certificate, now: datetime, what: str = "certificate", tolerance: timedelta = timedelta(0)
) -> None:
    """Raise VerificationError(expired | not_yet_valid) unless ``now`` is inside the validity window,
    widened by ``tolerance`` on both sides (clock skew between the gateway and whoever issued)."""
    if now + tolerance < cert.not_valid_before_utc:
        raise VerificationError(
            "not_yet_valid",
            f"the {what} ({_describe(cert)}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC; check the device's clock",
        )
    if now - tolerance > cert.not_valid_after_utc:
        raise VerificationError(
            "expired",
            f"the {what} ({_describe(cert)}) expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "renew it or enroll again",
        )


def _check_windows(
    leaf: x509.Certificate, root: x509.Certificate, intermediates: Sequence[x509.Certificate], now: datetime
) -> None:
    check_validity(leaf, now)
    for cert in intermediates:
        check_validity(cert, now, "issuing CA certificate")
    check_validity(root, now, "root CA certificate")


def verify_client_certificate(
    leaf: x509.Certificate,
    authority_root: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """A clientAuth leaf that chains to ``authority_root`` at ``now``, or VerificationError."""
    _check_windows(leaf, authority_root, intermediates, now)
    verifier = verification.PolicyBuilder().store(verification.Store([authority_root])).time(now)
    try:
        verifier.build_client_verifier().verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise _library_error(exc, leaf) from None


def verify_server_certificate(
    leaf: x509.Certificate,
    authority_root: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    hostname: str,
    now: datetime,
) -> None:
    """A serverAuth leaf for ``hostname`` (DNS name or IP literal), for our own clients."""
    _check_windows(leaf, authority_root, intermediates, now)
    subject = parse_hostname(hostname)
    assert isinstance(subject, x509.DNSName | x509.IPAddress)
    builder = verification.PolicyBuilder().store(verification.Store([authority_root])).time(now)
    try:
        builder.build_server_verifier(subject).verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise _library_error(exc, leaf) from None


def is_revoked(serial: int, crl: x509.CertificateRevocationList) -> bool:
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def verify_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: datetime) -> None:
    """A CRL signed by ``issuer`` that is current at ``now``, or VerificationError."""
    key = issuer.public_key()
    signed = isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) and crl.is_signature_valid(key)
    if crl.issuer != issuer.subject or not signed:
        raise VerificationError(
            "crl_bad_signature", "the CRL was not signed by this issuing CA; fetch it again"
        )
    if now < crl.last_update_utc:
        raise VerificationError(
            "crl_not_yet_valid", "the CRL was issued in the future; check this host's clock"
        )
    next_update = crl.next_update_utc
    if next_update is not None and now > next_update:
        raise VerificationError(
            "crl_stale",
            f"the CRL expired at {next_update:%Y-%m-%d %H:%M} UTC; fetch a fresh one from the gateway",
        )
