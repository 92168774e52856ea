"""EST (RFC 7030) message bodies: base64 PKCS#10 in, base64 PKCS#7 certs-only out.

RFC 7030 4.2.1 / 4.1.3 send both as base64 of DER (RFC 8951 confirms: base64, line breaks
allowed). For people driving EST with openssl + curl we also accept a PEM CSR, and raw DER when it
clearly is not base64. Whatever arrives, decode_csr_body either returns a CSR whose subject,
extensions and public key have all been parsed, or raises EstBodyError: a garbage body must never
surface as some other exception deep in the enrollment code.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from pki.errors import EstBodyError
from pki.keys import PrivateKey
from pki.names import Identity
from pki.profiles import leaf_subject, signature_hash

__all__ = [
    "CERTS_ONLY_CONTENT_TYPE",
    "CSR_CONTENT_TYPE",
    "EstBodyError",
    "build_csr",
    "decode_certs_only",
    "decode_csr_body",
    "encode_certs_only",
]

CERTS_ONLY_CONTENT_TYPE = "application/pkcs7-mime; smime-type=certs-only"
CSR_CONTENT_TYPE = "application/pkcs10"
MAX_CSR_BODY = 64 * 1024

_PEM_CSR_MARKERS = (b"-----BEGIN CERTIFICATE REQUEST-----", b"-----BEGIN NEW CERTIFICATE REQUEST-----")
_DER_SEQUENCE = 0x30


def _base64_decode(body: bytes) -> bytes:
    compact = b"".join(body.split())  # RFC 7030 bodies are wrapped at 64 or 76 columns, CRLF or LF
    compact += b"=" * (-len(compact) % 4)  # some clients drop the padding
    return base64.b64decode(compact, validate=True)


def _parse_der(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
        # Touch every lazily parsed part now, so later code can rely on them.
        _ = (csr.subject.rfc4514_string(), list(csr.extensions), csr.public_key())
    except Exception:  # the parser signals bad input with several exception types
        raise EstBodyError("not_a_csr", "the body is not a PKCS#10 certificate signing request") from None
    return csr


def _parse_pem(body: bytes) -> x509.CertificateSigningRequest:
    try:
        der = x509.load_pem_x509_csr(body).public_bytes(Encoding.DER)
    except Exception:
        raise EstBodyError("not_a_csr", "the PEM body is not a certificate signing request") from None
    return _parse_der(der)


def decode_csr_body(body: bytes, max_size: int = MAX_CSR_BODY) -> x509.CertificateSigningRequest:
    """The CSR in an EST simpleenroll/simplereenroll body, or EstBodyError."""
    if len(body) > max_size:
        raise EstBodyError("body_too_large", f"the body exceeds {max_size} bytes; send a single CSR")
    stripped = body.strip()
    if not stripped:
        raise EstBodyError("not_a_csr", "the body is empty; send a base64 DER PKCS#10 CSR")
    if any(stripped.startswith(marker) for marker in _PEM_CSR_MARKERS):
        return _parse_pem(stripped)
    try:
        der = _base64_decode(stripped)
    except (binascii.Error, ValueError):
        if body[0] == _DER_SEQUENCE:  # binary DER (curl --data-binary @csr.der) is not base64
            # the untouched body: strip() would eat a signature that happens to end in a space byte
            return _parse_der(body)
        raise EstBodyError("not_base64", "the body is not base64; send base64 of a DER PKCS#10 CSR") from None
    return _parse_der(der)


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """Base64 (76-column lines) of a DER PKCS#7 certs-only bundle."""
    der = pkcs7.serialize_certificates(list(certs), Encoding.DER)
    return base64.encodebytes(der)


def decode_certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates of a base64 PKCS#7 certs-only EST answer, or EstBodyError."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(_base64_decode(body.strip()))
    except Exception:
        raise EstBodyError("not_certs_only", "the answer is not a base64 PKCS#7 certs-only bundle") from None
    if not certs:
        raise EstBodyError("not_certs_only", "the PKCS#7 answer holds no certificates")
    return sorted(certs, key=_chain_rank)


def _chain_rank(cert: x509.Certificate) -> int:
    # A PKCS#7 SET OF certificates has no order (DER even sorts it), so callers could not rely on
    # "the first one is mine". We return end-entity certificates first, then CAs, roots last.
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    if not is_ca:
        return 0
    return 2 if cert.issuer == cert.subject else 1


def build_csr(key: PrivateKey, identity: Identity) -> x509.CertificateSigningRequest:
    """The CSR our own device client sends: CN = id, SAN = the spiffe URI.

    The CA checks that these name the enrolling identity but never copies them: profiles decide.
    """
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_uri)])
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(leaf_subject(identity.common_name))
        .add_extension(san, critical=False)
    )
    return builder.sign(key, signature_hash(key))
