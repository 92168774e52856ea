"""Certificates a gateway must refuse: foreign, self-signed, expired, not yet valid.

They are made with the real CA code (pki) so that the only thing wrong with each is the thing the
test is about: the right SAN and CN, a real chain, just the wrong issuer or the wrong dates.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki.authority import CertificateAuthority
from pki.est import build_csr
from pki.keys import generate_private_key, write_private_key, write_public_file
from pki.names import make_identity
from pki.profiles import build_certificate, client_extensions, leaf_subject
from pki.store import Registry
from tests.harness import Credentials, GatewayProcess


def _save(out: Path, name: str, key: object, chain: list[x509.Certificate], ca: Path) -> Credentials:
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{name}.key", out / f"{name}.crt"
    write_private_key(key_path, key)  # type: ignore[arg-type]
    write_public_file(cert_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    return Credentials(name, cert_path, key_path, ca)


def issued_by_gateway_ca(
    gw: GatewayProcess,
    out: Path,
    unit_id: str,
    now: datetime,
    lifetime: timedelta,
    kind: str = "unit",
    *,
    record: bool = False,
) -> Credentials:
    """A unit certificate signed by the gateway's own issuing key, valid from `now` for `lifetime`.

    Built directly with the profile code: the authority itself refuses to issue outside its own
    validity, which is exactly what an expired or not-yet-valid test certificate needs. It is not in
    the registry (the gateway refuses it as `unknown_certificate`) unless `record`: then it is
    entered the way FleetCA enters what it issues, from this process, as the CLI would.
    """
    authority = CertificateAuthority.load(gw.data / "ca")
    key = generate_private_key()
    identity = make_identity(kind, unit_id, authority.trust_domain)
    cert = build_certificate(
        leaf_subject(unit_id),
        key.public_key(),
        authority.issuing.subject,
        authority.issuing_key,
        (now, now + lifetime),
        client_extensions(identity, key.public_key(), authority.issuing, None),
    )
    if record:
        registry = Registry.open(gw.data / "fleetgate.db")
        try:
            registry.add_certificate(cert, identity, datetime.now(UTC))
        finally:
            registry.conn.close()
    return _save(out, unit_id, key, [cert, authority.issuing], gw.root_ca)


def expired(gw: GatewayProcess, out: Path, unit_id: str) -> Credentials:
    return issued_by_gateway_ca(gw, out, unit_id, datetime.now(UTC) - timedelta(days=40), timedelta(days=30))


def not_yet_valid(gw: GatewayProcess, out: Path, unit_id: str) -> Credentials:
    return issued_by_gateway_ca(gw, out, unit_id, datetime.now(UTC) + timedelta(days=10), timedelta(days=30))


def foreign(gw: GatewayProcess, out: Path, unit_id: str) -> Credentials:
    """Same trust domain, same SAN shape, another CA."""
    authority = CertificateAuthority.create(out / "foreign-ca", "fleet.local", datetime.now(UTC))
    key = generate_private_key()
    identity = make_identity("unit", unit_id, "fleet.local")
    cert = authority.issue(build_csr(key, identity), identity, datetime.now(UTC), timedelta(days=30))
    return _save(out, f"foreign-{unit_id}", key, [cert, authority.issuing], gw.root_ca)


def self_signed(gw: GatewayProcess, out: Path, unit_id: str) -> Credentials:
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://fleet.local/unit/{unit_id}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return _save(out, f"self-{unit_id}", key, [cert], gw.root_ca)
