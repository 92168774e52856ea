"""A session belongs to the identity that made it: nobody else takes it over, resumes it or ends it.

Client ids are bare ids, so a partner, operator or service whose id equals a unit's (a registry from
before ids were unique across kinds), or a lab client (any client id, no certificate), can name the
unit's client id. Such a CONNECT is refused (5.0 0x85 / 3.1.1 0x02) and the unit notices nothing: it
is not disconnected, and its persistent session keeps its subscriptions and queued messages.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.broker import ConnectRefused, InMemoryStore, SessionDiscarded, SessionTakenOver
from gateway.broker.records import SessionRecord
from gateway.mqtt.packets import Properties, ProtocolVersion
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.peer import Peer
from pki.names import Identity
from tests.broker.lab import T0, TRUST_DOMAIN, V5, VERSIONS, Lab, Link, lab_peer, service_peer, unit_peer

UNIT = "TRK-1"
WIRE_CODE = {V5: 0x85, ProtocolVersion.MQTT_3_1_1: 0x02}


def partner_peer(ident: str) -> Peer:
    return Peer("203.0.113.9:4000", Identity("partner", ident, TRUST_DOMAIN), certificate_serial=77)


INTRUDERS = {
    "partner": lambda: partner_peer("TRK-1"),
    "service": lambda: service_peer("TRK-1"),
    "lab": lambda: lab_peer("127.0.0.1:5555"),
}


def persistent(version: ProtocolVersion) -> dict[str, Any]:
    props = Properties(session_expiry_interval=3600) if version == V5 else Properties()
    return {"version": version, "clean_start": False, "properties": props}


def refused_as_in_use(lab: Lab, link: Link, version: ProtocolVersion) -> None:
    assert link.closed == "connect_refused"
    assert link.received[3] == WIRE_CODE[version]
    events = lab.broker.drain_events()
    (refused,) = [e for e in events if isinstance(e, ConnectRefused)]
    # A lab client is refused earlier still: its client id must start with "lab-" (the lab role).
    expected = (
        ("client_id_not_lab", "builtin/lab_role")
        if link.peer.identity is None
        else ("client_id_in_use", "builtin/session_owner")
    )
    assert (refused.reason, refused.rule) == expected
    assert refused.peer == link.peer  # audited against who tried, not against the unit
    assert not [e for e in events if isinstance(e, SessionTakenOver | SessionDiscarded)]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", sorted(INTRUDERS))
@pytest.mark.parametrize("clean", [True, False])
def test_another_identity_cannot_take_over_a_live_unit(
    version: ProtocolVersion, who: str, clean: bool
) -> None:
    lab = Lab()
    unit = lab.connect("TRK-1", **persistent(version))
    unit.subscribe("fleet/TRK-1/control/#", qos=1)
    lab.broker.drain_events()
    intruder = lab.connect("TRK-1", version=version, clean_start=clean, peer=INTRUDERS[who]())
    refused_as_in_use(lab, intruder, version)
    assert unit.closed is None and unit.disconnect is None
    lab.connect("dispatch", peer=service_peer("dispatch")).publish("fleet/TRK-1/control/brake", b"b1", qos=1)
    assert unit.payloads == [b"b1"]
    assert lab.broker.metrics.takeovers == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", sorted(INTRUDERS))
@pytest.mark.parametrize("clean", [True, False])
def test_another_identity_cannot_discard_an_offline_unit_session(
    version: ProtocolVersion, who: str, clean: bool
) -> None:
    lab = Lab()
    unit = lab.connect("TRK-1", **persistent(version))
    unit.subscribe("fleet/TRK-1/control/#", qos=1)
    unit.lose()
    dispatch = lab.connect("dispatch", peer=service_peer("dispatch"))
    dispatch.publish("fleet/TRK-1/control/brake", b"queued-while-offline", qos=1)
    lab.broker.drain_events()
    intruder = lab.connect("TRK-1", version=version, clean_start=clean, peer=INTRUDERS[who]())
    refused_as_in_use(lab, intruder, version)
    back = lab.connect("TRK-1", **persistent(version))
    assert back.connack.session_present
    assert back.payloads == [b"queued-while-offline"]


def test_the_same_identity_still_takes_its_session_over() -> None:
    lab = Lab()
    old = lab.connect("TRK-1", **persistent(V5), peer=unit_peer("TRK-1", address="10.0.0.1:1"))
    old.subscribe("fleet/TRK-1/control/#", qos=1)
    new = lab.connect("TRK-1", **persistent(V5), peer=unit_peer("TRK-1", serial=2, address="10.0.0.2:2"))
    assert new.connack.reason_code == 0 and new.connack.session_present
    assert old.disconnect is not None and old.disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER


@pytest.mark.parametrize("version", VERSIONS)
def test_a_lab_client_never_holds_a_units_client_id(version: ProtocolVersion) -> None:
    lab = Lab()
    squatter = lab.connect("TRK-1", **persistent(version), peer=lab_peer())
    assert squatter.closed == "connect_refused"  # lab ids start with "lab-": it never gets TRK-1
    lab.broker.drain_events()
    unit = lab.connect("TRK-1", **persistent(version))
    assert unit.connack.reason_code == 0 and not unit.connack.session_present
    assert not [e for e in lab.broker.drain_events() if isinstance(e, SessionDiscarded)]


def test_an_expired_session_is_no_ones() -> None:
    lab = Lab()
    unit = lab.connect("TRK-1", clean_start=False, properties=Properties(session_expiry_interval=60))
    unit.lose()
    lab.now += 61  # expired, and the tick has not run yet
    other = lab.connect("TRK-1", peer=partner_peer("TRK-1"))
    assert other.connack.reason_code == 0  # the broker floor alone; the engine refuses it (test_engine)


def test_a_stored_session_whose_owner_does_not_parse_gives_way_to_the_unit_only() -> None:
    store = InMemoryStore()
    store.save_session(SessionRecord(UNIT, "not a spiffe uri", 3600, T0, ()))
    store.commit()
    lab = Lab(store=store)
    lab_client = lab.connect(UNIT, **persistent(V5), peer=lab_peer())
    assert lab_client.closed == "connect_refused"  # no identity: it never gets a session to itself
    unit = lab.connect(UNIT, **persistent(V5))
    assert unit.connack.reason_code == 0 and not unit.connack.session_present
