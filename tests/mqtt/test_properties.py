"""The property table against the 5.0 spec (§2.2.2.2, Table 2-4), and every identifier in every packet."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.mqtt.errors import MalformedPacket, ProtocolError, TopicAliasInvalid
from gateway.mqtt.packets import NO_PROPERTIES, PacketType, Properties
from gateway.mqtt.properties import (
    BY_IDENTIFIER,
    PROPERTY_TABLE,
    WILL,
    PropertySpec,
    WireType,
    allowed_fields,
    decode_properties,
    encode_properties,
)

P = PacketType
B, U16, U32, VBI, S, BIN, PAIR = (WireType.BYTE, WireType.U16, WireType.U32, WireType.VARINT,
                                  WireType.UTF8, WireType.BINARY, WireType.UTF8_PAIR)
ACKS = {P.PUBACK, P.PUBREC, P.PUBREL, P.PUBCOMP}

# Transcribed from the spec's table, independently of properties.py: identifier -> (field, type, packets).
SPEC: dict[int, tuple[str, WireType, set[int]]] = {
    0x01: ("payload_format_indicator", B, {P.PUBLISH, WILL}),
    0x02: ("message_expiry_interval", U32, {P.PUBLISH, WILL}),
    0x03: ("content_type", S, {P.PUBLISH, WILL}),
    0x08: ("response_topic", S, {P.PUBLISH, WILL}),
    0x09: ("correlation_data", BIN, {P.PUBLISH, WILL}),
    0x0B: ("subscription_identifiers", VBI, {P.PUBLISH, P.SUBSCRIBE}),
    0x11: ("session_expiry_interval", U32, {P.CONNECT, P.CONNACK, P.DISCONNECT}),
    0x12: ("assigned_client_identifier", S, {P.CONNACK}),
    0x13: ("server_keep_alive", U16, {P.CONNACK}),
    0x15: ("authentication_method", S, {P.CONNECT, P.CONNACK, P.AUTH}),
    0x16: ("authentication_data", BIN, {P.CONNECT, P.CONNACK, P.AUTH}),
    0x17: ("request_problem_information", B, {P.CONNECT}),
    0x18: ("will_delay_interval", U32, {WILL}),
    0x19: ("request_response_information", B, {P.CONNECT}),
    0x1A: ("response_information", S, {P.CONNACK}),
    0x1C: ("server_reference", S, {P.CONNACK, P.DISCONNECT}),
    0x1F: ("reason_string", S, {P.CONNACK, *ACKS, P.SUBACK, P.UNSUBACK, P.DISCONNECT, P.AUTH}),
    0x21: ("receive_maximum", U16, {P.CONNECT, P.CONNACK}),
    0x22: ("topic_alias_maximum", U16, {P.CONNECT, P.CONNACK}),
    0x23: ("topic_alias", U16, {P.PUBLISH}),
    0x24: ("maximum_qos", B, {P.CONNACK}),
    0x25: ("retain_available", B, {P.CONNACK}),
    0x26: ("user_properties", PAIR, {P.CONNECT, P.CONNACK, P.PUBLISH, WILL, *ACKS, P.SUBSCRIBE, P.SUBACK,
                                     P.UNSUBSCRIBE, P.UNSUBACK, P.DISCONNECT, P.AUTH}),
    0x27: ("maximum_packet_size", U32, {P.CONNECT, P.CONNACK}),
    0x28: ("wildcard_subscription_available", B, {P.CONNACK}),
    0x29: ("subscription_identifier_available", B, {P.CONNACK}),
    0x2A: ("shared_subscription_available", B, {P.CONNACK}),
}

PLACES = [WILL, *(p for p in P if p not in (P.PINGREQ, P.PINGRESP))]


def _place(where: int) -> str:
    return "WILL" if where == WILL else P(where).name


def test_table_matches_the_spec() -> None:
    got = {s.identifier: (s.name, s.wire, set(s.packets)) for s in PROPERTY_TABLE}
    assert got == SPEC


def test_every_properties_field_has_exactly_one_row() -> None:
    fields = [f.name for f in dataclasses.fields(Properties)]
    assert sorted(s.name for s in PROPERTY_TABLE) == sorted(fields)
    assert list(BY_IDENTIFIER) == sorted(BY_IDENTIFIER)


def _sample(spec: PropertySpec) -> Any:
    """A valid value for the property's wire type."""
    return {B: 1, U16: 7, U32: 70_000, VBI: 300, S: "ü", BIN: b"\x00\xff", PAIR: ("k", "v")}[spec.wire]


def _one(spec: PropertySpec) -> Properties:
    value = _sample(spec)
    fields: dict[str, Any] = {spec.name: (value,) if spec.many else value}
    return Properties(**fields)


