"""A busy gateway backed up while it runs and restored into a new directory comes back as itself:
the operators' second factors, the partners' aliases, the quarantines and the QoS 1 messages queued
for an offline persistent session are all as they were."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from gateway.admin.totp import code_at, secret_from_base32
from gateway.admin.totp_store import TotpStore
from gateway.policy.second_factor import SecondFactorPolicy
from gateway.stores.views_key import load_or_create_key
from pki.store import Registry, open_database
from tests.clients import V5, Paho
from tests.harness import GatewayProcess

QUEUED = [f"brake-test-{i}".encode() for i in range(5)]


def test_a_busy_gateway_restored_elsewhere_is_the_same_gateway(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "before")
    gw.init()
    gw.start()
    try:
        enrolled = gw.cli(
            "operator", "add", "olga", "--role", "security", "--totp", "--json", check=True
        ).json()
        secret = secret_from_base32(parse_qs(urlparse(enrolled["totp_uri"]).query)["secret"][0])  # type: ignore[index]
        gw.issue("partner", "ACME", "--tier", "3")
        unit = gw.enroll_unit("TRK-BUSY")
        parked = gw.enroll_unit("TRK-PARKED")
        dispatch = gw.issue("service", "dispatch")
        assert gw.cli("quarantine", "TRK-PARKED", "--reason", "tamper alarm").code == 0

        truck = Paho(gw.mqtt_port, unit, version=V5, clean=False, session_expiry=86400)
        assert truck.connect()[0] == 0
        assert truck.subscribe("fleet/TRK-BUSY/control/#", qos=1) == [1]
        truck.disconnect()  # offline: what dispatch sends now waits in its session, on disk
        sender = Paho(gw.mqtt_port, dispatch, version=V5)
        assert sender.connect()[0] == 0
        for payload in QUEUED:
            assert sender.publish("fleet/TRK-BUSY/control/brake/set", payload, qos=1) == 0
        sender.disconnect()
        views_key = load_or_create_key(gw.data)
        backup = tmp_path / "busy.tar.gz"
        assert gw.cli("backup", str(backup)).code == 0  # online, while the gateway serves
    finally:
        gw.stop()

    after = GatewayProcess(tmp_path / "after")
    restored = after.cli("restore", str(backup))
    assert restored.code == 0, restored.stderr
    after.start()
    try:
        back = Paho(after.mqtt_port, unit, version=V5, clean=False, session_expiry=86400)
        assert back.connect() == (0, True)  # the session is there
        assert [m.payload for m in back.expect(len(QUEUED), timeout=10)] == QUEUED
        back.disconnect()

        conn = open_database(after.data / "fleetgate.db")
        try:
            registry = Registry(conn)
            assert registry.get_identity("unit", "TRK-PARKED").state == "quarantined"  # type: ignore[union-attr]
            olga = registry.get_identity("operator", "olga")
        finally:
            conn.close()
        assert olga is not None and olga.metadata.get("totp") == "enrolled"
        store = TotpStore(after.data, SecondFactorPolicy())
        now = time.time()
        assert store.verify("olga", code_at(secret, now), now).ok  # the same second factor
        assert load_or_create_key(after.data) == views_key  # the same partner aliases
        mode = Paho(after.mqtt_port, parked, version=V5)
        assert mode.connect()[0] == 0
        assert mode.subscribe("fleet/TRK-PARKED/cmd/mode", qos=1) == [1]
        assert b'"diagnostic-only"' in mode.expect(1, timeout=10)[0].payload  # still contained
        mode.disconnect()
    finally:
        after.stop()
