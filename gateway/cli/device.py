"""Device-side commands: enroll and renew over EST. The private key is made here and never leaves.

Files written (DIR defaults to ./UNIT-ID):
    DIR/UNIT.key   the unit's private key (0600)
    DIR/UNIT.crt   its certificate followed by the issuing CA (what MQTT clients present)
    DIR/ca.crt     the fleet root (what MQTT clients trust the gateway with)
    DIR/enrollment.json   server URL and file names, so `renew` needs nothing else
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.cli.common import CliError, emit_json, friendly_errors, json_option
from pki.est_client import EstServer, bootstrap, cacerts, simpleenroll, simplereenroll
from pki.keys import PrivateKey, generate_private_key, load_private_key, write_private_key, write_public_file
from pki.names import validate_id

METADATA = "enrollment.json"


def device_csr(key: PrivateKey, unit_id: str) -> x509.CertificateSigningRequest:
    # The device does not need to know the trust domain: the CA writes the SAN from its own records.
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    )
    return builder.sign(key, hashes.SHA256())


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _issuing_chain(server: EstServer) -> list[x509.Certificate]:
    return [c for c in cacerts(server) if c.issuer != c.subject]


def _save(
    out: Path, unit_id: str, key: PrivateKey, cert: x509.Certificate, server: EstServer
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path, ca_path = out / f"{unit_id}.key", out / f"{unit_id}.crt", out / "ca.crt"
    write_private_key(key_path, key)
    write_public_file(cert_path, _pem([cert, *_issuing_chain(server)]))
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


@click.command()
@click.option("--server", required=True, help="Gateway HTTPS URL, e.g. https://gateway.example:8443.")
@click.option("--unit", "unit_id", required=True, help="The unit id the token was issued for.")
@click.option("--token", required=True, help="One-time enrollment token from `fleetgate unit add`.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the key and certificates (default: ./UNIT).",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The fleet root certificate, if you have it.",
)
@click.option("--ca-sha256", default=None, help="Or the root's SHA-256 fingerprint (from `unit add`).")
@click.option(
    "--key-type",
    type=click.Choice(["p256", "p384", "rsa2048", "rsa3072"]),
    default="p256",
    show_default=True,
    help="Key algorithm of the key made on this device (ECDSA P-256/P-384 or RSA).",
)
@json_option
@friendly_errors
def enroll(
    server: str,
    unit_id: str,
    token: str,
    out: Path | None,
    ca_file: Path | None,
    ca_sha256: str | None,
    key_type: str,
    as_json: bool,
) -> None:
    """Enroll this device over EST: a key made here, a one-time token, the certificate saved."""
    validate_id("unit", unit_id)
    est = bootstrap(server, ca_file=ca_file, ca_sha256=ca_sha256)
    key = generate_private_key(key_type)
    cert = simpleenroll(est, unit_id, token, device_csr(key, unit_id))
    paths = _save((out or Path(unit_id)).absolute(), unit_id, key, cert, est)
    if as_json:
        emit_json({"unit": unit_id, **paths})
    else:
        click.echo(f"Enrolled {unit_id}: certificate {paths['cert']} valid until {paths['not_after']}.")


@click.command()
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The current certificate (PEM), e.g. TRK-00042/TRK-00042.crt; replaced in place.",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Its private key; a fresh key replaces it.",
)
@click.option("--server", default=None, help="Gateway HTTPS URL (default: from enrollment.json).")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The fleet root certificate (default: ca.crt beside the certificate).",
)
@json_option
@friendly_errors
def renew(cert_file: Path, key_file: Path, server: str | None, ca_file: Path | None, as_json: bool) -> None:
    """Renew this device's certificate over mTLS with a fresh key (simplereenroll)."""
    meta = _metadata(cert_file.parent)
    url = server or meta.get("server")
    ca = ca_file or (cert_file.parent / meta["ca"] if "ca" in meta else None)
    if not url or ca is None:
        raise CliError("no server known for this certificate; pass --server URL and --ca ROOT")
    load_private_key(key_file)  # fail early, clearly, on a missing or loose key file
    current = x509.load_pem_x509_certificate(cert_file.read_bytes())
    unit_id = str(current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    est = bootstrap(url, ca_file=ca)
    key = generate_private_key()
    cert = simplereenroll(est, cert_file, key_file, device_csr(key, unit_id))
    paths = _save(cert_file.parent.absolute(), unit_id, key, cert, est)
    if as_json:
        emit_json({"unit": unit_id, **paths})
    else:
        click.echo(f"Renewed {unit_id}: certificate {paths['cert']} valid until {paths['not_after']}.")


def _metadata(directory: Path) -> dict[str, str]:
    path = directory / METADATA
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