def _block(body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((len(body),)) + body


CASES = [(spec, where) for spec in PROPERTY_TABLE for where in PLACES]


@pytest.mark.parametrize(("spec", "where"), CASES, ids=[f"{s.name}-{_place(w)}" for s, w in CASES])
def test_each_identifier_in_each_packet(spec: PropertySpec, where: int) -> None:
    props = _one(spec)
    allowed = where in SPEC[spec.identifier][2]
    if allowed:
        wire = encode_properties(props, where)
        assert decode_properties(wire, 0, len(wire), where) == (props, len(wire))
        assert spec.name in allowed_fields(where)
    else:
        with pytest.raises(MalformedPacket) as info:
            encode_properties(props, where)
        assert info.value.peer_at_fault is False
        # The same bytes written for a packet that allows it, then read as this packet: malformed (§2.2.2.2).
        home = next(iter(SPEC[spec.identifier][2]))
        wire = encode_properties(props, home)
        with pytest.raises(MalformedPacket) as info:
            decode_properties(wire, 0, len(wire), where)
        assert info.value.peer_at_fault is True


SINGLE = [s for s in PROPERTY_TABLE if not s.many]


@pytest.mark.parametrize("spec", SINGLE, ids=[s.name for s in SINGLE])
def test_repeating_a_single_property_is_a_protocol_error(spec: PropertySpec) -> None:
    home = next(iter(spec.packets))
    once = encode_properties(_one(spec), home)[1:]
    wire = _block(once + once)
    with pytest.raises(ProtocolError):
        decode_properties(wire, 0, len(wire), home)


def test_subscription_identifier_repeats_only_in_publish() -> None:
    props = Properties(subscription_identifiers=(1, 2))
    wire = encode_properties(props, P.PUBLISH)
    assert decode_properties(wire, 0, len(wire), P.PUBLISH)[0] == props
    with pytest.raises(ProtocolError):
        decode_properties(wire, 0, len(wire), P.SUBSCRIBE)
    with pytest.raises(ProtocolError):
        encode_properties(props, P.SUBSCRIBE)


BOOLEAN = [s for s in PROPERTY_TABLE if s.boolean]
ZERO = [s for s in PROPERTY_TABLE if s.zero_error is not None]


def test_value_rules_cover_the_spec() -> None:
    assert {s.identifier for s in BOOLEAN} == {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
    assert {s.identifier: s.zero_error for s in ZERO} == {
        0x0B: ProtocolError, 0x21: ProtocolError, 0x23: TopicAliasInvalid, 0x27: ProtocolError}


@pytest.mark.parametrize("spec", BOOLEAN, ids=[s.name for s in BOOLEAN])
def test_boolean_properties_refuse_2(spec: PropertySpec) -> None:
    home = next(iter(spec.packets))
    wire = _block(bytes((spec.identifier, 2)))
    with pytest.raises(ProtocolError):
        decode_properties(wire, 0, len(wire), home)
    with pytest.raises(ProtocolError) as info:
        encode_properties(dataclasses.replace(NO_PROPERTIES, **{spec.name: 2}), home)  # type: ignore[arg-type]
    assert info.value.peer_at_fault is False
    for ok in (0, 1):
        wire = _block(bytes((spec.identifier, ok)))
        assert getattr(decode_properties(wire, 0, len(wire), home)[0], spec.name) == ok


@pytest.mark.parametrize("spec", ZERO, ids=[s.name for s in ZERO])
def test_zero_is_refused_where_the_spec_says(spec: PropertySpec) -> None:
    home = next(iter(spec.packets))
    size = {U16: 2, U32: 4, VBI: 1}[spec.wire]
    wire = _block(bytes((spec.identifier,)) + bytes(size))
    assert spec.zero_error is not None
    with pytest.raises(spec.zero_error):
        decode_properties(wire, 0, len(wire), home)


def test_user_properties_keep_order_and_duplicates_among_other_properties() -> None:
    wire = _block(bytes.fromhex("26 0001 62 0001 31  02 00000005  26 0001 61 0001 32  26 0001 62 0001 33"))
    props, end = decode_properties(wire, 0, len(wire), P.PUBLISH)
    assert end == len(wire)
    assert props.user_properties == (("b", "1"), ("a", "2"), ("b", "3"))
    assert props.message_expiry_interval == 5


def test_empty_property_block_is_the_shared_empty_value() -> None:
    assert decode_properties(b"\x00", 0, 1, P.PUBLISH) == (NO_PROPERTIES, 1)
    assert encode_properties(NO_PROPERTIES, P.PUBLISH) == b"\x00"
    assert encode_properties(Properties(), P.CONNACK) == b"\x00"


def test_decode_respects_the_end_of_the_enclosing_field() -> None:
    wire = bytes.fromhex("03 23 00 01 ff")  # a block that fits, followed by unrelated bytes
    assert decode_properties(wire, 0, len(wire), P.PUBLISH) == (Properties(topic_alias=1), 4)
    with pytest.raises(MalformedPacket):
        decode_properties(wire, 0, 3, P.PUBLISH)  # the block itself runs past `end`


@pytest.mark.parametrize(("props", "where"), [
    (Properties(server_keep_alive=70_000), P.CONNACK),
    (Properties(message_expiry_interval=2**32), P.PUBLISH),
    (Properties(subscription_identifiers=(268_435_456,)), P.PUBLISH),
    (Properties(correlation_data=bytes(65_536)), P.PUBLISH),
    (Properties(content_type="a\x00"), P.PUBLISH),
])
def test_encoder_refuses_values_that_do_not_fit(props: Properties, where: int) -> None:
    with pytest.raises(MalformedPacket) as info:
        encode_properties(props, where)
    assert info.value.peer_at_fault is False
