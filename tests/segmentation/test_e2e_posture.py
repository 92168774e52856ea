"""Device posture over real mTLS: below the minimum a unit is admitted restricted (diagnostic-only,
its state topic open, control untouched, no ops alert) or refused, as the policy says; reporting a
better posture on its retained state restores normal mode on the live session."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.clients import V5, V311, Paho
from tests.harness import GatewayProcess
from tests.ops.helpers import audit_records, eventually

OLD = (("firmware", "1.3.9"), ("patch_level", "2026-01"), ("secure_boot", "true"))
NEW = {"online": True, "firmware": "1.4.2", "patch_level": "2026-09", "secure_boot": True}


def unit_id() -> str:
    return f"TRK-POS-{uuid.uuid4().hex[:6].upper()}"


@pytest.fixture(scope="module")
def dispatch(gateway: GatewayProcess) -> Iterator[Paho]:
    client = Paho(gateway.mqtt_port, gateway.issue("service", "dispatch"), version=V5)
    assert client.connect()[0] == 0
    assert client.subscribe("fleet/+/telemetry/#", 1) == [1]
    yield client
    client.disconnect()


@pytest.mark.parametrize("version", [V5, V311], ids=["5.0-connect-properties", "3.1.1-state-only"])
def test_old_firmware_is_restricted_until_an_update_is_reported(
    gateway: GatewayProcess, dispatch: Paho, version: object
) -> None:
    unit = unit_id()
    creds = gateway.enroll_unit(unit)
    client = Paho(gateway.mqtt_port, creds, version=version, user_properties=OLD)  # type: ignore[arg-type]
    assert client.connect()[0] == 0  # admitted...
    if version == V311:  # 3.1.1 says it on its retained state (nothing reported yet: when_unknown allow)
        old_state = {"online": True, "firmware": "1.3.9", "patch_level": "2026-01"}
        assert client.publish(f"fleet/{unit}/state", json.dumps(old_state), qos=1, retain=True) == 0
        dispatch.quiet(0.3)
    # ...restricted: telemetry is dropped (0x87 on 5.0, silently on 3.1.1), diagnostics and state flow
    assert client.publish(f"fleet/{unit}/telemetry/gps", b'{"lat":1,"lon":2}', qos=1) == (
        0x87 if version == V5 else 0
    )
    assert [m for m in dispatch.quiet(0.4) if unit in m.topic] == []
    assert client.publish(f"fleet/{unit}/diag/report", b"{}", qos=1) == 0
    assert client.subscribe(f"fleet/{unit}/control/#", 1) == [1]  # control is never touched
    # the unit updates and says so: normal mode on the same, live session
    assert client.publish(f"fleet/{unit}/state", json.dumps(NEW), qos=1, retain=True) == 0
    assert eventually(
        lambda: (
            client.publish(f"fleet/{unit}/telemetry/gps", b'{"lat":1,"lon":2}', qos=1) == 0
            and any(unit in m.topic for m in dispatch.quiet(0.2))
        ),
        5.0,
    )
    assert client.disconnects.empty()  # never cut
    client.disconnect()
    records = [r for r in audit_records(gateway, 0.3) if r["subject"] == f"unit/{unit}"]
    posture = [r["outcome"] for r in records if r["action"] == "posture.changed"]
    assert posture[-1] == "ok" and ("restricted" in posture or version == V5)
    assert not [r for r in records if r["action"].startswith("unit.quarantine")]  # no ops alert


def test_current_firmware_on_connect_is_normal(gateway: GatewayProcess, dispatch: Paho) -> None:
    unit = unit_id()
    new = (("firmware", "fleet-sim 1.4.2"), ("patch_level", "2026-09"), ("secure_boot", "true"))
    client = Paho(gateway.mqtt_port, gateway.enroll_unit(unit), version=V5, user_properties=new)
    assert client.connect()[0] == 0
    assert client.publish(f"fleet/{unit}/telemetry/gps", b'{"lat":1,"lon":2}', qos=1) == 0
    client.disconnect()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("refuse")
    policy = yaml.safe_load((Path(__file__).parents[2] / "configs" / "policy.yaml").read_text())
    policy["posture"]["unit"]["below_minimum"] = "refuse"
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    (root / "gateway.yaml").write_text(f"policy_file: {root / 'policy.yaml'}\n")
    gw = GatewayProcess(root, extra_args=("--config", str(root / "gateway.yaml")))
    gw.init()
    gw.start()
    yield gw
    gw.stop()


def test_below_minimum_is_refused_when_the_policy_says_so(refusing: GatewayProcess) -> None:
    unit = unit_id()
    creds = refusing.enroll_unit(unit)
    old = Paho(refusing.mqtt_port, creds, version=V5, user_properties=OLD)
    assert old.connect()[0] == 0x87
    old.client.loop_stop()
    new = (("firmware", "1.4.2"),)
    ok = Paho(refusing.mqtt_port, creds, version=V5, user_properties=new)
    assert ok.connect()[0] == 0
    # reporting old firmware on the live session cuts it (re-authorization refuses it)
    old_state = {"firmware": "1.3.9"}
    ok.publish(f"fleet/{unit}/state", json.dumps(old_state), qos=1, retain=True)
    assert ok.disconnects.get(timeout=5) == 0x87
    ok.client.loop_stop()
