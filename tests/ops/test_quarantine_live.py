"""Diagnostic-only quarantine on live sessions, with real mTLS clients (paho 3.1.1 and 5.0).

Two units, one quarantined through the admin API (in-process) and one with the CLI acting on the
data dir (another process; the gateway's registry watcher picks it up). Throughout, a dispatch
service and the units exchange control messages; at the end, what each side received on control
topics must be exactly what was sent — same bytes, same QoS, same order, nothing added.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.clients import V5, V311
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import api, issue_operator, metric
from tests.ops.watch import Watch, message_is, payload_is, topic_is

NOT_AUTHORIZED = 0x87
Q5, Q311 = "TRK-Q5", "TRK-Q311"


@dataclass
class Fleet:
    gw: GatewayProcess
    creds: dict[str, Credentials]
    units: dict[str, Watch]
    dispatch: Watch
    analytics: Watch
    ops: Watch
    sent_control: dict[str, list[tuple[str, bytes, int]]] = field(default_factory=dict)
    unit_control: dict[str, list[tuple[str, bytes, int]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def connect_unit(self, unit: str) -> Watch:
        version = V311 if unit == Q311 else V5
        watch = Watch(
            self.gw, self.creds[unit], f"fleet/{unit}/cmd/#", f"fleet/{unit}/control/#", version=version
        )
        self.units[unit] = watch
        return watch

    def reconnect_unit(self, unit: str) -> Watch:
        old = self.units[unit]
        old.settle(0.2)
        self.unit_control.setdefault(unit, []).extend(old.on(f"fleet/{unit}/control/"))
        old.close()
        return self.connect_unit(unit)

    def control_round(self, tag: str) -> None:
        """dispatch → unit command, unit → dispatch ack, for each unit; each waits for the other side."""
        for unit, watch in self.units.items():
            cmd = (f"fleet/{unit}/control/brake", b"\x00\xffcmd-" + tag.encode() + b"\x00", 1)
            ack = (f"fleet/{unit}/control/brake/ack", b"ack-" + tag.encode(), 1)
            assert self.dispatch.client.publish(cmd[0], cmd[1], qos=1) == 0
            watch.wait_for(message_is(cmd[0], cmd[1]))
            assert watch.client.publish(ack[0], ack[1], qos=1) == 0
            self.dispatch.wait_for(message_is(ack[0], ack[1]))
            self.sent_control.setdefault(unit, []).extend([cmd, ack])

    def telemetry(self, unit: str, payload: bytes) -> int:
        return self.units[unit].client.publish(f"fleet/{unit}/telemetry/gps", payload, qos=1)


@pytest.fixture(scope="module")
def fleet(gateway: GatewayProcess) -> Iterator[Fleet]:
    creds = {unit: gateway.enroll_unit(unit) for unit in (Q5, Q311)}
    creds["ops"] = issue_operator(gateway, "ops1", "ops")  # releasing needs a second factor
    dispatch = Watch(gateway, gateway.issue("service", "dispatch"), "fleet/+/control/#")
    analytics = Watch(gateway, gateway.issue("service", "analytics"), "fleet/+/telemetry/#")
    ops = Watch(gateway, creds["ops"], "fleet/+/diag/#", "fleet/+/cmd/#")
    fleet = Fleet(gateway, creds, {}, dispatch, analytics, ops)
    for unit in (Q5, Q311):
        fleet.connect_unit(unit)
    yield fleet
    for watch in (*fleet.units.values(), dispatch, analytics, ops):
        watch.close()


def mode_of(watch: Watch, unit: str, mode: str) -> dict[str, object]:
    message = watch.wait_for(
        lambda m: m.topic == f"fleet/{unit}/cmd/mode" and json.loads(m.payload)["mode"] == mode
    )
    body: dict[str, object] = json.loads(message.payload)
    return body


def quarantined_denials(gw: GatewayProcess) -> float:
    return metric(gw, "decisions", kind="publish", verdict="deny", reason="quarantined")


def test_1_before_quarantine_everything_flows(fleet: Fleet) -> None:
    for unit in (Q5, Q311):
        assert fleet.telemetry(unit, b"before-" + unit.encode()) == 0
        fleet.analytics.wait_for(payload_is(b"before-" + unit.encode()))
    fleet.control_round("normal")


def test_2_quarantine_over_the_api_takes_effect_on_the_live_session_at_once(fleet: Fleet) -> None:
    started = time.monotonic()
    status, body = api(
        fleet.gw, fleet.creds["ops"], "POST", f"/api/units/{Q5}/quarantine", {"reason": "tamper alarm"}
    )
    assert status == 200, body
    assert (body["changed"], body["state"]) == (True, "quarantined")
    # A 5.0 unit learns of each dropped publish from its PUBACK (0x87): the first one after the call.
    assert fleet.telemetry(Q5, b"after-api") == NOT_AUTHORIZED
    fleet.timings["api"] = time.monotonic() - started
    assert fleet.timings["api"] < 1.0
    mode = mode_of(fleet.units[Q5], Q5, "diagnostic-only")
    assert mode["reason"] == "tamper alarm" and mode["by"] == "operator/ops1" and mode["since"]
    assert mode["allowed"] == [f"fleet/{Q5}/diag/#", f"fleet/{Q5}/cmd/+/ack"]


def test_3_quarantine_from_the_cli_reaches_the_running_gateway_within_a_second(fleet: Fleet) -> None:
    before = quarantined_denials(fleet.gw)
    launched = time.monotonic()
    result = fleet.gw.cli("quarantine", Q311, "--reason", "odd CAN traffic")  # local: no --server
    assert result.code == 0, result.stderr
    done = time.monotonic()  # durable from here; the gateway's watcher applies it
    sent = 0
    # 3.1.1 cannot be told: count the drops, and stop at the first (each counts as a violation)
    while quarantined_denials(fleet.gw) == before:
        assert time.monotonic() - done < 2, "the CLI quarantine did not reach the live session"
        fleet.telemetry(Q311, f"probe-{sent}".encode())
        sent += 1
        time.sleep(0.02)
    fleet.timings["cli"] = time.monotonic() - done
    fleet.timings["cli_total"] = time.monotonic() - launched
    assert fleet.timings["cli"] < 1.0
    mode = mode_of(fleet.units[Q311], Q311, "diagnostic-only")
    assert mode["reason"] == "odd CAN traffic" and str(mode["by"]).startswith("local/")


def test_4_quarantined_units_publish_only_diagnostics_and_cmd_acks(fleet: Fleet) -> None:
    gw = fleet.gw
    before, dropped = quarantined_denials(gw), metric(gw, "drops", reason="publish_denied")
    assert fleet.telemetry(Q5, b"dropped-5") == NOT_AUTHORIZED
    assert fleet.telemetry(Q311, b"dropped-311") == 0  # 3.1.1 has no way to say no (§3.3.5)
    for unit in (Q5, Q311):
        watch = fleet.units[unit]
        assert watch.client.publish(f"fleet/{unit}/diag/dtc", b"P0420", qos=1) == 0
        fleet.ops.wait_for(topic_is(f"fleet/{unit}/diag/dtc"))
        assert watch.client.publish(f"fleet/{unit}/cmd/mode/ack", b'{"status":"applied"}', qos=1) == 0
        fleet.ops.wait_for(topic_is(f"fleet/{unit}/cmd/mode/ack"))
    analytics = fleet.analytics.settle(0.4)
    leaked = [m.payload for m in analytics if m.payload.startswith((b"after", b"dropped"))]
    assert leaked == []  # their data stopped flowing
    assert quarantined_denials(gw) >= before + 2
    assert metric(gw, "drops", reason="publish_denied") >= dropped + 2
    fleet.control_round("quarantined")


def test_5_the_mode_command_is_retained_for_a_reconnecting_unit(fleet: Fleet) -> None:
    for unit in (Q5, Q311):
        watch = fleet.reconnect_unit(unit)
        message = watch.wait_for(topic_is(f"fleet/{unit}/cmd/mode"))
        assert message.retain and message.qos == 1
        assert json.loads(message.payload)["mode"] == "diagnostic-only"
        assert fleet.telemetry(unit, b"after-reconnect") == (NOT_AUTHORIZED if unit == Q5 else 0)
    fleet.control_round("reconnected")


def test_6_release_restores_telemetry_and_says_normal(fleet: Fleet) -> None:
    status, body = api(fleet.gw, fleet.creds["ops"], "POST", f"/api/units/{Q5}/release")
    assert status == 200 and body["state"] == "enrolled", body
    result = fleet.gw.cli("release", Q311)
    assert result.code == 0, result.stderr
    for unit in (Q5, Q311):
        mode = mode_of(fleet.units[unit], unit, "normal")
        assert mode["since"] and mode["by"]
        assert fleet.telemetry(unit, b"released-" + unit.encode()) == 0
        fleet.analytics.wait_for(payload_is(b"released-" + unit.encode()))
    fleet.control_round("released")


def test_7_control_traffic_was_untouched_throughout(fleet: Fleet) -> None:
    """Byte-identical, same QoS, same order, nothing extra — on the unit's side and on dispatch's."""
    fleet.dispatch.settle(0.3)
    for unit in (Q5, Q311):
        watch = fleet.units[unit]
        watch.settle(0.2)
        got = fleet.unit_control.get(unit, []) + watch.on(f"fleet/{unit}/control/")
        assert got == fleet.sent_control[unit]
        assert fleet.dispatch.on(f"fleet/{unit}/control/") == fleet.sent_control[unit]
        assert len(fleet.sent_control[unit]) == 8  # four rounds, command + ack each
    ms = {k: round(v * 1000) for k, v in fleet.timings.items()}
    print(
        f"\ntime to first dropped telemetry (ms): API call {ms['api']}, after the CLI returned {ms['cli']}"
        f" (CLI launch to drop {ms['cli_total']})"
    )
