"""Bulk enrollment: many units, each making its own key and enrolling over EST, in parallel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki.est_client import EstServer, bootstrap, cacerts, simpleenroll
from pki.keys import PrivateKey, generate_private_key, write_private_key, write_public_file


@dataclass(frozen=True)
class UnitFiles:
    cert: Path  # leaf + issuing chain
    key: Path
    ca: Path  # fleet root


def unit_csr(key: PrivateKey, unit_id: str) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def enroll_one(server: EstServer, issuing_pem: bytes, unit_id: str, token: str, out: Path) -> UnitFiles:
    key = generate_private_key()
    cert = simpleenroll(server, unit_id, token, unit_csr(key, unit_id))
    key_path, cert_path, ca_path = out / f"{unit_id}.key", out / f"{unit_id}.crt", out / "ca.crt"
    if key_path.exists():
        key_path.unlink()
    write_private_key(key_path, key)
    write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM) + issuing_pem)
    return UnitFiles(cert_path, key_path, ca_path)


def enroll_fleet(
    url: str, root: Path, tokens: dict[str, str], out: Path, workers: int = 16
) -> dict[str, UnitFiles]:
    """Enroll every unit in `tokens` (unit id → one-time token); returns their files."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = bootstrap(url, ca_file=root)
    write_public_file(out / "ca.crt", server.ca_pem)
    issuing = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in cacerts(server) if c.issuer != c.subject
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            unit: pool.submit(enroll_one, server, issuing, unit, token, out) for unit, token in tokens.items()
        }
        return {unit: future.result() for unit, future in futures.items()}
