"""Revocation follows renewal: a thief who re-enrolled with a stolen unit certificate and a key of
their own loses the renewed certificate — live session included — the moment the owner revokes the
stolen serial for key compromise; the CLI shows the lineage it followed.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli.device import device_csr
from pki.est_client import bootstrap, simplereenroll
from pki.keys import generate_private_key, write_private_key, write_public_file
from tests.clients import V5, Paho
from tests.harness import Credentials, GatewayProcess
from tests.integration.mtls import connack, serial_of
from tests.ops.helpers import audit_records, eventually, metric


def reenroll_with_a_new_key(gw: GatewayProcess, current: Credentials, out: Path) -> Credentials:
    """What a thief holding `current` (certificate and key) does: simplereenroll with a key of their own."""
    key = generate_private_key()
    est = bootstrap(gw.https_url, ca_file=gw.root_ca)
    cert = simplereenroll(est, current.cert, current.key, device_csr(key, current.ident))
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{current.ident}.key", out / f"{current.ident}.crt"
    write_private_key(key_path, key)
    issuing = (gw.data / "ca" / "issuing.crt").read_bytes()
    write_public_file(cert_path, cert.public_bytes(Encoding.PEM) + issuing)
    return Credentials(current.ident, cert_path, key_path, gw.root_ca)


def test_revoking_a_stolen_certificate_for_key_compromise_cuts_its_renewal(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    stolen = gateway.enroll_unit("TRK-LINEAGE-1")
    renewed = reenroll_with_a_new_key(gateway, stolen, tmp_path / "thief")
    original_serial, renewed_serial = serial_of(stolen), serial_of(renewed)

    thief = Paho(gateway.mqtt_port, renewed, version=V5)
    assert thief.connect()[0] == 0  # the renewed certificate works, as any renewal does

    revoke = gateway.cli("cert", "revoke", original_serial, "--reason", "keyCompromise", "--force", "--json")
    assert revoke.code == 0, revoke.stderr
    revoked_at = time.monotonic()
    assert thief.disconnects.get(timeout=5) == 0x87  # DISCONNECT: not authorized
    assert time.monotonic() - revoked_at < 1.0
    assert revoke.json()["descendants"] == [renewed_serial]  # type: ignore[index]
    thief.client.loop_stop()
    before = metric(gateway, "certificates_refused", reason="certificate_revoked")
    assert connack(gateway, renewed) is None  # and it cannot come back
    assert connack(gateway, stolen) is None
    assert eventually(
        lambda: metric(gateway, "certificates_refused", reason="certificate_revoked") >= before + 2, 5
    )
    assert any(
        r["action"] == "cert.revoke" and r["details"].get("descendants") == [renewed_serial]
        for r in audit_records(gateway)
    )

    # The lineage, both ways, as the operator sees it.
    shown = gateway.cli("cert", "show", renewed_serial, "--json")
    assert shown.code == 0, shown.stderr
    facts = shown.json()
    assert facts["renewed_from"] == original_serial  # type: ignore[index]
    assert facts["lineage"] == [original_serial, renewed_serial]  # type: ignore[index]
    assert facts["status"] == "revoked" and facts["revocation_reason"] == "key_compromise"  # type: ignore[index]
    text = gateway.cli("cert", "show", original_serial)
    assert text.code == 0 and f"renewed_into: {renewed_serial}" in text.stdout
    listed = gateway.cli("cert", "list", "--id", "TRK-LINEAGE-1")
    assert listed.code == 0 and "RENEWED_FROM" in listed.stdout  # plain columns in a pipe


def test_revoking_a_predecessor_as_superseded_leaves_its_successor_connected(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    first = gateway.enroll_unit("TRK-LINEAGE-2")
    successor = reenroll_with_a_new_key(gateway, first, tmp_path / "renewed")
    revoke = gateway.cli("cert", "revoke", serial_of(first), "--reason", "superseded", "--force")
    assert revoke.code == 0, revoke.stderr
    assert "renewed from it" not in revoke.stdout
    time.sleep(0.3)  # the gateway follows the registry within a fraction of a second
    assert connack(gateway, first) is None
    assert connack(gateway, successor) == 0
