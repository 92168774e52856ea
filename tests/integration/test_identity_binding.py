"""No other identity takes a unit's session: real paho clients over mTLS (and the lab listener).

Ids are unique across kinds in the registry now, but a data directory written before that may hold
a partner named like a unit; the review's reproduction did exactly that. Such a partner, and any lab
client (no certificate, any client id), presenting the unit's client id is refused with 0x85 (3.1.1:
return code 2, which paho reports as the same 0x85), while the unit keeps its live connection, its
subscriptions and the control messages queued for it; the cloning detector does not blame the unit.
"""

from __future__ import annotations

import json
import queue
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import MQTTProtocolVersion

from pki.authority import CertificateAuthority
from pki.est import build_csr
from pki.keys import generate_private_key, write_private_key, write_public_file
from pki.names import make_identity
from pki.records import IDENTITY_COLUMNS, to_text
from pki.service import FleetCA
from pki.store import Registry, open_database
from tests.clients import V5, V311, Paho
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import audit_records

CLIENT_ID_NOT_VALID = 0x85
ROUNDS = 8


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("binding"), lab=True)
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def dispatch(gw: GatewayProcess) -> Iterator[Paho]:
    client = Paho(gw.mqtt_port, gw.issue("service", "dispatch"))
    assert client.connect()[0] == 0
    yield client
    client.disconnect()


def legacy_partner(gw: GatewayProcess, ident: str) -> Credentials:
    """A partner sharing a unit's id, written the way a registry from before the unique id space
    held it (no check on insert), with a real certificate from the gateway's CA."""
    now = datetime.now(UTC)
    registry = Registry(open_database(gw.data / "fleetgate.db"))
    with registry.transaction() as conn:
        conn.execute(
            f"INSERT INTO pki_identities ({IDENTITY_COLUMNS}) VALUES ('partner', ?, 'enrolled', ?, ?, ?)",
            (ident, json.dumps({"tier": "1"}), to_text(now), to_text(now)),
        )
    ca = FleetCA(CertificateAuthority.load(gw.data / "ca"), registry, gw.data / "crl")
    key = generate_private_key()
    csr = build_csr(key, make_identity("partner", ident, ca.trust_domain))
    cert = ca.issue_identity("partner", ident, csr, now, timedelta(days=1))
    registry.conn.close()
    out = gw.clients / "legacy"
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{ident}.key", out / f"{ident}.crt"
    write_private_key(key_path, key)
    chain = [cert, ca.authority.issuing]
    write_public_file(cert_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    return Credentials(ident, cert_path, key_path, gw.root_ca)


def persistent_unit(gw: GatewayProcess, creds: Credentials, version: MQTTProtocolVersion) -> Paho:
    expiry = 3600 if version == V5 else None
    return Paho(gw.mqtt_port, creds, version=version, clean=False, session_expiry=expiry)


def attempt(port: int, creds: Credentials | None, client_id: str, version: MQTTProtocolVersion) -> int:
    """One CONNECT naming `client_id` with clean start 0 (asking for the session); its CONNACK code."""
    intruder = Paho(port, creds, client_id, version=version, clean=False, session_expiry=3600)
    try:
        return intruder.connect()[0]
    finally:
        intruder.disconnect()


def unit_state(gw: GatewayProcess, unit_id: str) -> str:
    shown = gw.cli("unit", "show", unit_id, "--json", check=True).json()
    assert isinstance(shown, dict)
    return str(shown["state"])


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_a_partner_or_lab_client_with_the_units_client_id_is_refused_and_the_unit_keeps_its_session(
    gw: GatewayProcess, dispatch: Paho, version: MQTTProtocolVersion
) -> None:
    unit_id = f"TRK-BIND-{'5' if version == V5 else '3'}"
    unit_creds = gw.enroll_unit(unit_id)
    partner = legacy_partner(gw, unit_id)
    control = f"fleet/{unit_id}/control/brake/set"
    unit = persistent_unit(gw, unit_creds, version)
    assert unit.connect()[0] == 0
    assert unit.subscribe(f"fleet/{unit_id}/control/#", qos=1) == [1]

    # While the unit is online: neither takes its connection.
    assert attempt(gw.mqtt_port, partner, unit_id, version) == CLIENT_ID_NOT_VALID
    assert gw.lab_port is not None
    assert attempt(gw.lab_port, None, unit_id, version) == CLIENT_ID_NOT_VALID
    assert dispatch.publish(control, b"live", qos=1) == 0
    assert [(m.topic, m.payload) for m in unit.expect(1)] == [(control, b"live")]
    with pytest.raises(queue.Empty):
        unit.disconnects.get(timeout=0.5)  # never told "session taken over"

    # While it is offline: neither resumes nor discards its session and the control message queued.
    unit.disconnect()
    assert dispatch.publish(control, b"queued-while-offline", qos=1) == 0
    assert attempt(gw.mqtt_port, partner, unit_id, version) == CLIENT_ID_NOT_VALID
    assert attempt(gw.lab_port, None, unit_id, version) == CLIENT_ID_NOT_VALID
    back = persistent_unit(gw, unit_creds, version)
    assert back.connect() == (0, True)
    assert [(m.topic, m.payload) for m in back.expect(1)] == [(control, b"queued-while-offline")]
    back.disconnect()

    refused = [r for r in audit_records(gw) if r["action"] == "mqtt.connect" and r["outcome"] == "refused"]
    reasons = sorted((r["actor"].split(":")[0], r["reason"]) for r in refused if r["subject"] == unit_id)
    assert reasons == [
        ("lab/127.0.0.1", "client_id_not_lab"),
        ("lab/127.0.0.1", "client_id_not_lab"),
        (f"partner/{unit_id}", "client_id_held_by_unit"),
        (f"partner/{unit_id}", "client_id_held_by_unit"),
    ]


def test_the_cloning_detector_does_not_quarantine_the_victim(gw: GatewayProcess) -> None:
    # The review's chain: the impostor and the unit alternate (the cloning rule alerts at three
    # takeovers and quarantines at the next three): each round the unit connects, the partner tries.
    unit_id = "TRK-BIND-CLONE"
    unit_creds = gw.enroll_unit(unit_id)
    partner = legacy_partner(gw, unit_id)
    codes, impostor = [], None
    for _ in range(ROUNDS):
        unit = Paho(gw.mqtt_port, unit_creds)
        assert unit.connect()[0] == 0  # (takes the session back if the impostor got it)
        if impostor is not None:
            impostor.disconnect()
        impostor = Paho(gw.mqtt_port, partner, unit_id)
        codes.append(impostor.connect()[0])
        unit.disconnect()
    assert impostor is not None
    impostor.disconnect()
    time.sleep(1.0)  # the detectors run on the 0.25 s event tick
    assert unit_state(gw, unit_id) == "enrolled"
    assert codes == [CLIENT_ID_NOT_VALID] * ROUNDS
    fired = [(r["subject"], r["actor"]) for r in audit_records(gw) if r["action"] == "detector.fired"]
    # The refused connects count against whoever made them: the partner, never the unit.
    assert [who for who in fired if unit_id in who[0]] == [
        (f"partner/{unit_id}", "detector/handshake_failures")
    ]
