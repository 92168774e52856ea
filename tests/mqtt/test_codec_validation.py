"""Every decoder rule, as a table: wire bytes -> the error class (and so the reason code) it must raise."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from gateway.mqtt.codec import PacketReader, decode_packet, encode
from gateway.mqtt.errors import (
    MalformedPacket,
    MqttError,
    PacketTooLarge,
    ProtocolError,
    TopicAliasInvalid,
    UnsupportedProtocolVersion,
)
from gateway.mqtt.packets import Connect, Properties, ProtocolVersion, Publish, Subscribe
from gateway.mqtt.reason_codes import ReasonCode

from .golden import V3, V5, h

NONE = None  # a server reader before CONNECT


class Bad(NamedTuple):
    name: str
    version: ProtocolVersion | None
    wire: bytes
    error: type[MqttError]


CONNECT_311 = "00 04 'MQTT' 04"
CONNECT_5 = "00 04 'MQTT' 05"

BAD: list[Bad] = [
    # ------------------------------------------------------------------- fixed header (§2.1.3, §2.1.4)
    Bad("reserved-type-0", V5, h("00 00"), MalformedPacket),
    Bad("auth-type-in-311", V3, h("f0 00"), MalformedPacket),
    Bad("first-packet-not-connect", NONE, h("c0 00"), ProtocolError),
    Bad("first-packet-publish", NONE, h("30 04 00 01 't' 'x'"), ProtocolError),
    Bad("first-packet-auth", NONE, h("f0 00"), ProtocolError),
    Bad("connect-flags-nibble", NONE, h(f"11 0c {CONNECT_311} 02 00 3c 00 00"), MalformedPacket),
    Bad("connack-flags-nibble", V5, h("21 03 00 00 00"), MalformedPacket),
    Bad("puback-flags-nibble", V3, h("42 02 00 01"), MalformedPacket),
    Bad("pubrec-flags-nibble", V5, h("52 02 00 01"), MalformedPacket),
    Bad("pubrel-flags-0000", V3, h("60 02 00 01"), MalformedPacket),
    Bad("pubrel-flags-0011", V5, h("63 02 00 01"), MalformedPacket),
    Bad("pubcomp-flags-nibble", V3, h("71 02 00 01"), MalformedPacket),
    Bad("subscribe-flags-0000", V3, h("80 06 00 01 00 01 'a' 00"), MalformedPacket),
    Bad("suback-flags-nibble", V3, h("92 03 00 01 00"), MalformedPacket),
    Bad("unsubscribe-flags-0000", V5, h("a0 05 00 01 00 01 'a'"), MalformedPacket),
    Bad("unsuback-flags-nibble", V3, h("b8 02 00 01"), MalformedPacket),
    Bad("pingreq-flags-nibble", V3, h("c1 00"), MalformedPacket),
    Bad("pingresp-flags-nibble", V5, h("d4 00"), MalformedPacket),
    Bad("disconnect-flags-nibble", V5, h("e2 00"), MalformedPacket),
    Bad("auth-flags-nibble", V5, h("f1 00"), MalformedPacket),
    Bad("remaining-length-five-bytes", V3, h("30 ff ff ff ff 01"), MalformedPacket),
    Bad("remaining-length-not-minimal", V3, h("c0 80 00"), MalformedPacket),
    # ---------------------------------------------------------------------------------- PUBLISH §3.3
    Bad("publish-qos-3", V3, h("36 06 00 01 't' 00 01 'x'"), MalformedPacket),
    Bad("publish-qos-3-v5", V5, h("36 07 00 01 't' 00 01 00 'x'"), MalformedPacket),
    Bad("publish-dup-on-qos0", V3, h("38 04 00 01 't' 'x'"), MalformedPacket),
    Bad("publish-dup-on-qos0-v5", V5, h("38 05 00 01 't' 00 'x'"), MalformedPacket),
    Bad("publish-packet-id-0-311", V3, h("32 05 00 01 't' 00 00"), MalformedPacket),
    Bad("publish-packet-id-0-5", V5, h("32 06 00 01 't' 00 00 00"), ProtocolError),
    Bad("publish-topic-runs-past-end", V3, h("30 03 00 05 't'"), MalformedPacket),
    Bad("publish-too-short-for-topic-length", V3, h("30 01 00"), MalformedPacket),
    Bad("publish-no-packet-id", V3, h("32 03 00 01 't'"), MalformedPacket),
    Bad("publish-v5-no-property-length", V5, h("30 03 00 01 't'"), MalformedPacket),
    Bad("publish-topic-invalid-utf8", V3, h("30 04 00 02 ff 'a'"), MalformedPacket),
    Bad("publish-topic-null", V3, h("30 05 00 03 'a' 00 'b'"), MalformedPacket),
    Bad("publish-topic-surrogate", V3, h("30 05 00 03 ed a0 80"), MalformedPacket),
    Bad("publish-topic-overlong", V5, h("30 05 00 02 c0 af 00"), MalformedPacket),
    Bad("publish-topic-truncated-sequence", V5, h("30 05 00 02 'a' e2 00"), MalformedPacket),
    Bad("publish-topic-alias-0", V5, h("30 07 00 01 't' 03 23 00 00"), TopicAliasInvalid),
    Bad("publish-session-expiry-not-allowed", V5, h("30 09 00 01 't' 05 11 00 00 00 01"), MalformedPacket),
    Bad("publish-unknown-property", V5, h("30 06 00 01 't' 02 04 00"), MalformedPacket),
    Bad("publish-two-byte-identifier", V5, h("30 07 00 01 't' 03 81 01 00"), MalformedPacket),
    Bad("publish-duplicate-content-type", V5, h("30 0c 00 01 't' 08 03 00 01 'a' 03 00 01 'b'"),
        ProtocolError),
    Bad("publish-duplicate-topic-alias", V5, h("30 0a 00 01 't' 06 23 00 01 23 00 02"), ProtocolError),
    Bad("publish-payload-format-2", V5, h("30 06 00 01 't' 02 01 02"), ProtocolError),
    Bad("publish-subscription-id-0", V5, h("30 06 00 01 't' 02 0b 00"), ProtocolError),
    Bad("publish-subscription-id-not-minimal", V5, h("30 07 00 01 't' 03 0b 81 00"), MalformedPacket),
    Bad("publish-subscription-id-five-bytes", V5, h("30 0a 00 01 't' 06 0b ff ff ff ff 01"), MalformedPacket),
    Bad("publish-property-length-overruns", V5, h("30 06 00 01 't' 09 01 01"), MalformedPacket),
    Bad("publish-property-value-overruns-block", V5, h("30 0c 00 01 't' 03 03 00 05 'abcde'"),
        MalformedPacket),
    Bad("publish-property-u32-cut", V5, h("30 07 00 01 't' 03 02 00 00"), MalformedPacket),
    Bad("publish-property-byte-cut", V5, h("30 06 00 01 't' 01 01 'x'"), MalformedPacket),
    Bad("publish-user-property-half-pair", V5, h("30 0a 00 01 't' 06 26 00 01 'k' 00 02"), MalformedPacket),
    Bad("publish-response-topic-null", V5, h("30 09 00 01 't' 05 08 00 02 'a' 00"), MalformedPacket),
    # ---------------------------------------------------------------------------------- CONNECT §3.1
    Bad("connect-name-wrong", NONE, h("10 0c 00 04 'MQTX' 04 02 00 3c 00 00"), MalformedPacket),
    Bad("connect-level-3-mqisdp", NONE, h("10 0e 00 06 'MQIsdp' 03 02 00 3c 00 00"),
        UnsupportedProtocolVersion),
    Bad("connect-level-3-mqtt", NONE, h("10 0c 00 04 'MQTT' 03 02 00 3c 00 00"), UnsupportedProtocolVersion),
    Bad("connect-level-6", NONE, h("10 0c 00 04 'MQTT' 06 02 00 3c 00 00"), UnsupportedProtocolVersion),
    Bad("connect-level-6-unknown-layout", NONE, h("10 07 00 04 'MQTT' 06"), UnsupportedProtocolVersion),
    Bad("connect-reserved-flag", NONE, h(f"10 0c {CONNECT_311} 03 00 3c 00 00"), MalformedPacket),
    Bad("connect-will-qos-3", NONE, h(f"10 12 {CONNECT_311} 1e 00 3c 00 00 00 01 'w' 00 01 'x'"),
        MalformedPacket),
    Bad("connect-will-qos-without-will", NONE, h(f"10 0c {CONNECT_311} 0a 00 3c 00 00"), MalformedPacket),
    Bad("connect-will-retain-without-will", NONE, h(f"10 0c {CONNECT_311} 22 00 3c 00 00"),
        MalformedPacket),
    Bad("connect-password-without-user-311", NONE, h(f"10 0f {CONNECT_311} 42 00 3c 00 00 00 01 'p'"),
        MalformedPacket),
    Bad("connect-trailing-bytes", NONE, h(f"10 0d {CONNECT_311} 02 00 3c 00 00 ff"), MalformedPacket),
    Bad("connect-missing-user-name", NONE, h(f"10 0c {CONNECT_311} 82 00 3c 00 00"), MalformedPacket),
    Bad("connect-missing-will", NONE, h(f"10 0c {CONNECT_311} 06 00 3c 00 00"), MalformedPacket),
    Bad("connect-client-id-invalid-utf8", NONE, h(f"10 0d {CONNECT_311} 02 00 3c 00 01 fe"), MalformedPacket),
    Bad("connect-receive-maximum-0", NONE, h(f"10 10 {CONNECT_5} 02 00 3c 03 21 00 00 00 00"), ProtocolError),
    Bad("connect-maximum-packet-size-0", NONE, h(f"10 12 {CONNECT_5} 02 00 3c 05 27 00 00 00 00 00 00"),
        ProtocolError),
    Bad("connect-request-problem-info-2", NONE, h(f"10 0f {CONNECT_5} 02 00 3c 02 17 02 00 00"),
        ProtocolError),
    Bad("connect-request-response-info-2", NONE, h(f"10 0f {CONNECT_5} 02 00 3c 02 19 02 00 00"),
        ProtocolError),
    Bad("connect-duplicate-session-expiry", NONE,
        h(f"10 17 {CONNECT_5} 02 00 3c 0a 11 00 00 00 01 11 00 00 00 02 00 00"), ProtocolError),
    Bad("connect-auth-data-without-method", NONE, h(f"10 10 {CONNECT_5} 02 00 3c 03 16 00 00 00 00"),
        ProtocolError),
    Bad("connect-assigned-client-id-not-allowed", NONE,
        h(f"10 11 {CONNECT_5} 02 00 3c 04 12 00 01 'x' 00 00"), MalformedPacket),
    Bad("connect-will-delay-in-connect-properties", NONE,
        h(f"10 12 {CONNECT_5} 02 00 3c 05 18 00 00 00 01 00 00"), MalformedPacket),
    Bad("connect-session-expiry-in-will-properties", NONE,
        h(f"10 18 {CONNECT_5} 06 00 3c 00 00 00 05 11 00 00 00 01 00 01 'w' 00 00"), MalformedPacket),
    Bad("connect-will-payload-format-2", NONE,
        h(f"10 15 {CONNECT_5} 06 00 3c 00 00 00 02 01 02 00 01 'w' 00 00"), ProtocolError),
    # ---------------------------------------------------------------------------------- CONNACK §3.2
    Bad("connack-reserved-ack-flags", V3, h("20 02 02 00"), MalformedPacket),
    Bad("connack-session-present-on-refusal-311", V3, h("20 02 01 05"), MalformedPacket),
    Bad("connack-session-present-on-refusal-5", V5, h("20 03 01 87 00"), ProtocolError),
    Bad("connack-311-too-long", V3, h("20 03 00 00 00"), MalformedPacket),
    Bad("connack-too-short", V5, h("20 01 00"), MalformedPacket),
    Bad("connack-5-no-property-length", V5, h("20 02 00 00"), MalformedPacket),
    Bad("connack-maximum-qos-2", V5, h("20 05 00 00 02 24 02"), ProtocolError),
    Bad("connack-retain-available-2", V5, h("20 05 00 00 02 25 02"), ProtocolError),
    Bad("connack-wildcard-available-2", V5, h("20 05 00 00 02 28 02"), ProtocolError),
    Bad("connack-subscription-ids-available-2", V5, h("20 05 00 00 02 29 02"), ProtocolError),
    Bad("connack-shared-available-2", V5, h("20 05 00 00 02 2a 02"), ProtocolError),
    Bad("connack-receive-maximum-0", V5, h("20 06 00 00 03 21 00 00"), ProtocolError),
    Bad("connack-request-problem-info-not-allowed", V5, h("20 05 00 00 02 17 01"), MalformedPacket),
    # ------------------------------------------------------------------------ PUBACK..PUBCOMP §3.4-7
    Bad("puback-packet-id-0-311", V3, h("40 02 00 00"), MalformedPacket),
    Bad("puback-packet-id-0-5", V5, h("40 02 00 00"), ProtocolError),
    Bad("pubrec-311-three-bytes", V3, h("50 03 00 01 00"), MalformedPacket),
    Bad("pubrel-too-short", V5, h("62 01 00"), MalformedPacket),
    Bad("pubcomp-property-overrun", V5, h("70 05 00 01 00 05 1f"), MalformedPacket),
    Bad("puback-trailing-after-properties", V5, h("40 05 00 01 00 00 ff"), MalformedPacket),
    Bad("puback-topic-alias-not-allowed", V5, h("40 07 00 01 00 03 23 00 01"), MalformedPacket),
    Bad("pubrec-duplicate-reason-string", V5, h("50 0c 00 01 80 08 1f 00 01 'a' 1f 00 01 'b'"),
        ProtocolError),
    # -------------------------------------------------------------------------------- SUBSCRIBE §3.8
    Bad("subscribe-no-subscriptions-311", V3, h("82 02 00 01"), MalformedPacket),
    Bad("subscribe-no-subscriptions-5", V5, h("82 03 00 01 00"), ProtocolError),
    Bad("subscribe-packet-id-0-5", V5, h("82 07 00 00 00 00 01 'a' 00"), ProtocolError),
    Bad("subscribe-reserved-option-bits-311", V3, h("82 06 00 01 00 01 'a' 04"), MalformedPacket),
    Bad("subscribe-reserved-option-bits-5", V5, h("82 07 00 01 00 00 01 'a' 40"), MalformedPacket),
    Bad("subscribe-retain-handling-3", V5, h("82 07 00 01 00 00 01 'a' 30"), ProtocolError),
    Bad("subscribe-qos-3-311", V3, h("82 06 00 01 00 01 'a' 03"), MalformedPacket),
    Bad("subscribe-qos-3-5", V5, h("82 07 00 01 00 00 01 'a' 03"), ProtocolError),
    Bad("subscribe-missing-options", V3, h("82 05 00 01 00 01 'a'"), MalformedPacket),
    Bad("subscribe-filter-null", V3, h("82 07 00 01 00 02 'a' 00 00"), MalformedPacket),
    Bad("subscribe-two-subscription-ids", V5, h("82 0b 00 01 04 0b 01 0b 02 00 01 'a' 00"), ProtocolError),
    Bad("subscribe-subscription-id-0", V5, h("82 09 00 01 02 0b 00 00 01 'a' 00"), ProtocolError),
    Bad("subscribe-reason-string-not-allowed", V5, h("82 0b 00 01 04 1f 00 01 'r' 00 01 'a' 00"),
        MalformedPacket),
    # ------------------------------------------------------------------------------------ SUBACK §3.9
    Bad("suback-no-codes-311", V3, h("90 02 00 01"), MalformedPacket),
    Bad("suback-no-codes-5", V5, h("90 03 00 01 00"), ProtocolError),
    Bad("suback-311-code-3", V3, h("90 03 00 01 03"), MalformedPacket),
    Bad("suback-311-code-87", V3, h("90 03 00 01 87"), MalformedPacket),
    # ------------------------------------------------------------------------- UNSUBSCRIBE §3.10-11
    Bad("unsubscribe-no-filters-311", V3, h("a2 02 00 01"), MalformedPacket),
    Bad("unsubscribe-no-filters-5", V5, h("a2 03 00 01 00"), ProtocolError),
    Bad("unsubscribe-filter-cut", V3, h("a2 05 00 01 00 05 'a'"), MalformedPacket),
    Bad("unsuback-311-has-codes", V3, h("b0 03 00 01 00"), MalformedPacket),
    Bad("unsuback-5-no-codes", V5, h("b0 03 00 01 00"), ProtocolError),
    # ------------------------------------------------------------------------ PING, DISCONNECT, AUTH
    Bad("pingreq-with-body", V3, h("c0 01 00"), MalformedPacket),
    Bad("pingresp-with-body", V5, h("d0 01 00"), MalformedPacket),
    Bad("disconnect-311-with-body", V3, h("e0 01 00"), MalformedPacket),
    Bad("disconnect-server-keep-alive-not-allowed", V5, h("e0 05 00 03 13 00 05"), MalformedPacket),
    Bad("disconnect-trailing", V5, h("e0 03 00 00 00"), MalformedPacket),
    Bad("auth-data-without-method", V5, h("f0 06 18 04 16 00 01 01"), ProtocolError),
    Bad("auth-session-expiry-not-allowed", V5, h("f0 07 18 05 11 00 00 00 01"), MalformedPacket),
]


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_decoder_rejects(bad: Bad) -> None:
    with pytest.raises(bad.error) as info:
        decode_packet(bad.wire, bad.version)
    assert type(info.value) is bad.error
    assert info.value.peer_at_fault is True
    assert info.value.reason_code == bad.error.default_reason
    assert str(info.value).endswith(".")


def test_bad_table_names_are_unique() -> None:
    assert len({b.name for b in BAD}) == len(BAD)


@pytest.mark.parametrize(("wire", "level"), [
    (h("10 0e 00 06 'MQIsdp' 03 02 00 3c 00 00"), 3),
    (h("10 0c 00 04 'MQTT' 07 02 00 3c 00 00"), 7),
])
def test_unsupported_version_carries_the_level(wire: bytes, level: int) -> None:
    with pytest.raises(UnsupportedProtocolVersion) as info:
        decode_packet(wire)
    assert info.value.protocol_level == level
    assert info.value.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


def test_reason_codes_of_error_classes() -> None:
    assert MalformedPacket("x.").reason_code == 0x81
    assert ProtocolError("x.").reason_code == 0x82
    assert PacketTooLarge("x.").reason_code == 0x95
    assert UnsupportedProtocolVersion(3).reason_code == 0x84
    assert TopicAliasInvalid("x.").reason_code == 0x94
    assert MqttError("x.", reason_code=0x87).reason_code == 0x87


# ------------------------------------------------------------------------------------ accepted edges


@pytest.mark.parametrize(("wire", "version"), [
    (h(f"10 10 {CONNECT_5} 42 00 3c 00 00 00 00 01 'p'"), NONE),  # 5.0: password without user name
    (h("30 0a 00 01 't' 06 0b 01 0b 02 0b 03"), V5),  # several subscription ids in PUBLISH
    (h("30 0d 00 01 't' 09 26 00 01 'k' 00 01 'v' 01 00"), V5),  # user property then another property
    (h("30 04 00 00 00 'x'"), V5),  # empty topic, no alias: the session's to refuse, not the codec's
    (h("30 03 00 00 'x'"), V3),  # empty topic in 3.1.1: topic syntax is topics.py's job
    (h("30 05 00 01 '#' 00 'x'"), V5),  # wildcard in a topic name: likewise
    (h("e0 01 00"), V5),  # DISCONNECT with a reason code of 0 written out
])
def test_decoder_accepts(wire: bytes, version: ProtocolVersion | None) -> None:
    decode_packet(wire, version)


def test_decode_packet_rejects_incomplete_and_trailing() -> None:
    with pytest.raises(MalformedPacket):
        decode_packet(h("40 02 00"), V3)
    with pytest.raises(MalformedPacket):
        decode_packet(h("40 02 00 01 c0"), V3)
    with pytest.raises(MalformedPacket):
        decode_packet(b"", V3)


# ------------------------------------------------------------------------------- reader behaviour


def test_packet_too_large_is_refused_from_the_fixed_header_alone() -> None:
    reader = PacketReader(max_packet_size=100, version=V3)
    reader.feed(h("30 65"))  # remaining length 101: the body has not arrived
    with pytest.raises(PacketTooLarge):
        reader.next_packet()


def test_packet_at_the_maximum_size_is_accepted() -> None:
    wire = encode(Publish("t", bytes(95)), V3)  # 2 + 2 + 1 + 95 = 100 bytes
    assert len(wire) == 100
    reader = PacketReader(max_packet_size=100, version=V3)
    reader.feed(wire)
    assert reader.next_packet() == Publish("t", bytes(95))


def test_five_byte_remaining_length_refused_before_the_fifth_byte() -> None:
    reader = PacketReader(version=V3)
    reader.feed(h("30 ff ff ff"))
    assert reader.next_packet() is None
    reader.feed(h("ff"))
    with pytest.raises(MalformedPacket):
        reader.next_packet()


def test_reader_is_poisoned_after_an_error() -> None:
    reader = PacketReader(version=V3)
    reader.feed(h("c1 00"))
    for _ in range(3):
        with pytest.raises(MalformedPacket):
            reader.next_packet()
    reader.feed(h("c0 00"))  # a valid packet afterwards changes nothing
    with pytest.raises(MalformedPacket):
        reader.next_packet()


def test_reader_returns_packets_before_the_bad_one() -> None:
    reader = PacketReader(version=V3)
    reader.feed(h("c0 00 d0 00 c1 00 c0 00"))
    assert reader.next_packet() is not None
    assert reader.next_packet() is not None
    with pytest.raises(MalformedPacket):
        reader.next_packet()


def test_buffered_and_set_version() -> None:
    reader = PacketReader()
    reader.set_version(V5)
    assert reader.version is V5
    reader.feed(h("c0 00 d0"))
    assert reader.buffered == 3
    assert reader.next_packet() is not None
    assert reader.buffered == 1
    assert reader.next_packet() is None
    reader.feed(h("00"))
    assert reader.next_packet() is not None
    assert reader.buffered == 0


def test_reader_copies_mutable_input() -> None:
    data = bytearray(encode(Publish("t", b"abc"), V3))
    reader = PacketReader(version=V3)
    reader.feed(data)
    data[:] = bytes(len(data))
    assert reader.next_packet() == Publish("t", b"abc")


def test_reader_accepts_memoryviews_split_anywhere() -> None:
    packet = Publish("t", bytes(range(200)), qos=1, packet_id=5,
                     properties=Properties(correlation_data=b"c", user_properties=(("k", "v"),)))
    wire = encode(packet, V5) * 3 + encode(Publish("u"), V5)
    reader = PacketReader(version=V5)
    out = []
    for i in range(0, len(wire), 7):
        reader.feed(memoryview(wire)[i : i + 7])
        while (p := reader.next_packet()) is not None:
            out.append(p)
    assert out == [packet] * 3 + [Publish("u")]
    assert all(isinstance(p, Publish) and type(p.payload) is bytes for p in out)
    assert all(type(p.properties.correlation_data) is bytes for p in out[:3])  # type: ignore[union-attr]
    assert reader.buffered == 0


def test_server_reader_switches_to_the_connect_version() -> None:
    reader = PacketReader()
    reader.feed(encode(Connect("a", V3), V3) + h("f0 00"))  # AUTH is reserved once 3.1.1 is known
    assert isinstance(reader.next_packet(), Connect)
    assert reader.version is V3
    with pytest.raises(MalformedPacket):
        reader.next_packet()


# ------------------------------------------------------------------------------- encoder refusals


@pytest.mark.parametrize(("packet", "version", "error"), [
    (Publish("t", qos=1), V5, ProtocolError),  # QoS 1 without a packet id
    (Publish("t", qos=0, packet_id=1), V5, ProtocolError),
    (Publish("t", qos=0, dup=True), V3, ProtocolError),
    (Publish("t", qos=3, packet_id=1), V5, MalformedPacket),
    (Publish("a\x00b"), V5, MalformedPacket),
    (Publish("\ud800"), V5, MalformedPacket),
    (Publish("t" * 65_536), V3, MalformedPacket),
    (Subscribe(1, ()), V5, ProtocolError),
    (Connect("a", V5), V3, ProtocolError),  # the CONNECT's own version must match the connection's
    (Connect("a", V3, password=b"p"), V3, ProtocolError),
])
def test_encoder_refuses_unwritable_values(packet: object, version: ProtocolVersion,
                                           error: type[MqttError]) -> None:
    with pytest.raises(error) as info:
        encode(packet, version)  # type: ignore[arg-type]
    assert info.value.peer_at_fault is False
