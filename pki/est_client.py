"""A device-side EST client (RFC 7030 subset), standard library only.

Trust bootstrap: the device either has the fleet's root certificate (`ca_file`) or only its SHA-256
fingerprint (`ca_sha256`, printed by `fleetgate unit add`). With a fingerprint, the client fetches
/cacerts once without verification, accepts the bundle only if its root matches the fingerprint,
and from then on talks TLS verified against that root: the manual-verification bootstrap of
RFC 7030 §4.1.1, reduced to one comparison.
"""

from __future__ import annotations

import base64
import hmac
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from pki.est import decode_certs_only

TIMEOUT = 30.0


class EstClientError(RuntimeError):
    """The server refused or could not be reached; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class EstServer:
    url: str  # https://host:8443
    ca_pem: bytes  # the fleet root, verified

    def context(self, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        context.check_hostname = True
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        return context


def bootstrap(url: str, *, ca_file: Path | None = None, ca_sha256: str | None = None) -> EstServer:
    url = url.rstrip("/")
    if ca_file is not None:
        return EstServer(url, ca_file.read_bytes())
    if not ca_sha256:
        raise EstClientError(
            "pass the fleet root certificate (--ca) or its SHA-256 fingerprint (--ca-sha256)"
        )
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    certs = decode_certs_only(_request(f"{url}/.well-known/est/cacerts", unverified))
    expected = ca_sha256.replace(":", "").lower()
    for cert in certs:
        if cert.issuer == cert.subject and hmac.compare_digest(
            cert.fingerprint(hashes.SHA256()).hex(), expected
        ):
            return EstServer(url, cert.public_bytes(serialization.Encoding.PEM))
    raise EstClientError(f"{url} did not present a root CA with SHA-256 {ca_sha256}; check the fingerprint")


def cacerts(server: EstServer) -> list[x509.Certificate]:
    return decode_certs_only(_request(f"{server.url}/.well-known/est/cacerts", server.context()))


def issuer_of(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    """The CA among `candidates` (a /cacerts answer) that signed `cert`.

    While the gateway rotates its issuing CA, /cacerts lists the old and the new one; a device
    presents only the one that issued its certificate.
    """
    for candidate in candidates:
        if candidate.subject != cert.issuer or candidate.subject == candidate.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    return None


def simpleenroll(
    server: EstServer, unit_id: str, token: str, csr: x509.CertificateSigningRequest
) -> x509.Certificate:
    basic = base64.b64encode(f"{unit_id}:{token}".encode()).decode()
    body = _csr_body(csr)
    certs = decode_certs_only(
        _request(
            f"{server.url}/.well-known/est/simpleenroll",
            server.context(),
            body,
            {"Authorization": f"Basic {basic}", "Content-Type": "application/pkcs10"},
        )
    )
    return certs[0]


def simplereenroll(
    server: EstServer, cert_file: Path, key_file: Path, csr: x509.CertificateSigningRequest
) -> x509.Certificate:
    certs = decode_certs_only(
        _request(
            f"{server.url}/.well-known/est/simplereenroll",
            server.context(cert_file, key_file),
            _csr_body(csr),
            {"Content-Type": "application/pkcs10"},
        )
    )
    return certs[0]


def _csr_body(csr: x509.CertificateSigningRequest) -> bytes:
    return base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))


def _request(
    url: str, context: ssl.SSLContext, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip().splitlines()
        message = detail[0] if detail else exc.reason
        raise EstClientError(f"the server refused ({exc.code}): {message}", exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EstClientError(f"cannot reach {url}: {reason}") from None
