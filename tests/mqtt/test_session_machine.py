"""The server-side connection state machine on its own: bytes in, packets or violations out."""

from __future__ import annotations

import pytest

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import (
    Connect,
    Pingreq,
    Properties,
    ProtocolVersion,
    Publish,
    Subscribe,
    Subscription,
)
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.session import _TRANSITIONS, ConnectionState, ServerSession, Violation

V5, V311 = ProtocolVersion.MQTT_5, ProtocolVersion.MQTT_3_1_1


def connected(version: ProtocolVersion = V5, **connect: object) -> ServerSession:
    s = ServerSession(now=0.0, receive_maximum=2, topic_alias_maximum=4, max_keep_alive=100)
    s.receive_data(encode(Connect("c", version, **connect), version), 0.0)  # type: ignore[arg-type]
    assert isinstance(s.next_event(), Connect)
    return s


def test_every_client_packet_type_has_a_rule_in_every_live_state() -> None:
    from gateway.mqtt.packets import PacketType

    for state in (ConnectionState.AWAIT_CONNECT, ConnectionState.CONNECTED):
        assert set(_TRANSITIONS[state]) == set(PacketType)


def test_connect_then_packets() -> None:
    s = connected()
    assert s.state is ConnectionState.CONNECTED and s.version == V5
    s.receive_data(encode(Pingreq(), V5) + encode(Publish("a/b", b"x"), V5), 5.0)
    assert isinstance(s.next_event(), Pingreq)
    assert isinstance(s.next_event(), Publish)
    assert s.next_event() is None and s.last_packet_at == 5.0


