"""CONNECT: acceptance, refusal, CONNACK properties, takeover, timeouts (both protocol versions)."""

from __future__ import annotations

import pytest

from gateway.broker import BrokerLimits, ClientConnected, ConnectRefused, SessionTakenOver, WillDropped
from gateway.mqtt.client import MqttClient
from gateway.mqtt.packets import Connack, Properties, ProtocolVersion, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.access import CertificateOnlyPolicy
from gateway.policy.decision import Decision, allow, deny
from gateway.policy.peer import Peer
from tests.broker.lab import V5, V311, VERSIONS, Lab, lab_peer, unit_peer


@pytest.mark.parametrize("version", VERSIONS)
def test_unit_connects_with_its_own_id(version: ProtocolVersion) -> None:
    lab = Lab()
    link = lab.connect("TRK-00042", version=version)
    assert link.connack.reason_code == 0 and not link.connack.session_present
    assert link.closed is None
    (event,) = [e for e in lab.broker.drain_events() if isinstance(e, ClientConnected)]
    assert event.client_id == "TRK-00042" and event.protocol_version == version
    assert lab.broker.metrics.connects_accepted == 1


@pytest.mark.parametrize(("version", "wire_code"), [(V5, 0x85), (V311, 0x02)])
def test_client_id_not_matching_the_certificate_is_refused(version: ProtocolVersion, wire_code: int) -> None:
    lab = Lab(CertificateOnlyPolicy())
    link = lab.connect("TRK-99999", version=version, peer=unit_peer("TRK-00042"))
    assert link.closed == "connect_refused"
    assert link.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID  # the client core maps 3.1.1
    assert link.received[3] == wire_code  # the byte on the wire: CONNACK return/reason code
    (refused,) = [e for e in lab.broker.drain_events() if isinstance(e, ConnectRefused)]
    assert refused.reason == "client_id_mismatch" and refused.rule == "builtin/client_id_binding"
    assert lab.broker.metrics.connects_refused["client_id_mismatch"] == 1


class DenyAll(CertificateOnlyPolicy):
    def decide_connect(self, peer: Peer, connect: object, now: float) -> Decision:  # type: ignore[override]
        return deny("identity_revoked", "registry/state")


@pytest.mark.parametrize(("version", "wire_code"), [(V5, 0x87), (V311, 0x05)])
def test_other_connect_denials_are_not_authorized(version: ProtocolVersion, wire_code: int) -> None:
    lab = Lab(DenyAll())
    link = lab.connect("TRK-1", version=version)
    assert link.closed == "connect_refused"
    assert link.received[3] == wire_code


@pytest.mark.parametrize(("version", "clean"), [(V5, True), (V311, True), (V311, False)])
def test_empty_client_id_is_refused_by_default(version: ProtocolVersion, clean: bool) -> None:
    lab = Lab()
    link = lab.connect("", version=version, clean_start=clean, peer=lab_peer())
    assert link.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    assert link.closed == "connect_refused"


def test_server_assigned_id_on_the_lab_listener() -> None:
    lab = Lab(allow_server_assigned_ids=True)
    link = lab.connect("", peer=lab_peer())
    assigned = link.connack.properties.assigned_client_identifier
    assert link.connack.reason_code == 0 and assigned
    other = lab.connect("", peer=lab_peer())
    assert other.connack.properties.assigned_client_identifier not in (None, assigned)
    # 3.1.1 with clean session 0 and no id is refused even there (§3.1.3.1).
    old = lab.connect("", version=V311, clean_start=False, peer=lab_peer())
    assert old.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID


def test_connack_properties_of_a_5_0_connection() -> None:
    limits = BrokerLimits(
        receive_maximum=50,
        max_packet_size=4096,
        max_topic_alias=8,
        max_keep_alive=300,
        max_session_expiry=3600,
    )
    lab = Lab(limits=limits)
    props = Properties(session_expiry_interval=0xFFFFFFFF)
    p = lab.connect("TRK-1", keep_alive=0, clean_start=False, properties=props).connack.properties
    assert (p.receive_maximum, p.maximum_packet_size, p.topic_alias_maximum) == (50, 4096, 8)
    assert (p.retain_available, p.wildcard_subscription_available) == (1, 1)
    assert (p.subscription_identifier_available, p.shared_subscription_available) == (1, 1)
    assert p.maximum_qos is None  # absent = 2
    assert p.server_keep_alive == 300  # keep alive 0 is not allowed to mean "forever"
    assert p.session_expiry_interval == 3600  # "never" capped and said so
    q = lab.connect("TRK-2", keep_alive=60).connack.properties
    assert q.server_keep_alive is None and q.session_expiry_interval is None


