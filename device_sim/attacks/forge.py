"""Certificates an attacker might present: expired, from another CA, self-signed.

Each is made with the real pki code so that exactly one thing is wrong with it: the right CN and
spiffe SAN of a real unit, a real chain, only the dates or the issuer are not what the gateway trusts.
The expired one is signed with the fleet's own issuing key, loaded from the data directory (the
simulator runs on the gateway's machine); `now` is passed in so the dates are arithmetic.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from device_sim.fleet.enroll import UnitFiles
from pki.authority import CertificateAuthority
from pki.est import build_csr
from pki.keys import PrivateKey, generate_private_key, write_private_key, write_public_file
from pki.names import make_identity
from pki.profiles import build_certificate, client_extensions, leaf_subject

PASSPHRASE_ENV = "FLEETGATE_CA_PASSPHRASE"  # the same variable `fleetgate` reads


def _save(out: Path, name: str, key: PrivateKey, chain: list[x509.Certificate], root: Path) -> UnitFiles:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = out / f"{name}.key", out / f"{name}.crt"
    if key_path.exists():
        key_path.unlink()
    write_private_key(key_path, key)
    write_public_file(cert_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    return UnitFiles(cert_path, key_path, root)


def fleet_authority(data: Path) -> CertificateAuthority:
    passphrase = os.environ.get(PASSPHRASE_ENV)
    return CertificateAuthority.load(data / "ca", passphrase.encode() if passphrase else None)


def expired(data: Path, out: Path, unit_id: str, now: datetime) -> UnitFiles:
    """Signed by the fleet's issuing CA for a real unit, but it expired a day before `now`."""
    authority = fleet_authority(data)
    key = generate_private_key()
    identity = make_identity("unit", unit_id, authority.trust_domain)
    cert = build_certificate(
        leaf_subject(unit_id),
        key.public_key(),
        authority.issuing.subject,
        authority.issuing_key,
        (now - timedelta(days=31), now - timedelta(days=1)),
        client_extensions(identity, key.public_key(), authority.issuing, authority.crl_url),
    )
    return _save(out, f"expired-{unit_id}", key, [cert, authority.issuing], data / "ca" / "root.crt")


def foreign(data: Path, out: Path, unit_id: str, now: datetime) -> UnitFiles:
    """A perfectly formed unit certificate for the same trust domain, from a CA the fleet never met."""
    trust_domain = fleet_authority(data).trust_domain
    ca_dir = out / f"foreign-ca-{unit_id}"
    authority = (
        CertificateAuthority.load(ca_dir)
        if (ca_dir / "ca.json").exists()
        else CertificateAuthority.create(ca_dir, trust_domain, now)
    )
    key = generate_private_key()
    identity = make_identity("unit", unit_id, trust_domain)
    cert = authority.issue(build_csr(key, identity), identity, now, timedelta(days=30))
    return _save(out, f"foreign-{unit_id}", key, [cert, authority.issuing], data / "ca" / "root.crt")


def self_signed(data: Path, out: Path, unit_id: str, now: datetime) -> UnitFiles:
    """The unit's name and SAN, signed by its own key."""
    trust_domain = fleet_authority(data).trust_domain
    key = generate_private_key()
    identity = make_identity("unit", unit_id, trust_domain)
    name = leaf_subject(unit_id)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_uri)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(san, False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    return _save(out, f"self-signed-{unit_id}", key, [cert], data / "ca" / "root.crt")
