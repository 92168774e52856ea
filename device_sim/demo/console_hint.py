"""How to open the fleet console with the demo operator's certificate (`scripts/demo --keep-running`).

The demo's operator `ops` (role ops) holds a key and certificate made by `fleetgate operator add`.
A browser takes a client certificate from a PKCS#12 file imported into its NSS database, so this
writes one next to them (password `demo`: a throwaway demo identity, like the demo CA's unencrypted
keys) and prints the commands that import it and the fleet root, then the console's address.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from device_sim.fleet.enroll import UnitFiles

P12_PASSWORD = "demo"


def write_p12(files: UnitFiles, name: str) -> Path:
    certs = x509.load_pem_x509_certificates(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    out = files.cert.with_suffix(".p12")
    data = pkcs12.serialize_key_and_certificates(
        name.encode(),
        key,  # type: ignore[arg-type]
        certs[0],
        certs[1:],
        serialization.BestAvailableEncryption(P12_PASSWORD.encode()),
    )
    out.write_bytes(data)
    out.chmod(0o600)
    return out


def console_hint(files: UnitFiles, name: str, https_port: int, data: Path) -> str:
    """The lines `scripts/demo --keep-running` prints about the console (writes the .p12 first)."""
    p12 = write_p12(files, name)
    url = f"https://localhost:{https_port}/console"
    db = "sql:$HOME/.pki/nssdb"
    return "\n".join(
        (
            f"Fleet console: {url}  (operator {name}, role ops; key and certificate in {files.cert.parent})",
            "Open it in Chromium or Firefox with that operator's certificate:",
            f"  mkdir -p $HOME/.pki/nssdb && certutil -N -d {db} --empty-password   # once, if you have none",
            f'  certutil -A -d {db} -n "fleetgate demo root" -t C,, -i {files.ca}',
            f"  pk12util -i {p12} -d {db} -W {P12_PASSWORD}",
            f"  chromium {url}        # choose the certificate '{name}' when it asks",
            "Quarantine works at once; release asks for a TOTP code. Give the operator one with",
            f"  .venv/bin/fleetgate operator totp {name} --data {data}",
        )
    )
