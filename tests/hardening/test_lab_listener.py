"""The lab listener (anonymous plaintext MQTT on loopback, for protocol suites) against a fleet.

It starts only on a data dir that never issued a certificate to a unit, and its clients have the lab
role: client ids starting with `lab-` (so no certificate identity's session can be taken over), and
nothing to do with vehicle control or commands (`fleet/+/control/#`, `fleet/+/cmd/#`): no publish,
no subscription inside them, no delivery from them, even on `#`. Units are enrolled into this
throwaway dir while it runs, the way a lab would.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.clients import V5, Paho
from tests.harness import Credentials, GatewayProcess, free_port, run_cli

UNIT = "TRK-LAB-1"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("lab"), lab=True)
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def unit(gw: GatewayProcess) -> Iterator[Paho]:
    client = Paho(gw.mqtt_port, gw.enroll_unit(UNIT), version=V5)
    assert client.connect()[0] == 0
    assert client.subscribe(f"fleet/{UNIT}/control/+") == [1]
    assert client.subscribe(f"fleet/{UNIT}/cmd/#") == [1]
    yield client
    client.disconnect()


@pytest.fixture(scope="module")
def dispatch(gw: GatewayProcess) -> Credentials:
    return gw.issue("service", "dispatch")


def _lab(gw: GatewayProcess, client_id: str) -> Paho:
    """A plain (no TLS, no certificate) paho client on the lab listener."""
    assert gw.lab_port is not None
    return Paho(gw.lab_port, None, client_id=client_id, version=V5)


def test_a_lab_client_cannot_take_over_a_units_session(gw: GatewayProcess, unit: Paho) -> None:
    intruder = _lab(gw, UNIT)
    assert intruder.connect()[0] == 0x85  # client identifier not valid: lab ids start with "lab-"
    intruder.disconnect()
    assert unit.publish(f"fleet/{UNIT}/telemetry/gps", b"still here", qos=1) == 0
    assert unit.disconnects.empty(), "the unit's session was taken over"


def test_a_lab_client_cannot_touch_vehicle_control_or_the_mode_command(
    gw: GatewayProcess, unit: Paho, dispatch: Credentials
) -> None:
    lab = _lab(gw, "lab-probe")
    assert lab.connect()[0] == 0
    assert lab.subscribe("#") == [1]  # granted, but control and commands are never delivered to it
    assert lab.subscribe("fleet/+/control/#") == [0x87]
    assert lab.subscribe(f"fleet/{UNIT}/cmd/mode") == [0x87]
    assert lab.publish(f"fleet/{UNIT}/control/brake/set", b'{"brake": 1}', qos=1) == 0x87
    assert lab.publish(f"fleet/{UNIT}/cmd/mode", b'{"mode": "normal"}', qos=1, retain=True) == 0x87
    assert unit.quiet(0.5) == [], "a lab client reached the unit's control or command topics"
    # Real control traffic flows to the unit, and the lab's `#` never sees it.
    service = Paho(gw.mqtt_port, dispatch, version=V5)
    assert service.connect()[0] == 0
    assert service.publish(f"fleet/{UNIT}/control/brake", b'{"brake": 0.2}', qos=1) == 0
    assert [m.topic for m in unit.expect(1)] == [f"fleet/{UNIT}/control/brake"]
    service.disconnect()
    # The lab still works for what it is for: its own topics.
    assert lab.publish("lab/conformance/x", b"hello", qos=1) == 0
    assert [m.topic for m in lab.quiet(1.0)] == ["lab/conformance/x"]
    lab.disconnect()


def test_the_lab_listener_refuses_a_data_dir_that_served_units(gw: GatewayProcess) -> None:
    gw.stop()
    result = run_cli(
        "serve",
        "--listen-mqtt",
        f"127.0.0.1:{free_port()}",
        "--listen-https",
        f"127.0.0.1:{free_port()}",
        "--insecure-plaintext-listen",
        f"127.0.0.1:{free_port()}",
        data=gw.data,
        timeout=60,
    )
    assert result.code == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot run on" in errors[0] and "throwaway data dir" in errors[0]