def test_first_packet_must_be_connect() -> None:
    s = ServerSession(now=0.0)
    s.receive_data(encode(Pingreq(), V5), 0.0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason == "packet_before_connect"
    assert s.state is ConnectionState.CLOSED and s.farewell(v) == b"" and s.next_event() is None


@pytest.mark.parametrize(("version", "farewell"), [(V5, b"\xe0\x01\x82"), (V311, b"")])
def test_second_connect(version: ProtocolVersion, farewell: bytes) -> None:
    s = connected(version)
    s.receive_data(encode(Connect("c", version), version), 1.0)
    v = s.next_event()
    assert isinstance(v, Violation) and (v.reason, v.reason_code) == ("second_connect", 0x82)
    assert s.farewell(v) == farewell


def test_keep_alive_negotiation() -> None:
    assert (connected(keep_alive=30).keep_alive, connected(keep_alive=30).server_keep_alive) == (30, None)
    capped = connected(keep_alive=500)
    assert (capped.keep_alive, capped.server_keep_alive) == (100, 100)
    zero = connected(V311, keep_alive=0)
    assert (zero.keep_alive, zero.server_keep_alive) == (100, None)  # 3.1.1: enforced, not told
    assert zero.deadline() == 150.0
    assert zero.check_timeout(149.9) is None
    v = zero.check_timeout(150.0)
    assert isinstance(v, Violation) and v.reason == "keep_alive_timeout"


def test_connect_timeout_is_silent() -> None:
    s = ServerSession(now=10.0, connect_timeout=5.0)
    assert s.deadline() == 15.0
    v = s.check_timeout(15.0)
    assert isinstance(v, Violation) and v.reason == "connect_timeout" and s.farewell(v) == b""


def test_topic_aliases_and_names() -> None:
    s = connected()
    s.receive_data(encode(Publish("a/b", b"1", properties=Properties(topic_alias=2)), V5), 0)
    s.receive_data(encode(Publish("", b"2", properties=Properties(topic_alias=2)), V5), 0)
    first, second = s.next_event(), s.next_event()
    assert isinstance(first, Publish) and isinstance(second, Publish)
    assert (second.topic, second.properties.topic_alias) == ("a/b", None)
    s.receive_data(encode(Publish("a/#", b"3"), V5), 0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert s.farewell(v) == b"\xe0\x01\x90"


@pytest.mark.parametrize("props", [Properties(), Properties(content_type="text/plain")])
def test_a_publish_with_or_without_properties_is_judged_alike(props: Properties) -> None:
    # Without properties (the codec's NO_PROPERTIES) the session skips the 5.0 property checks; the
    # topic name must still be there, exactly as when properties come along.
    s = connected()
    s.receive_data(encode(Publish("a/b", b"1", properties=props), V5), 0)
    got = s.next_event()
    assert isinstance(got, Publish) and (got.topic, got.payload) == ("a/b", b"1")
    s.receive_data(encode(Publish("", b"2", properties=props), V5), 0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.PROTOCOL_ERROR


def test_a_3_1_1_publish_with_an_empty_topic_name_is_refused() -> None:
    # It has no topic alias to stand for it (§4.7.3: a topic name is at least one character); the
    # first PUBLISH of a connection is checked like every other.
    s = connected(V311)
    s.receive_data(encode(Publish("", b"x"), V311), 0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.TOPIC_NAME_INVALID


def test_receive_maximum_counts_unacked_qos1_and_pending_qos2() -> None:
    s = connected()
    pending: set[int] = {9}
    s.attach(pending)
    s.receive_data(encode(Publish("a", b"", 1, packet_id=1), V5), 0)
    assert isinstance(s.next_event(), Publish)  # 1 + 1 pending QoS 2 = 2: fine
    s.acks_flushed()
    s.receive_data(encode(Publish("a", b"", 2, packet_id=9, dup=True), V5), 0)
    assert isinstance(s.next_event(), Publish)  # a retransmission of the pending one: not new
    s.receive_data(encode(Publish("a", b"", 1, packet_id=2), V5) * 2, 0)
    assert isinstance(s.next_event(), Publish)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason == "receive_maximum_exceeded"


def test_client_must_not_send_subscription_identifiers_in_publish() -> None:
    s = connected()
    s.receive_data(encode(Publish("a", b"", properties=Properties(subscription_identifiers=(1,))), V5), 0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.PROTOCOL_ERROR


def test_client_maximum_packet_size_and_server_disconnect() -> None:
    s = connected(properties=Properties(maximum_packet_size=10, receive_maximum=7))
    assert s.client_receive_maximum == 7 and s.fits(10) and not s.fits(11)
    assert s.disconnect(0x87, "a reason string that is far too long") == b"\xe0\x01\x87"
    assert s.state is ConnectionState.CLOSED


def test_3_1_1_clients_get_no_disconnect() -> None:
    assert connected(V311).disconnect(0x87, "x") == b""


def test_malformed_5_0_connect_is_answered_with_a_connack() -> None:
    s = ServerSession(now=0.0)
    data = bytearray(encode(Connect("c", V5), V5))
    data[9] |= 1  # reserved flag
    s.receive_data(bytes(data[:5]), 0)
    assert s.next_event() is None
    s.receive_data(bytes(data[5:]), 0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.during_connect
    assert s.farewell(v) == bytes((0x20, 3, 0, 0x81, 0))


def test_subscribe_passes_through() -> None:
    s = connected()
    s.receive_data(encode(Subscribe(1, (Subscription("a/#"),)), V5), 0)
    assert isinstance(s.next_event(), Subscribe)


@pytest.mark.parametrize(("level", "answer"), [(3, b"\x20\x02\x00\x01"), (6, b"\x20\x03\x00\x84\x00")])
def test_unsupported_protocol_levels(level: int, answer: bytes) -> None:
    s = ServerSession(now=0.0)
    s.receive_data(b"\x10\x0d\x00\x04MQTT" + bytes((level,)) + b"\x02\x00\x3c\x00\x01c", 0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason == "unsupported_protocol_version"
    assert s.farewell(v) == answer


# --- packets refused by type alone: the Protocol Error the spec names, whatever their body ----------
# Each is well-typed but has a body that does not decode: judged by its type from the first byte, it is
# 0x82 (5.0: [MQTT-3.1.0-2] a second CONNECT, a server-only packet, AUTH never announced), not 0x81.
REFUSED_BY_TYPE = [
    ("second_connect", b"\x10\x03\x00\x04M"),  # a CONNECT cut inside its protocol name
    ("second_connect", b"\x11\x00"),  # ... even with reserved header flags
    ("server_packet_from_client", b"\x20\x01\x00"),  # a CONNACK one byte short
    ("server_packet_from_client", b"\x90\x02\x00\x01"),  # a SUBACK without codes
    ("server_packet_from_client", b"\xb0\x02\x00\x00"),  # an UNSUBACK with packet id 0
    ("server_packet_from_client", b"\xd0\x01\x00"),  # a PINGRESP with a body
]


@pytest.mark.parametrize(("reason", "data"), REFUSED_BY_TYPE)
def test_a_packet_refused_by_type_is_a_protocol_error_even_if_its_body_is_broken(
    reason: str, data: bytes
) -> None:
    s = connected(V5)
    s.receive_data(data, 1.0)
    v = s.next_event()
    assert isinstance(v, Violation) and (v.reason, v.reason_code) == (reason, ReasonCode.PROTOCOL_ERROR)
    assert s.farewell(v) == b"\xe0\x01\x82"


def test_an_auth_with_a_broken_body_is_a_protocol_error_in_5_0() -> None:
    s = connected(V5)
    s.receive_data(b"\xf0\x02\x00\x05", 1.0)  # reason 0, a property length past the end
    v = s.next_event()
    assert isinstance(v, Violation) and (v.reason, v.reason_code) == ("unexpected_auth", 0x82)


@pytest.mark.parametrize("version", [V311, V5])
def test_refused_types_are_refused_in_both_versions(version: ProtocolVersion) -> None:
    s = connected(version)
    s.receive_data(b"\x20\x02\x00\x00", 1.0)  # a well-formed CONNACK from the client
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason == "server_packet_from_client"


def test_a_malformed_packet_of_an_allowed_type_is_still_malformed() -> None:
    s = connected(V5)
    s.receive_data(b"\x82\x04\x00\x01\x00\x05", 1.0)  # SUBSCRIBE whose filter length runs past the end
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.MALFORMED_PACKET


# --- Response Topic (§3.3.2.3.5): a topic name; wildcards or empty: 0x82; not UTF-8: 0x81 ---------


@pytest.mark.parametrize("topic", ["reply/+", "reply/#", "#", ""])
def test_a_publish_with_a_wildcard_or_empty_response_topic_is_a_protocol_error(topic: str) -> None:
    s = connected(V5)
    s.receive_data(encode(Publish("a/b", b"x", properties=Properties(response_topic=topic)), V5), 1.0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.PROTOCOL_ERROR
    assert s.farewell(v) == b"\xe0\x01\x82"


def test_a_response_topic_that_is_not_utf8_is_malformed() -> None:
    s = connected(V5)
    good = encode(Publish("a/b", b"x", properties=Properties(response_topic="r/\u00e9")), V5)
    bad = good.replace("r/\u00e9".encode(), b"r/\xc3(")  # same length, invalid UTF-8
    s.receive_data(bad, 1.0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.reason_code == ReasonCode.MALFORMED_PACKET


def test_a_valid_response_topic_passes() -> None:
    s = connected(V5)
    props = Properties(response_topic="fleet/TRK-1/cmd/reply", correlation_data=b"7")
    s.receive_data(encode(Publish("a/b", b"x", properties=props), V5), 1.0)
    got = s.next_event()
    assert isinstance(got, Publish) and got.properties.response_topic == "fleet/TRK-1/cmd/reply"


@pytest.mark.parametrize("topic", ["reply/+", "reply/#", ""])
def test_a_will_with_a_wildcard_response_topic_gets_connack_0x82(topic: str) -> None:
    from gateway.mqtt.packets import Will

    s = ServerSession(now=0.0)
    will = Will("fleet/c/state", b"bye", properties=Properties(response_topic=topic))
    s.receive_data(encode(Connect("c", V5, will=will), V5), 0.0)
    v = s.next_event()
    assert isinstance(v, Violation) and v.during_connect and v.reason_code == ReasonCode.PROTOCOL_ERROR
    assert s.farewell(v) == b"\x20\x03\x00\x82\x00"  # CONNACK 0x82, no properties
