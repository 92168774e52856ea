"""Who may command units over MQTT, through real paho clients over mTLS.

An operator's MQTT grants follow its admin role from the registry: an auditor reads and sends
nothing, ops and security keep the command topics; naming dispatch's `$share` group gives an
auditor a group of its own, not half of dispatch's messages. And the retained mode command the
gateway publishes on quarantine is its alone: no operator, no service, no unit replaces or clears
it, in MQTT 3.1.1 (which cannot say no: the message is dropped) or 5.0 (PUBACK 0x87).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from tests.clients import V5, V311, Paho, Received
from tests.harness import Credentials, GatewayProcess

NOT_AUTHORIZED = 0x87
UNIT = "TRK-ROLES"
MODE = f"fleet/{UNIT}/cmd/mode"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("roles"))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def who(gw: GatewayProcess) -> dict[str, Credentials]:
    return {
        "unit": gw.enroll_unit(UNIT),
        "bob": gw.issue("operator", "bob", "--role", "auditor"),
        "carol": gw.issue("operator", "carol", "--role", "ops"),
        "alice": gw.issue("operator", "alice", "--role", "security"),
        "dispatch": gw.issue("service", "dispatch"),
    }


@pytest.fixture(scope="module")
def unit(gw: GatewayProcess, who: dict[str, Credentials]) -> Iterator[Paho]:
    client = Paho(gw.mqtt_port, who["unit"])
    assert client.connect()[0] == 0
    assert client.subscribe(f"fleet/{UNIT}/cmd/#", qos=1) == [1]
    yield client
    client.disconnect()


def connected(gw: GatewayProcess, creds: Credentials, version: MQTTProtocolVersion = V5) -> Paho:
    client = Paho(gw.mqtt_port, creds, version=version)
    assert client.connect()[0] == 0
    return client


def test_an_auditor_reads_but_commands_nothing(
    gw: GatewayProcess, who: dict[str, Credentials], unit: Paho
) -> None:
    bob = connected(gw, who["bob"])
    try:
        assert bob.subscribe("fleet/+/telemetry/#", qos=1) == [1]  # reading is what auditors do
        assert bob.publish(f"fleet/{UNIT}/cmd/immobilise", b'{"by": "bob the auditor"}') == NOT_AUTHORIZED
        assert bob.publish(f"fleet/{UNIT}/control/brake/set", b"1") == NOT_AUTHORIZED
        assert unit.quiet(0.5) == []
    finally:
        bob.disconnect()


@pytest.mark.parametrize("name", ["carol", "alice"])
def test_ops_and_security_still_command_units(
    gw: GatewayProcess, who: dict[str, Credentials], unit: Paho, name: str
) -> None:
    operator = connected(gw, who[name])
    try:
        assert operator.publish(f"fleet/{UNIT}/cmd/reboot", name.encode()) == 0
        assert [(m.topic, m.payload) for m in unit.expect(1)] == [(f"fleet/{UNIT}/cmd/reboot", name.encode())]
    finally:
        operator.disconnect()


def test_an_auditor_joining_dispatchs_share_group_diverts_nothing(
    gw: GatewayProcess, who: dict[str, Credentials]
) -> None:
    shared = "$share/dispatch-workers/fleet/+/telemetry/#"
    dispatch, bob = connected(gw, who["dispatch"]), connected(gw, who["bob"])
    truck = connected(gw, gw.enroll_unit("TRK-SHARE"))
    try:
        assert dispatch.subscribe(shared) == [1] and bob.subscribe(shared) == [1]
        for i in range(10):
            assert truck.publish("fleet/TRK-SHARE/telemetry/gps", str(i).encode()) == 0
        assert sorted(int(m.payload) for m in dispatch.expect(10)) == list(range(10))
        assert len(bob.expect(10)) == 10  # a group of its own: a copy of what it may read anyway
    finally:
        for client in (dispatch, bob, truck):
            client.disconnect()


def retained_mode(gw: GatewayProcess, creds: Credentials) -> list[Received]:
    """What a client subscribing to the unit's mode command now is given: the retained message."""
    fresh = connected(gw, creds)
    try:
        assert fresh.subscribe(MODE, qos=1) == [1]
        return fresh.quiet(1.0)
    finally:
        fresh.disconnect()


@pytest.fixture(scope="module")
def genuine(gw: GatewayProcess, unit: Paho) -> bytes:
    """The mode command the gateway publishes when ops quarantines the unit, as the unit received it."""
    gw.cli("quarantine", UNIT, "--reason", "tampering suspected", check=True)
    (command,) = unit.expect(1)
    assert (command.topic, command.retain) == (MODE, False)  # live delivery: retain as published is off
    return command.payload


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_nobody_forges_or_clears_the_gateways_mode_command(
    gw: GatewayProcess, who: dict[str, Credentials], unit: Paho, genuine: bytes, version: MQTTProtocolVersion
) -> None:
    forged = b'{"mode": "normal", "since": "now", "by": "operator/alice"}'
    for name in ("bob", "carol", "alice", "dispatch"):
        client = connected(gw, who[name], version)
        try:
            for payload in (forged, b""):  # replace it, or clear it with an empty retained message
                code = client.publish(MODE, payload, qos=1, retain=True)
                assert code == (NOT_AUTHORIZED if version == V5 else 0)  # 3.1.1: acked, and dropped
        finally:
            client.disconnect()
    assert unit.quiet(0.5) == []  # the live unit heard nothing forged
    (still,) = retained_mode(gw, who["carol"])
    assert (still.payload, still.retain) == (genuine, True)
