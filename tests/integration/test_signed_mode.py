"""The gateway signs its mode commands; a unit tells them from forged ones.

A real gateway publishes the retained `fleet/{unit}/cmd/mode`; its signature is checked with openssl
against the server certificate a unit sees in its TLS handshake, and a restart republishes the very
same bytes. A simulated unit connected over mTLS obeys the gateway's commands and ignores — counts and
reports — one signed with another key, injected straight into its message handler (no client needs
to be able to publish on `cmd/mode` for the test to mean something).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_sim.attacks.arena import watch
from device_sim.fleet.enroll import enroll_fleet, fleetgate, register_units
from device_sim.fleet.runner import Fleet, FleetConfig
from device_sim.fleet.unit import MODE_DIAGNOSTIC, MODE_NORMAL
from tests.clients import V311, Paho
from tests.harness import Credentials, GatewayProcess
from tests.integration.mtls import openssl
from tests.signing import make_signer


def retained_mode(gw: GatewayProcess, creds: Credentials) -> tuple[bytes, x509.Certificate]:
    """The retained mode command the unit gets on connecting, and the gateway's certificate from
    that connection's TLS handshake."""
    client = Paho(gw.mqtt_port, creds, version=V311)
    try:
        assert client.connect()[0] == 0
        sock = client.client.socket()
        server = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))  # type: ignore[union-attr]
        assert client.subscribe(f"fleet/{creds.ident}/cmd/mode") == [1]
        [message] = client.expect(1, timeout=5)
        assert message.retain
        return message.payload, server
    finally:
        client.disconnect()


def test_the_mode_command_verifies_with_openssl_against_the_handshake_certificate(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    creds = gateway.enroll_unit("TRK-SIGNED-1")
    assert gateway.cli("quarantine", "TRK-SIGNED-1", "--reason", "tamper alarm").code == 0
    payload, server = retained_mode(gateway, creds)

    # The certificate the unit saw is the gateway's, chained to the fleet root the unit trusts.
    server_pem = tmp_path / "server.crt"
    server_pem.write_bytes(server.public_bytes(Encoding.PEM))
    issuing = gateway.data / "ca" / "issuing.crt"
    chained = openssl("verify", "-CAfile", gateway.root_ca, "-untrusted", issuing, server_pem)
    assert chained.returncode == 0, chained.stdout + chained.stderr

    command = json.loads(payload)
    assert command["mode"] == "diagnostic-only" and command["unit"] == "TRK-SIGNED-1"
    fingerprint = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", server_pem).stdout
    assert command["signer"] == fingerprint.split("=")[1].strip().replace(":", "").lower()
    # The signed bytes, as docs/operations.md defines them, checked by openssl alone.
    signature, message = tmp_path / "sig.der", tmp_path / "signed.json"
    signature.write_bytes(base64.b64decode(command.pop("sig")))
    del command["signer"]
    message.write_bytes(json.dumps(command, sort_keys=True, separators=(",", ":")).encode())
    public = tmp_path / "server.pub"
    assert openssl("x509", "-noout", "-pubkey", "-in", server_pem, "-out", public).returncode == 0
    checked = openssl("dgst", "-sha256", "-verify", public, "-signature", signature, message)
    assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked.stdout + checked.stderr
    message.write_bytes(message.read_bytes().replace(b"diagnostic-only", b"normal"))
    tampered = openssl("dgst", "-sha256", "-verify", public, "-signature", signature, message)
    assert tampered.returncode != 0

    # A restart republishes every mode command (reconcile) — byte for byte the same.
    gateway.restart()
    again, _ = retained_mode(gateway, creds)
    assert again == payload


async def test_a_simulated_unit_obeys_the_gateway_and_ignores_a_forged_mode_command(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    unit_id = f"SIM-SIGNED-{uuid.uuid4().hex[:4].upper()}"
    files = enroll_fleet(
        gateway.https_url, gateway.root_ca, register_units(gateway.data, [unit_id]), tmp_path
    )
    async with Fleet(FleetConfig(port=gateway.mqtt_port, backoff_base=0.2), files) as fleet:
        assert await fleet.wait_online(timeout=20) == 1
        unit = fleet.units[unit_id]
        fleetgate(gateway.data, "quarantine", unit_id, "--reason", "forgery drill")
        assert await watch(lambda: unit.behaviour.mode == MODE_DIAGNOSTIC, 5)
        assert unit.stats.mode_rejected == 0  # the gateway's own command verified

        forged = {
            "mode": MODE_NORMAL,
            "unit": unit_id,
            "since": "2999-01-01T00:00:00.000000+00:00",  # newest possible: only the signature stops it
            "by": "operator/mallory",
        }
        unit._on_message(f"fleet/{unit_id}/cmd/mode", make_signer("mallory").sign(forged), False)
        unit._on_message(f"fleet/{unit_id}/cmd/mode", json.dumps(forged).encode(), False)
        assert unit.behaviour.mode == MODE_DIAGNOSTIC
        assert unit.stats.mode_rejected == 2
        assert unit.behaviour.mode_rejections == {"unknown_signer": 1, "unsigned": 1}

        fleetgate(gateway.data, "release", unit_id)
        assert await watch(lambda: unit.behaviour.mode == MODE_NORMAL, 5)
        assert unit.stats.mode_rejected == 2
