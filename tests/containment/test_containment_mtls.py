"""The containment promise end to end: a real gateway (`fleetgate serve`), real paho clients over
mTLS, MQTT 3.1.1 and 5.0, the shipped policy and its default detectors.

A unit in good standing keeps its control channel through quarantine (reconnecting with its usual
will), through a flood it sends itself (rate limit, the detector's throttle, the detector's
quarantine), and a unit publishing steadily at its role's permitted rate is never denied and never
fires a detector. Control is checked as dispatch and the truck see it: dispatch's control message
arrives byte for byte, the truck's ack reaches dispatch byte for byte.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from paho.mqtt.enums import MQTTProtocolVersion

from tests.clients import V5, V311, Paho, Received
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import metric, metrics_text

VERSIONS = [pytest.param(V311, id="3.1.1"), pytest.param(V5, id="5.0")]


@pytest.fixture(scope="module")
def dispatch_creds(gateway: GatewayProcess) -> Credentials:
    return gateway.issue("service", "dispatch")


def audit(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The audit log, read from the database read-only (a CLI process per poll would be slow)."""
    with sqlite3.connect(f"file:{gw.data / 'fleetgate.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT actor, action, subject, outcome, reason, details FROM audit_log ORDER BY seq"
        ).fetchall()
    keys = ("actor", "action", "subject", "outcome", "reason")
    return [{**dict(zip(keys, row[:5], strict=True)), "details": json.loads(row[5])} for row in rows]


def wait_for_audit(gw: GatewayProcess, timeout: float = 10.0, **fields: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in audit(gw):
            if all(str(record.get(k)) == v for k, v in fields.items()):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record with {fields}:\n{gw.log()[-3000:]}")
        time.sleep(0.2)


def next_on(client: Paho, topic: str, timeout: float = 10.0) -> Received:
    """The next message on `topic` (others that arrive first are passed over)."""
    deadline = time.monotonic() + timeout
    while True:
        message = client.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        if message.topic == topic:
            return message


def drain(client: Paho) -> list[Received]:
    got = []
    while True:
        try:
            got.append(client.messages.get_nowait())
        except queue.Empty:
            return got


def control(unit: str) -> str:
    return f"fleet/{unit}/control/brake"


def ack(unit: str) -> str:
    return f"fleet/{unit}/control/brake/ack"


def control_payload(n: int) -> bytes:
    return b"\x00\xffbrake:" + n.to_bytes(4, "big") + b"\x80"


def ack_payload(n: int) -> bytes:
    return b"\x01ack:" + n.to_bytes(4, "big") + b"\xfe"


def round_trip(dispatch: Paho, truck: Paho, unit: str, n: int) -> None:
    """Dispatch → truck control message, truck → dispatch ack; both byte for byte."""
    drain(dispatch)
    assert dispatch.publish(control(unit), control_payload(n), qos=1) == 0
    assert next_on(truck, control(unit)).payload == control_payload(n)
    assert truck.publish(ack(unit), ack_payload(n), qos=1) == 0  # 5.0: accepted (3.1.1 cannot say)
    assert next_on(dispatch, ack(unit)).payload == ack_payload(n)


def connect_truck(gw: GatewayProcess, creds: Credentials, version: MQTTProtocolVersion, **kw: Any) -> Paho:
    truck = Paho(gw.mqtt_port, creds, version=version, **kw)
    code, _ = truck.connect()
    assert code == 0, f"the truck was refused: {code:#x}"
    assert truck.subscribe(f"fleet/{creds.ident}/control/#", 1) == [1]
    assert truck.subscribe(f"fleet/{creds.ident}/cmd/#", 1) == [1]
    return truck


# --- (a) quarantine and the reference will --------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_a_quarantined_unit_reconnects_with_its_will_and_keeps_control(
    gateway: GatewayProcess, dispatch_creds: Credentials, version: MQTTProtocolVersion
) -> None:
    unit = f"TRK-WILL-{int(version)}"
    creds = gateway.enroll_unit(unit)
    will = (f"fleet/{unit}/state", b'{"online": false, "reason": "connection lost"}', 1, True)
    dispatch = Paho(gateway.mqtt_port, dispatch_creds, version=V5)
    assert dispatch.connect()[0] == 0
    assert dispatch.subscribe("fleet/+/control/#", 1) == [1]
    assert dispatch.subscribe(f"fleet/{unit}/state", 1) == [1]
    truck = connect_truck(gateway, creds, version, will=will)
    round_trip(dispatch, truck, unit, 1)

    assert gateway.cli("quarantine", unit, "--reason", "suspected tampering").code == 0
    mode = next_on(truck, f"fleet/{unit}/cmd/mode")
    assert b"diagnostic-only" in mode.payload
    round_trip(dispatch, truck, unit, 2)  # the live session keeps control

    truck.drop()  # coverage lost: the will fires while the unit is quarantined ...
    denied = wait_for_audit(gateway, action="mqtt.will", actor=f"unit/{unit}")
    assert (denied["outcome"], denied["reason"], denied["subject"]) == ("denied", "quarantined", will[0])
    assert [m for m in dispatch.quiet(0.5) if m.topic == will[0]] == []  # ... and is dropped

    back = connect_truck(gateway, creds, version, will=will)  # the same will, as every reconnect has
    assert b"diagnostic-only" in next_on(back, f"fleet/{unit}/cmd/mode").payload  # retained
    round_trip(dispatch, back, unit, 3)
    back.disconnect()
    dispatch.disconnect()


