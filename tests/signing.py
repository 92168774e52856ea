"""A signing key and its certificate for tests that sign or verify mode commands without a gateway.

Self-signed: what these tests check is the signature against the certificate a unit holds, not the
chain (the unit's TLS handshake verified that against the fleet root before it kept the certificate).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pki.keys import generate_private_key
from pki.signed_json import JsonSigner


def make_signer(name: str = "gateway", algorithm: str = "p256") -> JsonSigner:
    key = generate_private_key(algorithm)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return JsonSigner(key, cert)
