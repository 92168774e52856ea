"""The MQTT 5.0 property table (§2.2.2.2) and the one encoder/decoder it drives.

Each row says which `Properties` field an identifier fills, how its value is written, which packets may
carry it, and which value rules the spec attaches to it. Both directions read the same row, so an
identifier cannot be accepted by the decoder and refused by the encoder or the other way round.

Error classes follow the spec: an identifier that is unknown or not valid for the packet, or a value
cut short, is a Malformed Packet (§2.2.2.2); a property repeated where it may not be, or a value outside
its allowed range ("It is a Protocol Error to include ... more than once / a value other than 0 or 1"),
is a Protocol Error; Topic Alias 0 is Topic Alias invalid (0x94).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import MalformedPacket, MqttError, ProtocolError, TopicAliasInvalid
from .packets import NO_PROPERTIES, PacketType, Properties
from .wire import (
    U16,
    U32,
    Buffer,
    decode_binary,
    decode_string,
    decode_u16,
    decode_u32,
    decode_varint,
    encode_binary,
    encode_string,
    encode_varint,
)

__all__ = [
    "BY_IDENTIFIER",
    "PROPERTY_TABLE",
    "WILL",
    "PropertySpec",
    "WireType",
    "allowed_fields",
    "decode_properties",
    "encode_properties",
]

WILL = 0
"""Pseudo packet type for the Will Properties inside a CONNECT payload (the spec lists them separately)."""


class WireType(Enum):
    BYTE = "byte"
    U16 = "two-byte integer"
    U32 = "four-byte integer"
    VARINT = "variable byte integer"
    UTF8 = "utf-8 string"
    BINARY = "binary data"
    UTF8_PAIR = "utf-8 string pair"


@dataclass(frozen=True, slots=True)
class PropertySpec:
    identifier: int
    name: str  # the Properties field it fills
    wire: WireType
    packets: frozenset[int]  # PacketType values, or WILL
    many: bool = False  # the field is a tuple; each item is written as one property
    repeatable_in: frozenset[int] = frozenset()  # where it may appear more than once
    boolean: bool = False  # only 0 or 1 allowed
    zero_error: type[MqttError] | None = None  # raised for the value 0 when 0 is not allowed
    mask: int = field(init=False)  # packets as a bitmask, for a cheap membership test

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", sum(1 << p for p in self.packets))


_P = PacketType
_ACKS = (_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP)
_ALL_WITH_PROPERTIES = frozenset({WILL, *(p for p in _P if p not in (_P.PINGREQ, _P.PINGRESP))})
_MESSAGE = frozenset({_P.PUBLISH, WILL})


def _spec(identifier: int, name: str, wire: WireType, *packets: int, **rules: Any) -> PropertySpec:
    return PropertySpec(identifier, name, wire, frozenset(packets), **rules)


PROPERTY_TABLE: tuple[PropertySpec, ...] = (
    _spec(0x01, "payload_format_indicator", WireType.BYTE, *_MESSAGE, boolean=True),
    _spec(0x02, "message_expiry_interval", WireType.U32, *_MESSAGE),
    _spec(0x03, "content_type", WireType.UTF8, *_MESSAGE),
    _spec(0x08, "response_topic", WireType.UTF8, *_MESSAGE),
    _spec(0x09, "correlation_data", WireType.BINARY, *_MESSAGE),
    _spec(
        0x0B,
        "subscription_identifiers",
        WireType.VARINT,
        _P.PUBLISH,
        _P.SUBSCRIBE,
        many=True,
        repeatable_in=frozenset({_P.PUBLISH}),
        zero_error=ProtocolError,
    ),
    _spec(0x11, "session_expiry_interval", WireType.U32, _P.CONNECT, _P.CONNACK, _P.DISCONNECT),
    _spec(0x12, "assigned_client_identifier", WireType.UTF8, _P.CONNACK),
    _spec(0x13, "server_keep_alive", WireType.U16, _P.CONNACK),
    _spec(0x15, "authentication_method", WireType.UTF8, _P.CONNECT, _P.CONNACK, _P.AUTH),
    _spec(0x16, "authentication_data", WireType.BINARY, _P.CONNECT, _P.CONNACK, _P.AUTH),
    _spec(0x17, "request_problem_information", WireType.BYTE, _P.CONNECT, boolean=True),
    _spec(0x18, "will_delay_interval", WireType.U32, WILL),
    _spec(0x19, "request_response_information", WireType.BYTE, _P.CONNECT, boolean=True),
    _spec(0x1A, "response_information", WireType.UTF8, _P.CONNACK),
    _spec(0x1C, "server_reference", WireType.UTF8, _P.CONNACK, _P.DISCONNECT),
    _spec(
        0x1F,
        "reason_string",
        WireType.UTF8,
        _P.CONNACK,
        *_ACKS,
        _P.SUBACK,
        _P.UNSUBACK,
        _P.DISCONNECT,
        _P.AUTH,
    ),
    _spec(0x21, "receive_maximum", WireType.U16, _P.CONNECT, _P.CONNACK, zero_error=ProtocolError),
    _spec(0x22, "topic_alias_maximum", WireType.U16, _P.CONNECT, _P.CONNACK),
    _spec(0x23, "topic_alias", WireType.U16, _P.PUBLISH, zero_error=TopicAliasInvalid),
    _spec(0x24, "maximum_qos", WireType.BYTE, _P.CONNACK, boolean=True),
    _spec(0x25, "retain_available", WireType.BYTE, _P.CONNACK, boolean=True),
    _spec(
        0x26,
        "user_properties",
        WireType.UTF8_PAIR,
        *_ALL_WITH_PROPERTIES,
        many=True,
        repeatable_in=_ALL_WITH_PROPERTIES,
    ),
    _spec(0x27, "maximum_packet_size", WireType.U32, _P.CONNECT, _P.CONNACK, zero_error=ProtocolError),
    _spec(0x28, "wildcard_subscription_available", WireType.BYTE, _P.CONNACK, boolean=True),
    _spec(0x29, "subscription_identifier_available", WireType.BYTE, _P.CONNACK, boolean=True),
    _spec(0x2A, "shared_subscription_available", WireType.BYTE, _P.CONNACK, boolean=True),
)

BY_IDENTIFIER: dict[int, PropertySpec] = {s.identifier: s for s in PROPERTY_TABLE}
# Indexed by the identifier byte; every identifier defined by 5.0 is a one-byte variable byte integer,
# so a first byte >= 0x80 (a longer identifier) is simply unknown.
_BY_BYTE: tuple[PropertySpec | None, ...] = tuple(BY_IDENTIFIER.get(i) for i in range(256))


def allowed_fields(where: int) -> tuple[str, ...]:
    """The Properties fields a packet type (or WILL) may carry, in identifier order."""
    return tuple(s.name for s in PROPERTY_TABLE if s.mask >> where & 1)


def _where_name(where: int) -> str:
    return "Will Properties" if where == WILL else PacketType(where).name


def _check_value(spec: PropertySpec, value: int, peer: bool) -> None:
    if spec.boolean and value > 1:
        raise ProtocolError(f"Property {spec.name} must be 0 or 1, not {value}.", peer_at_fault=peer)
    if value == 0 and spec.zero_error is not None:
        raise spec.zero_error(f"Property {spec.name} must not be 0.", peer_at_fault=peer)


# ---------------------------------------------------------------------------------------------- encode


def _encode_one(spec: PropertySpec, value: Any) -> bytes:
    wire = spec.wire
    ident = spec.identifier
    if wire is WireType.UTF8:
        return bytes((ident,)) + encode_string(value)
    if wire is WireType.BINARY:
        return bytes((ident,)) + encode_binary(value)
    if wire is WireType.UTF8_PAIR:
        return bytes((ident,)) + encode_string(value[0]) + encode_string(value[1])
    _check_value(spec, value, peer=False)
    if wire is WireType.VARINT:
        return bytes((ident,)) + encode_varint(value)
    try:
        if wire is WireType.BYTE:
            return bytes((ident, value))
        return bytes((ident,)) + (U16 if wire is WireType.U16 else U32).pack(value)
    except (struct.error, ValueError, OverflowError) as exc:
        raise MalformedPacket(
            f"Property {spec.name} value {value!r} does not fit its field.", peer_at_fault=False
        ) from exc


def encode_properties(props: Properties, where: int) -> bytes:
    """Property Length followed by every present property, in identifier order."""
    if props is NO_PROPERTIES:
        return b"\x00"
    parts: list[bytes] = []
    for spec in PROPERTY_TABLE:
        value = getattr(props, spec.name)
        if value is None or value == ():
            continue
        if not spec.mask >> where & 1:
            raise MalformedPacket(
                f"Property {spec.name} cannot be sent in {_where_name(where)}.", peer_at_fault=False
            )
        if spec.many:
            if len(value) > 1 and where not in spec.repeatable_in:
                raise ProtocolError(
                    f"Property {spec.name} may appear only once in {_where_name(where)}.", peer_at_fault=False
                )
            parts.extend(_encode_one(spec, item) for item in value)
        else:
            parts.append(_encode_one(spec, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


# ---------------------------------------------------------------------------------------------- decode


def decode_properties(buf: Buffer, pos: int, end: int, where: int) -> tuple[Properties, int]:
    """Read a Property Length and the properties it covers; returns NO_PROPERTIES when there are none."""
    length, pos = decode_varint(buf, pos, end)
    if length == 0:
        return NO_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise MalformedPacket("The property length runs past the end of the packet.")
    values: dict[str, Any] = {}
    user: list[tuple[str, str]] = []
    sub_ids: list[int] = []
    while pos < stop:
        spec = _BY_BYTE[buf[pos]]
        if spec is None:
            raise MalformedPacket(f"Property identifier 0x{buf[pos]:02X} is not defined.")
        if not spec.mask >> where & 1:
            raise MalformedPacket(f"Property {spec.name} is not valid in {_where_name(where)}.")
        pos += 1
        wire = spec.wire
        value: Any
        if wire is WireType.UTF8_PAIR:
            key, pos = decode_string(buf, pos, stop)
            val, pos = decode_string(buf, pos, stop)
            user.append((key, val))
            continue
        if wire is WireType.VARINT:  # only the Subscription Identifier
            value, pos = decode_varint(buf, pos, stop)
            _check_value(spec, value, peer=True)
            if sub_ids and where not in spec.repeatable_in:
                raise ProtocolError(f"Property {spec.name} appears more than once.")
            sub_ids.append(value)
            continue
        if spec.name in values:
            raise ProtocolError(f"Property {spec.name} appears more than once.")
        if wire is WireType.UTF8:
            value, pos = decode_string(buf, pos, stop)
        elif wire is WireType.BINARY:
            value, pos = decode_binary(buf, pos, stop)
        else:
            if wire is WireType.BYTE:
                if pos >= stop:
                    raise MalformedPacket(f"Property {spec.name} runs past the end of the properties.")
                value = buf[pos]
                pos += 1
            elif wire is WireType.U16:
                value, pos = decode_u16(buf, pos, stop)
            else:
                value, pos = decode_u32(buf, pos, stop)
            _check_value(spec, value, peer=True)
        values[spec.name] = value
    if user:
        values["user_properties"] = tuple(user)
    if sub_ids:
        values["subscription_identifiers"] = tuple(sub_ids)
    return Properties(**values), stop
