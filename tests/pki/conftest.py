"""Fixtures for pki tests: a CA, a registry and a FleetCA at a fixed time, and small CSR helpers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pki.authority import CertificateAuthority
from pki.keys import PrivateKey, generate_private_key
from pki.service import FleetCA
from pki.store import Registry, open_database

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TD = "fleet.local"
CRL_URL = "http://gateway.fleet.local:8443/crl"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", TD, NOW, crl_url=CRL_URL)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    conn = open_database(tmp_path / "db" / "fleetgate.db")
    yield Registry(conn)
    conn.close()


@pytest.fixture
def fleet(ca: CertificateAuthority, registry: Registry, tmp_path: Path) -> FleetCA:
    return FleetCA(ca, registry, tmp_path / "crl")


@pytest.fixture(scope="session")
def key() -> PrivateKey:
    """One P-256 device key shared by tests that do not care whose key it is."""
    return generate_private_key("p256")


def make_csr(
    key: PrivateKey,
    common_name: str | None = None,
    sans: Sequence[x509.GeneralName] = (),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateSigningRequest:
    attributes = [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(key, hashes.SHA256())


def with_broken_signature(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    """The same CSR with one bit of its signature flipped (the DER still parses)."""
    der = bytearray(csr.public_bytes(Encoding.DER))
    signature = csr.signature
    at = bytes(der).rindex(signature) + len(signature) // 2
    der[at] ^= 0x01
    return x509.load_der_x509_csr(bytes(der))


def write_pem(path: Path, *items: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(b"".join(item.public_bytes(Encoding.PEM) for item in items))
    return path


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