# --- (b) a flood: rate limit, throttle, quarantine, and never a disconnect ---------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_a_flooding_unit_is_throttled_then_quarantined_never_cut_and_control_flows(
    gateway: GatewayProcess, dispatch_creds: Credentials, version: MQTTProtocolVersion
) -> None:
    unit = f"TRK-FLOOD-{int(version)}"
    creds = gateway.enroll_unit(unit)
    dispatch = Paho(gateway.mqtt_port, dispatch_creds, version=V5)
    assert dispatch.connect()[0] == 0
    assert dispatch.subscribe(f"fleet/{unit}/control/#", 1) == [1]
    truck = connect_truck(gateway, creds, version)
    round_trip(dispatch, truck, unit, 0)

    sent: list[bytes] = []  # control messages dispatch published
    delivered: list[bytes] = []  # what the truck received on its control topic
    acks: list[bytes] = []  # what dispatch received on the ack topic
    quarantined_at: float | None = None
    started = time.monotonic()
    next_control = started
    while time.monotonic() - started < 40:
        if not truck.disconnects.empty():
            raise AssertionError(f"the gateway cut the flooding truck ({truck.disconnects.get():#x})")
        for _ in range(20):  # ~1000 messages a second, paced so paho's queue does not hide a cut
            truck.client.publish(f"fleet/{unit}/telemetry/engine", b'{"rpm": 9000}', qos=0)
        time.sleep(0.02)
        now = time.monotonic()
        if now >= next_control:  # dispatch keeps steering the truck, five times a second
            sent.append(control_payload(len(sent) + 1))
            dispatch.client.publish(control(unit), sent[-1], qos=1)
            next_control = now + 0.2
        for message in drain(truck):
            if message.topic == control(unit):
                delivered.append(message.payload)
                truck.client.publish(ack(unit), ack_payload(len(delivered)), qos=1)
            elif message.topic.endswith("/cmd/mode") and b"diagnostic-only" in message.payload:
                quarantined_at = quarantined_at or now
        acks += [m.payload for m in drain(dispatch) if m.topic == ack(unit)]
        if quarantined_at is not None and now - quarantined_at > 2:
            break  # and the flood went on for two seconds in quarantine
    assert quarantined_at is not None, f"never quarantined:\n{gateway.log()[-3000:]}"
    deadline = time.monotonic() + 15  # the flood is over: what is in flight arrives
    while (len(delivered) < len(sent) or len(acks) < len(sent)) and time.monotonic() < deadline:
        for message in drain(truck):
            if message.topic == control(unit):
                delivered.append(message.payload)
                truck.client.publish(ack(unit), ack_payload(len(delivered)), qos=1)
        acks += [m.payload for m in drain(dispatch) if m.topic == ack(unit)]
        time.sleep(0.05)
    assert delivered == sent  # every control message, byte for byte, in order, exactly once
    assert acks == [ack_payload(n) for n in range(1, len(sent) + 1)]  # and every ack back
    assert truck.disconnects.empty()  # never cut: not for the rate, the throttle or the quarantine

    records = [r for r in audit(gateway) if r["subject"] == f"unit/{unit}"]
    fired = [r for r in records if r["action"] == "detector.fired" and r["actor"] == "detector/publish_rate"]
    steps = [r["details"]["response"] for r in fired]
    assert steps[:3] == ["alert", "throttle", "quarantine"], records
    assert not [r for r in records if r["action"] == "session.disconnect"]
    assert metric(gateway, "decisions", kind="publish", verdict="deny", reason="throttled") > 0
    round_trip(dispatch, truck, unit, 10_000)  # and after it all
    truck.disconnect()
    dispatch.disconnect()


# --- (c) steady at the permitted rate: nothing is denied, nothing fires -----------------------------

