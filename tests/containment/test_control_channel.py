"""The containment promise, case by case, with the shipped policy, the real engine and the real broker.

A unit in good standing keeps its control channel — control subscriptions, deliveries and acks —
through every containment path: quarantine, rate limits, detector throttles, reconnects with its
will, policy reloads. Only a revoke, a partner cut or a ladder step named `disconnect` ends it.
Each test ends with a control round trip (tests/containment/world.py) checked byte for byte.
"""

from __future__ import annotations

import pytest

from gateway.broker import WillDropped
from gateway.mqtt.packets import ProtocolVersion, Will
from tests.broker.lab import VERSIONS
from tests.containment.world import Fleet, shipped_policy_with, state_topic

GPS = "fleet/TRK-1/telemetry/gps"


def own_will(unit: str = "TRK-1") -> Will:
    """The reference device's will: its presence topic, QoS 1, retained."""
    return Will(state_topic(unit), b'{"online": false, "reason": "connection lost"}', 1, True)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_quarantined_unit_reconnects_with_its_will_and_keeps_control(version: ProtocolVersion) -> None:
    fleet = Fleet()
    link = fleet.connect_unit("TRK-1", version=version, will=own_will())
    assert fleet.control_round_trip("TRK-1", link, 1).intact("TRK-1")
    fleet.quarantine("TRK-1")
    link.lose()  # coverage lost: the will fires while the unit is quarantined ...
    assert fleet.states_heard() == []  # ... and is not published (state is not a quarantine topic)
    dropped = [e for e in fleet.lab.broker.drain_events() if isinstance(e, WillDropped)]
    assert [(e.topic, e.reason) for e in dropped] == [("fleet/TRK-1/state", "quarantined")]
    back = fleet.connect_unit("TRK-1", version=version, will=own_will())  # the same will, as always
    assert back.connack.reason_code == 0 and back.closed is None
    assert fleet.control_round_trip("TRK-1", back, 2).intact("TRK-1")
    fleet.release("TRK-1")
    back.lose()
    assert fleet.states_heard() == [("fleet/TRK-1/state", own_will().payload)]  # released: heard again


@pytest.mark.parametrize("version", VERSIONS)
def test_a_will_on_another_units_topic_is_accepted_but_never_delivered(version: ProtocolVersion) -> None:
    fleet = Fleet()
    forged = Will(state_topic("TRK-2"), b'{"online": false}', 1, True)
    link = fleet.connect_unit("TRK-1", version=version, will=forged)
    assert link.connack.reason_code == 0
    assert fleet.control_round_trip("TRK-1", link, 1).intact("TRK-1")
    link.lose()
    assert fleet.states_heard() == []
    late = fleet.lab.connect("alice", peer=fleet.operator.link.peer)  # not retained either
    late.subscribe("fleet/+/state")
    assert late.messages == []
    dropped = [e for e in fleet.lab.broker.drain_events() if isinstance(e, WillDropped)]
    assert [(e.client_id, e.topic, e.reason) for e in dropped] == [
        ("TRK-1", "fleet/TRK-2/state", "topic_outside_namespace")
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1])
def test_a_flood_is_slowed_throttled_and_quarantined_but_never_cut(
    version: ProtocolVersion, qos: int
) -> None:
    fleet = Fleet()
    link = fleet.connect_unit("TRK-1", version=version)
    fleet.flood(link, GPS, 500, qos)  # 5x the burst, at once: 400 rate-limited, more than 20 violations
    assert fleet.decided("publish", "deny", "rate_limited") == 400
    assert link.closed is None
    assert fleet.control_round_trip("TRK-1", link, 1).intact("TRK-1")  # acks are not starved by it
    assert fleet.throttle("TRK-1", 0.1, 300)  # the detector's second step
    fleet.advance(10)
    fleet.flood(link, GPS, 500, qos)
    assert fleet.decided("publish", "deny", "throttled") >= 490
    assert link.closed is None
    assert fleet.control_round_trip("TRK-1", link, 2).intact("TRK-1")  # control is never throttled
    fleet.quarantine("TRK-1")  # the third step
    fleet.flood(link, GPS, 500, qos)
    assert fleet.decided("publish", "deny", "quarantined") == 500
    assert link.closed is None
    assert fleet.control_round_trip("TRK-1", link, 3).intact("TRK-1")


@pytest.mark.parametrize("version", VERSIONS)
def test_probing_other_units_is_still_a_violation(version: ProtocolVersion) -> None:
    fleet = Fleet()
    link = fleet.connect_unit("TRK-1", version=version)
    for n in range(19):
        link.publish(f"fleet/TRK-{100 + n}/cmd/unlock", b"open", qos=1)
    assert link.closed is None
    link.publish("fleet/TRK-200/cmd/unlock", b"open", qos=1)
    assert link.closed == "too_many_violations"  # violations.max_denied_before_disconnect: 20


def test_the_violation_limit_follows_a_policy_reload() -> None:
    fleet = Fleet()
    link = fleet.connect_unit("TRK-1")
    fleet.reload(shipped_policy_with(max_denied=3))
    link.publish("fleet/TRK-2/cmd/unlock", b"open", qos=1)
    link.publish("fleet/TRK-2/cmd/unlock", b"open", qos=1)
    assert link.closed is None
    link.publish("fleet/TRK-2/cmd/unlock", b"open", qos=1)
    assert link.closed == "too_many_violations"
    fleet.reload(shipped_policy_with(max_denied=50))
    patient = fleet.connect_unit("TRK-2")
    for n in range(49):
        patient.publish(f"fleet/TRK-{100 + n}/cmd/unlock", b"open", qos=1)
    assert patient.closed is None
    assert fleet.control_round_trip("TRK-2", patient, 1).intact("TRK-2")
