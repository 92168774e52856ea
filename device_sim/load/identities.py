"""Bulk identities for load runs and benchmarks, issued in-process straight into a data directory.

Enrolling 10,000 units over EST costs minutes of HTTP and TLS that a benchmark does not measure. Here
each unit still gets its own key and a certificate from the fleet's CA through the same FleetCA calls
the EST handler makes (register → one-time token → CSR → enroll), so the registry ends up exactly as
after a real enrollment; only the HTTP is skipped. Rows are committed in chunks, one transaction each.

Files follow the layout `device_sim.fleet.enroll` and `fleetgate <role> add --out` write, which
`load.identities_in` reads back: DIR/<id>.crt (leaf + issuing chain), DIR/<id>.key, DIR/ca.crt.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.stores.datadir import DataDir, ca_passphrase
from pki.authority import CertificateAuthority
from pki.est import build_csr
from pki.keys import PrivateKey, generate_private_key
from pki.names import make_identity
from pki.service import FleetCA
from pki.sqlite import open_database
from pki.store import Registry

CHUNK = 250  # identities per registry transaction: few commits, yet a crash loses little
LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class IssuedIdentity:
    kind: str
    ident: str
    cert: Path  # leaf + issuing chain, PEM
    key: Path
    serial: int


class BulkIssuer:
    """The fleet CA of one data directory, opened once for many issuances."""

    def __init__(self, data_dir: Path) -> None:
        self.data = DataDir(data_dir)
        self._conn = open_database(self.data.database)
        self.registry = Registry(self._conn)
        authority = CertificateAuthority.load(self.data.ca_dir, ca_passphrase())
        self.ca = FleetCA(authority, self.registry, self.data.crl_dir)
        self._chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in authority.chain())
        self._root_pem = authority.root.public_bytes(serialization.Encoding.PEM)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BulkIssuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    def units(self, ids: Sequence[str], out: Path) -> list[IssuedIdentity]:
        """Register and enroll each unit (token + CSR, as over EST); keys are made here, per unit."""
        out = self._prepare(out)
        issued: list[IssuedIdentity] = []
        for chunk in _chunks(ids, CHUNK):
            with self.registry.transaction():
                for unit_id in chunk:
                    now = datetime.now(UTC)
                    token = self.ca.register_unit(unit_id, now)
                    key = generate_private_key()
                    csr = build_csr(key, make_identity("unit", unit_id, self.trust_domain))
                    result = self.ca.enroll(unit_id, token, csr, now, LIFETIME)
                    if result.certificate is None:
                        raise RuntimeError(f"enrolling {unit_id} was refused: {result.refusal}")
                    issued.append(self._write(out, "unit", unit_id, key, result.certificate))
        return issued

    def roles(
        self, kind: str, names: Sequence[str], out: Path, metadata: dict[str, str] | None = None
    ) -> list[IssuedIdentity]:
        """Operators, services or partners (partners need metadata={"tier": "1"} and so on)."""
        out = self._prepare(out)
        issued: list[IssuedIdentity] = []
        for chunk in _chunks(names, CHUNK):
            with self.registry.transaction():
                for name in chunk:
                    key = generate_private_key()
                    csr = build_csr(key, make_identity(kind, name, self.trust_domain))
                    cert = self.ca.issue_identity(kind, name, csr, datetime.now(UTC), LIFETIME, metadata)
                    issued.append(self._write(out, kind, name, key, cert))
        return issued

    def revoke(self, serial: int) -> bool:
        """What `fleetgate cert revoke SERIAL --force` does to the registry and the CRL files."""
        return self.ca.revoke_certificate(serial, x509.ReasonFlags.key_compromise, datetime.now(UTC)).changed

    def revoke_in_registry(self, serial: int) -> bool:
        """Only the registry commit: the moment a gateway that follows the registry can act on it
        (revoke() also signs and writes the CRL files, which takes this process a while)."""
        return self.registry.revoke_certificate(serial, x509.ReasonFlags.key_compromise, datetime.now(UTC))

    def write_crl(self) -> Path:
        self.ca.write_crl(datetime.now(UTC))
        return self.data.crl_dir / "crl.pem"

    def _prepare(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(out / "ca.crt", self._root_pem, 0o644)
        return out

    def _write(
        self, out: Path, kind: str, ident: str, key: PrivateKey, cert: x509.Certificate
    ) -> IssuedIdentity:
        key_path, cert_path = out / f"{ident}.key", out / f"{ident}.crt"
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(key_path, pem, 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM) + self._chain_pem, 0o644)
        return IssuedIdentity(kind, ident, cert_path, key_path, cert.serial_number)


def _write(path: Path, data: bytes, mode: int) -> None:
    # Throwaway load-test identities: created with their final mode (keys never world-readable), but
    # without pki.keys' fsync-and-rename, which would cost two fsyncs per file for 20,000 files.
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unit_ids(count: int, prefix: str = "TRK", start: int = 1) -> list[str]:
    return [f"{prefix}-{n:05d}" for n in range(start, start + count)]