FULL = os.environ.get("FLEETGATE_STEADY_FULL") == "1"
DURATIONS = [
    pytest.param(20.0, id="20s"),
    pytest.param(
        300.0,
        id="300s",
        marks=[
            pytest.mark.skipif(not FULL, reason="5 minutes: run with FLEETGATE_STEADY_FULL=1"),
            pytest.mark.timeout(420),
        ],
    ),
]


@pytest.fixture
def quiet_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway of its own: its counters and audit log hold only this test's traffic."""
    gw = GatewayProcess(tmp_path)
    gw.init()
    gw.start()
    yield gw
    gw.stop()


def gps_fix(n: int, at: float) -> bytes:
    # 20 fixes a second, 1.4 m apart: a truck at 100 km/h near Rotterdam
    return json.dumps({"lat": 51.95, "lon": 4.14 + n * 2e-5, "ts": round(at, 3)}).encode()


@pytest.mark.slow
@pytest.mark.parametrize("seconds", DURATIONS)
def test_a_unit_steady_at_its_permitted_rate_is_never_denied_and_fires_nothing(
    quiet_gateway: GatewayProcess, seconds: float
) -> None:
    gw = quiet_gateway
    rate = 20.0  # roles.unit.limits.messages_per_second in the shipped policy
    dispatch = Paho(gw.mqtt_port, gw.issue("service", "dispatch"), version=V5)
    assert dispatch.connect()[0] == 0
    assert dispatch.subscribe("fleet/+/telemetry/#", 1) == [1]
    trucks = {}
    for version, unit in ((V311, "TRK-STEADY-4"), (V5, "TRK-STEADY-5")):
        trucks[unit] = connect_truck(gw, gw.enroll_unit(unit), version)
    published = dict.fromkeys(trucks, 0)
    refused: list[tuple[str, int]] = []
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = start + n / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        elif time.monotonic() - due > 1.0:  # fell behind (a busy machine): never catch up in a burst
            start = time.monotonic() - n / rate
        for unit, truck in trucks.items():
            topic = f"fleet/{unit}/telemetry/{'gps' if n % 2 == 0 else 'engine'}"
            payload = gps_fix(n, time.time()) if n % 2 == 0 else b'{"rpm": 1400}'
            code = truck.publish(topic, payload, qos=1)
            published[unit] += 1
            if code:
                refused.append((unit, code))
        n += 1
    time.sleep(1.0)  # two event ticks: detectors see the last window
    heard = dispatch.quiet(1.0)
    by_unit = {unit: sum(1 for m in heard if m.topic.startswith(f"fleet/{unit}/")) for unit in trucks}
    denied = sum(
        metric(gw, "decisions", kind="publish", verdict="deny", reason=reason)
        for reason in ("rate_limited", "throttled", "quarantined", "topic_outside_namespace")
    )
    firings = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text(gw).splitlines()
        if line.startswith("fleetgate_detector_firings_total{")
    )
    fired = [r for r in audit(gw) if r["action"] == "detector.fired"]
    rates = {unit: round(count / elapsed, 2) for unit, count in published.items()}
    print(
        f"\nsteady {seconds:g} s: published {published} ({rates} msg/s), delivered {by_unit}, "
        f"PUBACK refusals {len(refused)}, denials {denied:g}, detector firings {firings:g}"
    )
    assert all(r >= rate * 0.9 for r in rates.values()), rates  # it really was steady near the limit
    assert refused == [] and denied == 0
    assert by_unit == published  # every message reached dispatch
    assert firings == 0 and fired == []
    for truck in trucks.values():
        assert truck.disconnects.empty()
        truck.disconnect()
    dispatch.disconnect()


# --- the violation limit follows a SIGHUP ---------------------------------------------------------


def test_the_violation_limit_follows_a_sighup_reload(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    shipped = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    policy_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"policy_file: {policy_path}\n", encoding="utf-8")
    gw = GatewayProcess(tmp_path / "gw", extra_args=("--config", str(config)))
    gw.init()
    gw.start()
    try:
        truck = Paho(gw.mqtt_port, gw.enroll_unit("TRK-PROBE"), version=V5)
        assert truck.connect()[0] == 0
        for n in range(3):
            assert truck.publish(f"fleet/TRK-{n}/cmd/unlock", b"open", qos=1) == 0x87
        data["violations"]["max_denied_before_disconnect"] = 3
        policy_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        wait_for_audit(gw, action="policy.reload", outcome="ok")
        assert truck.disconnects.empty()
        truck.client.publish("fleet/TRK-3/cmd/unlock", b"open", qos=1)  # the 4th, on the same connection
        assert truck.disconnects.get(timeout=5) == 0x87  # cut at the reloaded limit, not at 20
    finally:
        gw.stop()
