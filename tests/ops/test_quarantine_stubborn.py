"""A quarantined unit that ignores its mode command and keeps sending telemetry: every message is
dropped, but its session — and with it its vehicle-control path — is never cut for it."""

from __future__ import annotations

from tests.clients import V5, V311, Paho
from tests.harness import GatewayProcess
from tests.ops.helpers import metric


def test_a_stubborn_quarantined_unit_keeps_its_control_path(gateway: GatewayProcess) -> None:
    dispatch = gateway.issue("service", "dispatch")
    unit = gateway.enroll_unit("TRK-STUBBORN")
    truck = Paho(gateway.mqtt_port, unit, version=V5)
    assert truck.connect()[0] == 0
    assert truck.subscribe("fleet/TRK-STUBBORN/control/#", 1) == [1]
    assert truck.subscribe("fleet/TRK-STUBBORN/cmd/#", 1) == [1]
    assert gateway.cli("quarantine", "TRK-STUBBORN", "--reason", "suspected tampering").code == 0
    [mode] = truck.expect(1)
    assert mode.topic == "fleet/TRK-STUBBORN/cmd/mode" and b"diagnostic-only" in mode.payload
    service = Paho(gateway.mqtt_port, dispatch, version=V311)
    assert service.connect()[0] == 0
    limit = 20  # violations.max_denied_before_disconnect in the shipped policy
    reasons = [
        truck.publish("fleet/TRK-STUBBORN/telemetry/gps", f'{{"n": {n}}}'.encode(), qos=1)
        for n in range(3 * limit)
    ]
    assert reasons == [0x87] * (3 * limit)  # every one dropped ...
    assert truck.disconnects.empty()  # ... and the session never cut for it
    assert service.publish("fleet/TRK-STUBBORN/control/brake-test", b"\x01\x02", qos=1) == 0
    [command] = truck.expect(1)
    assert (command.topic, command.payload) == ("fleet/TRK-STUBBORN/control/brake-test", b"\x01\x02")
    assert metric(gateway, "decisions", kind="publish", verdict="deny", reason="quarantined") >= 2 * limit
    truck.disconnect()
    service.disconnect()
