"""The files a device keeps, as `fleetgate enroll` writes them and `fleetgate renew` replaces them.

Files written (DIR defaults to ./UNIT-ID):
    DIR/UNIT.key   the unit's private key (0600)
    DIR/UNIT.crt   its certificate followed by the issuing CA (what MQTT clients present)
    DIR/ca.crt     the fleet root (what MQTT clients trust the gateway with)
    DIR/enrollment.json   server URL and file names, so `renew` needs nothing else
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki.est_client import EstServer, cacerts, issuer_of
from pki.keys import PrivateKey, write_private_key, write_public_file

METADATA = "enrollment.json"


def device_csr(key: PrivateKey, unit_id: str) -> x509.CertificateSigningRequest:
    # The device does not need to know the trust domain: the CA writes the SAN from its own records.
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    )
    return builder.sign(key, hashes.SHA256())


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _issuing_chain(server: EstServer, cert: x509.Certificate) -> list[x509.Certificate]:
    """The issuing CA that signed `cert` (while the gateway rotates, /cacerts lists two)."""
    listed = cacerts(server)
    issuer = issuer_of(cert, listed)
    return [issuer] if issuer is not None else [c for c in listed if c.issuer != c.subject]


def save_device_files(
    out: Path, unit_id: str, key: PrivateKey, cert: x509.Certificate, server: EstServer
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path, ca_path = out / f"{unit_id}.key", out / f"{unit_id}.crt", out / "ca.crt"
    write_private_key(key_path, key)
    write_public_file(cert_path, _pem([cert, *_issuing_chain(server, cert)]))
    write_public_file(ca_path, server.ca_pem)
    meta = {
        "server": server.url,
        "unit": unit_id,
        "cert": cert_path.name,
        "key": key_path.name,
        "ca": ca_path.name,
    }
    write_public_file(out / METADATA, json.dumps(meta, indent=2).encode())
    return {
        "cert": str(cert_path),
        "key": str(key_path),
        "ca": str(ca_path),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def read_metadata(directory: Path) -> dict[str, str]:
    path = directory / METADATA
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
