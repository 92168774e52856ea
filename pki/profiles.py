"""Certificate profiles: which extensions each kind of certificate carries, every one spelled out.

Nothing a requester asks for reaches a certificate: the caller hands us a public key and an identity,
and the profile for ``identity.kind`` decides subject, SAN, key usage, EKU and lifetime.

Name constraints on the issuing CA: the product brief asks for them "where the library allows".
A URI permitted subtree (RFC 5280 4.2.1.10, host ``<trust-domain>``) is what would bind our spiffe
SANs, and OpenSSL enforces it, but cryptography's verifier (the one the gateway uses) rejects every
chain that contains a URI name constraint ("unsupported name constraint", checked by
tests/pki/test_profiles.py so we notice when that changes). A DNS-only constraint would not bind the
spiffe URIs at all and would break gateway certificates for ``localhost``/IP literals. So the issuing
CA carries no name constraints; identity_from_certificate enforces the trust domain instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.errors import CAError, PkiError
from pki.keys import PrivateKey, PublicKey
from pki.names import CLIENT_KINDS, Identity

# Trucks wake up with clocks minutes off; a certificate valid "from now" would be refused by them.
CLOCK_SKEW = timedelta(minutes=5)
ROOT_LIFETIME = timedelta(days=3652)
ISSUING_LIFETIME = timedelta(days=1095)
ORGANIZATION = "fleetgate"

Extension = tuple[x509.ExtensionType, bool]  # (value, critical)


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    # Match the hash to the key's strength (RFC 5480 2.1.1 guidance for P-384).
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, digital_signature: bool, key_encipherment: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def ca_extensions(public_key: PublicKey, issuer_key: PublicKey | None, path_length: int) -> list[Extension]:
    """Root (issuer_key None: self-signed, no AKI) or issuing CA."""
    extensions: list[Extension] = [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_key_usage(digital_signature=False, key_encipherment=False, ca=True), True),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
    ]
    if issuer_key is not None:
        extensions.append((x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), False))
    return extensions


def _leaf_common(
    public_key: PublicKey, issuer: x509.Certificate, eku: x509.ObjectIdentifier
) -> list[Extension]:
    # keyEncipherment only makes sense for RSA (TLS 1.2 RSA key transport); EC keys sign only.
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(digital_signature=True, key_encipherment=is_rsa, ca=False), True),
        (x509.ExtendedKeyUsage([eku]), False),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False),
    ]


def _crl_distribution_point(crl_url: str) -> Extension:
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None, crl_issuer=None
    )
    return (x509.CRLDistributionPoints([point]), False)


def client_extensions(
    identity: Identity, public_key: PublicKey, issuer: x509.Certificate, crl_url: str | None
) -> list[Extension]:
    """unit, operator, service and partner certificates: clientAuth, SAN = exactly the spiffe URI."""
    if identity.kind not in CLIENT_KINDS:
        raise PkiError(
            "wrong_profile", f"{identity.kind} is not a client kind; use the gateway server profile"
        )
    extensions = _leaf_common(public_key, issuer, ExtendedKeyUsageOID.CLIENT_AUTH)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_uri)])
    extensions.append((san, False))
    if crl_url:
        extensions.append(_crl_distribution_point(crl_url))
    return extensions


def parse_hostname(hostname: str) -> x509.GeneralName:
    """An IP literal becomes an IPAddress SAN, anything else a DNSName (ASCII/A-label only)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    if not hostname or not hostname.isascii() or any(c.isspace() or c in "/:@" for c in hostname):
        raise PkiError(
            "invalid_hostname", f"{hostname!r} is neither a DNS name nor an IP address; use e.g. localhost"
        )
    return x509.DNSName(hostname.lower().rstrip("."))


def server_extensions(
    identity: Identity,
    hostnames: Sequence[str],
    public_key: PublicKey,
    issuer: x509.Certificate,
    crl_url: str | None,
) -> list[Extension]:
    """The gateway's TLS server certificate: serverAuth, DNS/IP SANs plus its spiffe URI."""
    if not hostnames:
        raise PkiError(
            "no_hostnames", "a server certificate needs at least one hostname; pass e.g. localhost"
        )
    names = [parse_hostname(h) for h in hostnames]
    names.append(x509.UniformResourceIdentifier(identity.spiffe_uri))
    extensions = _leaf_common(public_key, issuer, ExtendedKeyUsageOID.SERVER_AUTH)
    extensions.append((x509.SubjectAlternativeName(names), False))
    if crl_url:
        extensions.append(_crl_distribution_point(crl_url))
    return extensions


def validity(
    now: datetime, lifetime: timedelta, issuer: x509.Certificate | None
) -> tuple[datetime, datetime]:
    """(not_before, not_after): backdated for clock skew, clamped inside the issuer's own validity."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if lifetime <= timedelta(0):
        raise PkiError("invalid_lifetime", f"certificate lifetime {lifetime} must be positive")
    not_before, not_after = now - CLOCK_SKEW, now + lifetime
    if issuer is not None:
        not_before = max(not_before, issuer.not_valid_before_utc)
        not_after = min(not_after, issuer.not_valid_after_utc)
        if not_after <= now:
            raise CAError(
                "ca_expired",
                f"the issuing CA expired on {issuer.not_valid_after_utc:%Y-%m-%d}; create a new CA",
            )
    return not_before, not_after


def build_certificate(
    subject: x509.Name,
    public_key: PublicKey,
    issuer_name: x509.Name,
    signing_key: PrivateKey,
    window: tuple[datetime, datetime],
    extensions: Sequence[Extension],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(signing_key, signature_hash(signing_key))


def leaf_subject(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