def test_enhanced_authentication_is_refused() -> None:
    lab = Lab()
    link = lab.connect("TRK-1", properties=Properties(authentication_method="SCRAM-SHA-1"))
    assert link.connack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert link.closed == "connect_refused"


class NoWillPolicy(CertificateOnlyPolicy):
    """Publishing under elsewhere/ is forbidden; wills are judged by decide_publish (the floor's way)."""

    def decide_publish(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        return (
            deny("topic_outside_namespace", "unit/publish/1") if topic.startswith("elsewhere/") else allow()
        )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_forbidden_will_is_no_reason_to_refuse_the_connect(version: ProtocolVersion) -> None:
    """The will is judged when it fires, never at CONNECT: the session (and whatever it subscribes,
    vehicle control included) is accepted; the forbidden will is dropped, counted and reported."""
    lab = Lab(NoWillPolicy())
    watcher = lab.connect("ops-1")
    watcher.subscribe("elsewhere/#", "fleet/#")
    link = lab.connect("TRK-1", version=version, will=Will("elsewhere/x", b"bye", 1, True))
    assert link.connack.reason_code == 0 and link.closed is None
    assert not [e for e in lab.broker.drain_events() if isinstance(e, ConnectRefused)]
    link.lose()
    assert watcher.messages == []  # never delivered ...
    (dropped,) = [e for e in lab.broker.drain_events() if isinstance(e, WillDropped)]
    assert (dropped.client_id, dropped.topic) == ("TRK-1", "elsewhere/x")  # ... and reported
    assert (dropped.reason, dropped.rule) == ("topic_outside_namespace", "unit/publish/1")
    assert lab.broker.metrics.drops["will_denied"] == 1
    assert lab.broker.metrics.decisions[("will", "deny", "topic_outside_namespace")] == 1
    late = lab.connect("ops-2")  # and not retained either
    late.subscribe("elsewhere/#")
    assert late.messages == []
    ok = lab.connect("TRK-2", version=version, will=Will("fleet/TRK-2/state", b"offline"))
    ok.lose()
    assert watcher.payloads == [b"offline"]


@pytest.mark.parametrize(("version", "wire_code"), [(V5, 0x90), (V311, 0x05)])
def test_a_will_with_an_invalid_topic_refuses_the_connect(version: ProtocolVersion, wire_code: int) -> None:
    """Protocol validity is still judged at CONNECT: a will topic with a wildcard is no topic at all."""
    lab = Lab()
    link = lab.connect("TRK-1", version=version, will=Will("fleet/+/state", b"bye"))
    assert link.closed == "connect_refused" and link.received[3] == wire_code
    (refused,) = [e for e in lab.broker.drain_events() if isinstance(e, ConnectRefused)]
    assert refused.reason == "will_topic_invalid"


@pytest.mark.parametrize("version", VERSIONS)
def test_takeover_closes_the_old_connection(version: ProtocolVersion) -> None:
    lab = Lab()
    old = lab.connect("TRK-1", version=version, peer=unit_peer("TRK-1", address="10.0.0.1:1"))
    new = lab.connect("TRK-1", version=version, peer=unit_peer("TRK-1", address="10.9.9.9:2"))
    assert new.connack.reason_code == 0 and new.closed is None
    assert old.closed == "session_taken_over"
    if version == V5:
        assert old.disconnect is not None and old.disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER
    else:
        assert old.disconnect is None  # 3.1.1 servers cannot say why
    (taken,) = [e for e in lab.broker.drain_events() if isinstance(e, SessionTakenOver)]
    assert taken.old_peer.address == "10.0.0.1:1" and taken.new_peer.address == "10.9.9.9:2"
    assert lab.broker.metrics.takeovers == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_must_arrive_in_time(version: ProtocolVersion) -> None:
    lab = Lab(limits=BrokerLimits(connect_timeout=5.0))
    link = lab.open(MqttClient("TRK-1", version=version), unit_peer("TRK-1"))
    assert lab.broker.next_deadline() == lab.now + 5.0
    lab.advance(4.9)
    assert link.closed is None
    lab.advance(0.2)
    assert link.closed == "connect_timeout" and not link.received


@pytest.mark.parametrize("version", VERSIONS)
def test_keep_alive_timeout(version: ProtocolVersion) -> None:
    lab = Lab()
    link = lab.connect("TRK-1", version=version, keep_alive=10)
    lab.advance(10)
    link.client.ping()
    lab.pump()
    lab.advance(14)  # 24 s after CONNECT, 14 s after the ping: still within 1.5 x 10
    assert link.closed is None
    lab.advance(1.1)
    assert link.closed == "keep_alive_timeout"
    if version == V5:
        assert link.disconnect is not None and link.disconnect.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT


def test_3_1_1_keep_alive_is_capped_silently() -> None:
    lab = Lab(limits=BrokerLimits(max_keep_alive=20))
    link = lab.connect("TRK-1", version=V311, keep_alive=0)
    lab.advance(29)
    assert link.closed is None
    lab.advance(2)
    assert link.closed == "keep_alive_timeout"


def test_unsupported_protocol_level_gets_a_3_1_1_connack() -> None:
    lab = Lab()
    link = lab.open(MqttClient("x"), lab_peer())
    # MQTT 3.1 ("MQIsdp", level 3)
    link.send_raw(bytes.fromhex("100f00064d514973647003020000000178"))
    assert bytes(link.received) == bytes((0x20, 2, 0, 0x01))
    assert link.closed == "unsupported_protocol_version"


def test_refused_connack_is_the_only_thing_sent() -> None:
    lab = Lab()
    link = lab.connect("TRK-2", peer=unit_peer("TRK-1"))
    assert [type(e) for e in link.events] == [Connack]
    assert link.closed == "connect_refused"


def test_an_empty_client_id_from_a_5_0_unit_is_assigned_its_certificate_id() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    link = lab.connect("", peer=unit_peer("TRK-7"))
    assert link.connack.reason_code == 0
    assert link.connack.properties.assigned_client_identifier == "TRK-7"
    connected = [e for e in lab.broker.drain_events() if isinstance(e, ClientConnected)]
    assert connected[-1].client_id == "TRK-7"
    link.subscribe("fleet/TRK-7/cmd/#")
    ops.publish("fleet/TRK-7/cmd/reboot", b"diag")
    assert link.payloads == [b"diag"]
    # One session per identity: the same unit connecting again, id spelt out, takes it over.
    again = lab.connect("TRK-7")
    assert again.connack.reason_code == 0
    assert link.closed == "session_taken_over"


def test_an_empty_client_id_from_a_5_0_unit_continues_its_persistent_session() -> None:
    lab = Lab()
    keep = Properties(session_expiry_interval=600)
    first = lab.connect("", peer=unit_peer("TRK-7"), clean_start=False, properties=keep)
    first.subscribe("fleet/TRK-7/cmd/#", qos=1)
    first.lose()
    lab.connect("ops-1").publish("fleet/TRK-7/cmd/reboot", b"queued", qos=1)
    back = lab.connect("", peer=unit_peer("TRK-7"), clean_start=False, properties=keep)
    assert back.connack.session_present and back.payloads == [b"queued"]


def test_an_empty_client_id_from_a_3_1_1_unit_with_clean_session_is_its_certificate_id() -> None:
    lab = Lab()
    link = lab.connect("", version=V311, clean_start=True, peer=unit_peer("TRK-7"))
    assert link.connack.reason_code == 0
    assert link.received[:4] == b"\x20\x02\x00\x00"  # 3.1.1 cannot say which id: CONNACK has no room
    connected = [e for e in lab.broker.drain_events() if isinstance(e, ClientConnected)]
    assert connected[-1].client_id == "TRK-7"


def test_an_empty_client_id_from_a_3_1_1_unit_without_clean_session_is_refused() -> None:
    lab = Lab()
    link = lab.connect("", version=V311, clean_start=False, peer=unit_peer("TRK-7"))
    assert link.closed == "connect_refused"
    assert link.received[3] == 0x02  # identifier rejected, [MQTT-3.1.3-8]
    (refused,) = [e for e in lab.broker.drain_events() if isinstance(e, ConnectRefused)]
    assert refused.reason == "empty_client_id"
