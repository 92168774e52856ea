"""Encode and decode every MQTT 3.1.1 and 5.0 control packet; no I/O (bytes in, packet values out).

Theory of operation
-------------------
`PacketReader` owns one connection's inbound byte stream: a buffer and a read offset. When nothing is
pending, `feed()` keeps the caller's bytes as the buffer (no copy); only a packet split across reads is
accumulated in a bytearray. Each `next_packet()` looks at the fixed header at the offset, checks the
packet type and flags (one table lookup) and the Remaining Length (against `max_packet_size`, before
waiting for the body), and once the whole packet is there decodes it: a PUBLISH in place, anything else
from a copy of its body. Consumed bytes are dropped at most once per `feed()`, so a burst of many
packets in one read costs one copy per packet, never one per remaining buffer. The first error poisons
the reader: a stream that went wrong once cannot be trusted to re-synchronise.

Decoders are strict: every rule of the spec that can be checked from one packet alone is checked here,
with the error class the 5.0 spec names (Malformed Packet for bytes that cannot be parsed, Protocol Error
for parsed values the protocol forbids). 3.1.1 has no reason codes, so for it the distinction only
matters to logs; where the 5.0 rule is a Protocol Error we still report 3.1.1 violations as malformed.
What needs connection state (topic aliases, packet-id bookkeeping, topic syntax, a second CONNECT) is
the session's job.

Encoders trust the packet model's types but not its values: a value the wire cannot carry raises a
MalformedPacket/ProtocolError with peer_at_fault=False. `encode_publish` is the fan-out fast path.
"""

from __future__ import annotations

import dataclasses
import struct
import types
from collections.abc import Callable
from typing import Any

from .errors import (
    MalformedPacket,
    MqttError,
    PacketTooLarge,
    ProtocolError,
    RefusedPacketType,
    UnsupportedProtocolVersion,
)
from .packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from .properties import WILL, decode_properties, encode_properties
from .reason_codes import connack_code_for_311, connack_reason_from_311
from .wire import (
    MAX_VARINT,
    U16,
    Buffer,
    decode_binary,
    decode_byte,
    decode_string,
    decode_u16,
    decode_varint,
    encode_binary,
    encode_string,
    encode_varint,
)

__all__ = [
    "PacketReader",
    "decode_packet",
    "encode",
    "encode_publish",
    "puback_success",
    "publish_at_qos0",
    "with_topic_alias",
]

_V5 = ProtocolVersion.MQTT_5
_T = PacketType
# Read for every packet: an int global, not `_T.PUBLISH` (an Enum member read off its class costs ~6
# times a global's load in Python 3.11).
_PUBLISH = int(PacketType.PUBLISH)

# What struct.pack and bytes() raise for a value that does not fit its field (a negative or too large
# keep alive, reason code, ...); encode() turns them into MalformedPacket(peer_at_fault=False).
_VALUE_ERRORS = (struct.error, ValueError, OverflowError)


def _local(exc: Exception) -> MalformedPacket:
    return MalformedPacket(
        f"A packet field holds a value the wire format cannot carry: {exc}.", peer_at_fault=False
    )


def _violation(v5: bool, message: str) -> MqttError:
    """A rule 5.0 calls a Protocol Error; 3.1.1 has no such category, so there it is malformed."""
    return ProtocolError(message) if v5 else MalformedPacket(message)


def _is_empty(props: Properties) -> bool:
    return props is NO_PROPERTIES or props == NO_PROPERTIES


# ================================================================================================ encode


def _frame(first: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    size = len(body)
    if size < 128:
        return bytes((first, size)) + body
    if size > MAX_VARINT:
        raise PacketTooLarge("The packet is longer than MQTT allows.", peer_at_fault=False)
    return bytes((first,)) + encode_varint(size) + body


def _packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ProtocolError(f"Packet identifier {packet_id!r} is not in 1..65535.", peer_at_fault=False)
    return U16.pack(packet_id)


def _enc_connect(p: Connect, version: ProtocolVersion) -> bytes:
    if p.protocol_version != version:
        raise ProtocolError(
            f"A {p.protocol_version.name} CONNECT cannot be sent on a {version.name} connection.",
            peer_at_fault=False,
        )
    v5 = version == _V5
    flags = 0x02 if p.clean_start else 0
    payload = [encode_string(p.client_id)]
    will = p.will
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise MalformedPacket(f"Will QoS {will.qos} is not 0, 1 or 2.", peer_at_fault=False)
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        if v5:
            payload.append(encode_properties(will.properties, WILL))
        payload += (encode_string(will.topic), encode_binary(will.payload))
    if p.username is not None:
        flags |= 0x80
        payload.append(encode_string(p.username))
    if p.password is not None:
        if not v5 and p.username is None:
            raise ProtocolError("MQTT 3.1.1 cannot send a password without a user name.", peer_at_fault=False)
        flags |= 0x40
        payload.append(encode_binary(p.password))
    if v5:
        _check_auth_pair(p.properties, peer=False)
    props = encode_properties(p.properties, _T.CONNECT) if v5 else b""
    header = b"\x00\x04MQTT" + bytes((version, flags)) + U16.pack(p.keep_alive)
    return _frame(0x10, header, props, *payload)


def _enc_connack(p: Connack, version: ProtocolVersion) -> bytes:
    if p.session_present and p.reason_code:
        raise ProtocolError("A refusing CONNACK cannot say a session is present.", peer_at_fault=False)
    flags = 1 if p.session_present else 0
    if version == _V5:
        return _frame(0x20, bytes((flags, p.reason_code)), encode_properties(p.properties, _T.CONNACK))
    return bytes((0x20, 2, flags, connack_code_for_311(p.reason_code)))


def _enc_ack(first: int, ptype: PacketType, p: Puback | Pubrec | Pubrel | Pubcomp, v5: bool) -> bytes:
    pid = _packet_id(p.packet_id)
    if not v5:
        return bytes((first, 2)) + pid
    empty = _is_empty(p.properties)
    if empty and not p.reason_code:
        return bytes((first, 2)) + pid  # §3.4.2.1: reason 0 and no properties may be left out
    if empty:
        return bytes((first, 3)) + pid + bytes((p.reason_code,))  # §3.4.2.2.1: no property length
    return _frame(first, pid, bytes((p.reason_code,)), encode_properties(p.properties, ptype))


def _enc_subscribe(p: Subscribe, version: ProtocolVersion) -> bytes:
    if not p.subscriptions:
        raise ProtocolError("A SUBSCRIBE needs at least one subscription.", peer_at_fault=False)
    v5 = version == _V5
    parts = [_packet_id(p.packet_id)]
    if v5:
        parts.append(encode_properties(p.properties, _T.SUBSCRIBE))
    for sub in p.subscriptions:
        if not 0 <= sub.qos <= 2 or not 0 <= sub.retain_handling <= 2:
            raise MalformedPacket(
                f"Subscription options for {sub.topic_filter!r} are out of range.", peer_at_fault=False
            )
        options = sub.qos
        if v5:
            options |= sub.no_local << 2 | sub.retain_as_published << 3 | sub.retain_handling << 4
        parts += (encode_string(sub.topic_filter), bytes((options,)))
    return _frame(0x82, *parts)


def _suback_code_311(code: int) -> int:
    if code >= 0x80:
        return 0x80
    if code > 2:
        raise MalformedPacket(f"SUBACK code 0x{code:02X} has no MQTT 3.1.1 form.", peer_at_fault=False)
    return code


def _enc_suback(p: Suback, version: ProtocolVersion) -> bytes:
    if version == _V5:
        return _frame(
            0x90, _packet_id(p.packet_id), encode_properties(p.properties, _T.SUBACK), bytes(p.reason_codes)
        )
    return _frame(0x90, _packet_id(p.packet_id), bytes(_suback_code_311(c) for c in p.reason_codes))


def _enc_unsubscribe(p: Unsubscribe, version: ProtocolVersion) -> bytes:
    if not p.topic_filters:
        raise ProtocolError("An UNSUBSCRIBE needs at least one topic filter.", peer_at_fault=False)
    props = encode_properties(p.properties, _T.UNSUBSCRIBE) if version == _V5 else b""
    return _frame(0xA2, _packet_id(p.packet_id), props, *map(encode_string, p.topic_filters))


def _enc_unsuback(p: Unsuback, version: ProtocolVersion) -> bytes:
    if version == _V5:
        return _frame(
            0xB0, _packet_id(p.packet_id), encode_properties(p.properties, _T.UNSUBACK), bytes(p.reason_codes)
        )
    return bytes((0xB0, 2)) + _packet_id(p.packet_id)


def _enc_disconnect(p: Disconnect, version: ProtocolVersion) -> bytes:
    if version != _V5:
        return b"\xe0\x00"
    empty = _is_empty(p.properties)
    if empty and not p.reason_code:
        return b"\xe0\x00"  # §3.14.2.1: normal disconnection with no properties may be left out
    if empty:
        return bytes((0xE0, 1, p.reason_code))
    return _frame(0xE0, bytes((p.reason_code,)), encode_properties(p.properties, _T.DISCONNECT))


def _enc_auth(p: Auth, version: ProtocolVersion) -> bytes:
    if version != _V5:
        raise ProtocolError("AUTH does not exist in MQTT 3.1.1.", peer_at_fault=False)
    if not p.reason_code and _is_empty(p.properties):
        return b"\xf0\x00"  # §3.15.2.1: success with no properties may be left out
    _check_auth_pair(p.properties, peer=False)
    return _frame(0xF0, bytes((p.reason_code,)), encode_properties(p.properties, _T.AUTH))


_ENCODERS: dict[type, Callable[[Any, ProtocolVersion], bytes]] = {
    Connect: _enc_connect,
    Connack: _enc_connack,
    Puback: lambda p, v: _enc_ack(0x40, _T.PUBACK, p, v == _V5),
    Pubrec: lambda p, v: _enc_ack(0x50, _T.PUBREC, p, v == _V5),
    Pubrel: lambda p, v: _enc_ack(0x62, _T.PUBREL, p, v == _V5),
    Pubcomp: lambda p, v: _enc_ack(0x70, _T.PUBCOMP, p, v == _V5),
    Subscribe: _enc_subscribe,
    Suback: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    Unsuback: _enc_unsuback,
    Pingreq: lambda p, v: b"\xc0\x00",
    Pingresp: lambda p, v: b"\xd0\x00",
    Disconnect: _enc_disconnect,
    Auth: _enc_auth,
}


def encode(packet: Packet, version: ProtocolVersion) -> bytes:
    """The wire bytes of `packet` for a connection speaking `version`.

    3.1.1 drops what it cannot say (properties, ack reason codes, UNSUBACK codes) and translates CONNACK
    reasons and SUBACK failures to its own codes. A value that cannot be written at all raises an
    MqttError with peer_at_fault=False.
    """
    if type(packet) is Publish:
        return encode_publish(packet, version)
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"{type(packet).__name__} is not an MQTT packet.")
    try:
        return encoder(packet, version)
    except _VALUE_ERRORS as exc:
        raise _local(exc) from exc


def encode_publish(publish: Publish, version: ProtocolVersion) -> bytes:
    """PUBLISH fast path: the broker encodes a message once and writes the bytes to every subscriber."""
    topic = publish.topic
    try:
        topic_bytes = topic.encode()
    except UnicodeEncodeError as exc:
        raise _local(exc) from None
    tlen = len(topic_bytes)
    if tlen > 0xFFFF or "\x00" in topic:
        raise MalformedPacket("The topic is too long or contains U+0000.", peer_at_fault=False)
    props = publish.properties
    if version == _V5:
        prop_bytes = b"\x00" if props is NO_PROPERTIES else encode_properties(props, _T.PUBLISH)
    else:
        prop_bytes = b""
    payload = publish.payload
    qos = publish.qos
    first = 0x30 | qos << 1 | (1 if publish.retain else 0) | (8 if publish.dup else 0)
    if qos:
        if qos > 2 or qos < 0:
            raise MalformedPacket(f"QoS {qos} is not 0, 1 or 2.", peer_at_fault=False)
        pid = _packet_id(publish.packet_id)
        size = 4 + tlen + len(prop_bytes) + len(payload)
    else:
        if publish.packet_id is not None or publish.dup:
            raise ProtocolError(
                "A QoS 0 PUBLISH carries neither a packet identifier nor DUP.", peer_at_fault=False
            )
        pid = b""
        size = 2 + tlen + len(prop_bytes) + len(payload)
    # Fixed header and topic length in one bytes() call; one- and two-byte remaining lengths inline.
    if size < 128:
        head = bytes((first, size, tlen >> 8, tlen & 0xFF))
    elif size < 16_384:
        head = bytes((first, (size & 0x7F) | 0x80, size >> 7, tlen >> 8, tlen & 0xFF))
    elif size <= MAX_VARINT:
        head = bytes((first,)) + encode_varint(size) + U16.pack(tlen)
    else:
        raise PacketTooLarge("The PUBLISH is longer than MQTT allows.", peer_at_fault=False)
    return b"".join((head, topic_bytes, pid, prop_bytes, payload))


def publish_at_qos0(data: bytes) -> bytes:
    """The QoS 0 form of a PUBLISH's bytes without RETAIN or DUP (as encode_publish makes them, or as a
    client sent them): the same topic, properties and payload, without the packet identifier. So a
    QoS 1 message forwarded to a QoS 0 subscription is rewritten, not decoded and encoded again."""
    first = data[0]
    if not first & 0x06:
        return data
    if first & 0x09:
        raise ProtocolError("Only a PUBLISH without RETAIN or DUP has a QoS 0 form.", peer_at_fault=False)
    # One- and two-byte remaining lengths (every telemetry message) inline, as in encode_publish.
    if data[1] < 128:
        size, body = data[1], 2
    elif 0 < data[2] < 128:
        size, body = (data[1] & 0x7F) | data[2] << 7, 3
    else:
        size, body = decode_varint(data, 1, len(data))
    size -= 2
    if size < 128:
        head = bytes((0x30, size))
    elif size < 16_384:
        head = bytes((0x30, (size & 0x7F) | 0x80, size >> 7))
    else:
        head = bytes((0x30,)) + encode_varint(size)
    topic_end = body + 2 + (data[body] << 8 | data[body + 1])
    return b"".join((head, data[body:topic_end], data[topic_end + 2 :]))


def puback_success(packet_id: int) -> bytes:
    """PUBACK with reason 0x00 and no properties: the same bytes in 3.1.1 and 5.0 (§3.4.2.1)."""
    if not 0 < packet_id <= 0xFFFF:
        raise ProtocolError(f"Packet identifier {packet_id!r} is not in 1..65535.", peer_at_fault=False)
    return bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))


def with_topic_alias(data: bytes, alias: int, *, send_topic: bool) -> bytes:
    """The bytes of a 5.0 PUBLISH (as encode_publish makes them, without a Topic Alias) carrying Topic
    Alias `alias` (§3.3.2.3.4): with its topic name when `send_topic` (the alias is being set), else with
    a zero-length topic name (the alias stands for it). The alias property goes first in the property
    list, whose order the spec leaves free, so the rest of the packet is copied as it is."""
    pos = 1
    while data[pos] & 0x80:  # remaining length
        pos += 1
    body = pos + 1
    topic_end = body + 2 + (data[body] << 8 | data[body + 1])
    props_at = topic_end + (2 if data[0] & 0x06 else 0)  # the packet id of QoS 1 and 2
    length, props_body = decode_varint(data, props_at, len(data))
    parts = (
        data[body:topic_end] if send_topic else b"\x00\x00",
        data[topic_end:props_at],
        encode_varint(length + 3),
        bytes((0x23, alias >> 8, alias & 0xFF)),
        data[props_body:],
    )
    size = sum(map(len, parts))
    return b"".join((bytes((data[0],)), encode_varint(size), *parts))


def _check_auth_pair(props: Properties, *, peer: bool) -> None:
    # §3.1.2.11.10 / §3.15.2.2.3: Authentication Data without an Authentication Method.
    if props.authentication_data is not None and props.authentication_method is None:
        raise ProtocolError(
            "Authentication data was sent without an authentication method.", peer_at_fault=peer
        )


# ================================================================================================ decode

_Decoder = Callable[[int, bytes, bool], Packet]


def _trailing(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MalformedPacket(f"The {what} ends with {end - pos} unexpected byte(s).")


def _dec_packet_id(body: Buffer, pos: int, end: int, v5: bool) -> tuple[int, int]:
    pid, pos = decode_u16(body, pos, end)
    if not pid:
        raise _violation(v5, "Packet identifier 0 is not allowed.")
    return pid, pos


def _dec_connect(flags: int, body: bytes, _v5: bool) -> Connect:
    end = len(body)
    name, pos = decode_string(body, 0, end)
    level, pos = decode_byte(body, pos, end)
    # Name and level first: an older client's CONNECT lays out differently, and the server must be able
    # to answer it "unacceptable protocol version" instead of "malformed".
    if name not in ("MQTT", "MQIsdp"):
        raise MalformedPacket(f"Protocol name {name!r} is not MQTT.")
    if name == "MQIsdp" or level not in (4, 5):
        raise UnsupportedProtocolVersion(level)
    v5 = level == 5
    cflags, pos = decode_byte(body, pos, end)
    if cflags & 0x01:
        raise MalformedPacket("The reserved CONNECT flag is set.")  # [MQTT-3.1.2-3]
    will_qos = (cflags >> 3) & 3
    if cflags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("Will QoS is 3.")  # [MQTT-3.1.2-12]
    elif cflags & 0x38:
        raise MalformedPacket("Will QoS or Will Retain is set without the Will flag.")  # [MQTT-3.1.2-11/13]
    if not v5 and cflags & 0xC0 == 0x40:
        raise MalformedPacket("MQTT 3.1.1 does not allow a password without a user name.")  # [MQTT-3.1.2-22]
    keep_alive, pos = decode_u16(body, pos, end)
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, end, _T.CONNECT)
        _check_auth_pair(props, peer=True)
    client_id, pos = decode_string(body, pos, end)
    will = None
    if cflags & 0x04:
        will_props = NO_PROPERTIES
        if v5:
            will_props, pos = decode_properties(body, pos, end, WILL)
        will_topic, pos = decode_string(body, pos, end)
        will_payload, pos = decode_binary(body, pos, end)
        will = Will(will_topic, will_payload, will_qos, bool(cflags & 0x20), will_props)
    username = password = None
    if cflags & 0x80:
        username, pos = decode_string(body, pos, end)
    if cflags & 0x40:
        password, pos = decode_binary(body, pos, end)
    _trailing(pos, end, "CONNECT")
    return Connect(
        client_id, ProtocolVersion(level), bool(cflags & 0x02), keep_alive, username, password, will, props
    )


def _dec_connack(flags: int, body: bytes, v5: bool) -> Connack:
    end = len(body)
    if end < 2:
        raise MalformedPacket("The CONNACK is too short.")
    ack_flags, code = body[0], body[1]
    if ack_flags & 0xFE:
        raise MalformedPacket("Reserved CONNACK acknowledge flags are set.")  # [MQTT-3.2.2-1]
    if v5:
        props, pos = decode_properties(body, 2, end, _T.CONNACK)
        _trailing(pos, end, "CONNACK")
        reason = code
    else:
        _trailing(2, end, "CONNACK")
        props, reason = NO_PROPERTIES, int(connack_reason_from_311(code))
    if ack_flags and reason:
        raise _violation(v5, "A refusing CONNACK says a session is present.")  # [MQTT-3.2.2-6]
    return Connack(bool(ack_flags), reason, props)


# Interpreted, a frozen dataclass builds itself through object.__setattr__ once per field, which
# doubles the cost of a decoded PUBLISH: the slot descriptors set the same fields directly (the value is
# identical: packets.py has no __post_init__; the field list is checked against the model at import).
# Compiled by mypyc (gateway/app/compiled.py), Publish is a native class, which refuses object.__new__:
# there the constructor is the fast way.
_PUBLISH_FIELDS = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
if tuple(f.name for f in dataclasses.fields(Publish)) != _PUBLISH_FIELDS:  # pragma: no cover
    raise RuntimeError("packets.Publish changed its fields; update codec._PUBLISH_FIELDS.")
_new = object.__new__
_set_topic, _set_payload, _set_qos, _set_retain, _set_dup, _set_pid, _set_props = (
    getattr(Publish, name).__set__ for name in _PUBLISH_FIELDS
)


def _dec_publish(flags: int, body: Buffer, start: int, end: int, v5: bool) -> Publish:
    """Decode the PUBLISH in body[start:end]; `body` is the reader's buffer, so nothing is copied twice."""
    # QoS 3 and DUP on QoS 0 were refused with the first byte (_check_first_byte).
    if end - start < 2:
        raise MalformedPacket("The PUBLISH is too short for its topic length.")
    pos = start + 2 + ((body[start] << 8) | body[start + 1])
    if pos > end:
        raise MalformedPacket("The PUBLISH topic runs past the end of the packet.")
    try:
        topic = body[start + 2 : pos].decode()  # strict UTF-8 as in wire.decode_string, inlined
    except UnicodeDecodeError:
        raise MalformedPacket("The PUBLISH topic is not well-formed UTF-8.") from None
    if "\x00" in topic:
        raise MalformedPacket("The PUBLISH topic contains the null character U+0000.")
    qos = (flags >> 1) & 3
    pid = None
    if qos:
        pid = (body[pos] << 8) | body[pos + 1] if pos + 2 <= end else 0  # _dec_packet_id, inlined
        if pid:
            pos += 2
        else:
            _dec_packet_id(body, pos, end, v5)  # raises the precise error (too short, or id 0)
    props = NO_PROPERTIES
    if v5:
        if pos < end and body[pos] == 0:  # the common case: no properties
            pos += 1
        else:
            props, pos = decode_properties(body, pos, end, _T.PUBLISH)
    payload = body[pos:end]
    if _COMPILED:
        return Publish(
            topic,
            payload if type(payload) is bytes else bytes(payload),
            qos,
            flags & 1 == 1,
            flags & 8 == 8,
            pid,
            props,
        )
    packet = _new(Publish)
    _set_topic(packet, topic)
    _set_payload(packet, payload if type(payload) is bytes else bytes(payload))
    _set_qos(packet, qos)
    _set_retain(packet, flags & 1 == 1)
    _set_dup(packet, flags & 8 == 8)
    _set_pid(packet, pid)
    _set_props(packet, props)
    return packet


_COMPILED = not isinstance(_dec_publish, types.FunctionType)  # mypyc's functions are built-in ones


def _dec_ack(cls: type[Puback | Pubrec | Pubrel | Pubcomp], ptype: PacketType) -> _Decoder:
    def decode(flags: int, body: bytes, v5: bool) -> Packet:
        end = len(body)
        pid, pos = _dec_packet_id(body, 0, end, v5)
        if end == 2:
            return cls(pid)
        if not v5:
            raise MalformedPacket(f"A 3.1.1 {ptype.name} must be exactly two bytes long.")
        if end == 3:  # reason code without property length (§3.4.2.2.1)
            return cls(pid, body[2])
        props, pos = decode_properties(body, 3, end, ptype)
        _trailing(pos, end, ptype.name)
        return cls(pid, body[2], props)

    return decode


def _dec_subscribe(flags: int, body: bytes, v5: bool) -> Subscribe:
    end = len(body)
    pid, pos = _dec_packet_id(body, 0, end, v5)
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, end, _T.SUBSCRIBE)
    subs: list[Subscription] = []
    while pos < end:
        topic_filter, pos = decode_string(body, pos, end)
        options, pos = decode_byte(body, pos, end)
        qos = options & 3
        if options & (0xC0 if v5 else 0xFC):
            raise MalformedPacket("Reserved subscription option bits are set.")  # [MQTT-3.8.3-5]
        if qos == 3:
            raise _violation(v5, "A subscription asks for QoS 3.")
        if not v5:
            subs.append(Subscription(topic_filter, qos))
            continue
        retain_handling = options >> 4
        if retain_handling == 3:
            raise ProtocolError("A subscription has Retain Handling 3.")
        subs.append(
            Subscription(
                topic_filter, qos, bool(options & 4), bool(options & 8), RetainHandling(retain_handling)
            )
        )
    if not subs:
        raise _violation(v5, "A SUBSCRIBE has no subscriptions.")  # [MQTT-3.8.3-2]
    return Subscribe(pid, tuple(subs), props)


def _dec_suback(flags: int, body: bytes, v5: bool) -> Suback:
    end = len(body)
    pid, pos = _dec_packet_id(body, 0, end, v5)
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, end, _T.SUBACK)
    codes = tuple(body[pos:])
    if not codes:
        raise _violation(v5, "A SUBACK has no reason codes.")
    if not v5 and any(c > 2 and c != 0x80 for c in codes):
        raise MalformedPacket("A 3.1.1 SUBACK return code is not 0, 1, 2 or 0x80.")  # [MQTT-3.9.3-2]
    return Suback(pid, codes, props)


def _dec_unsubscribe(flags: int, body: bytes, v5: bool) -> Unsubscribe:
    end = len(body)
    pid, pos = _dec_packet_id(body, 0, end, v5)
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, end, _T.UNSUBSCRIBE)
    filters: list[str] = []
    while pos < end:
        topic_filter, pos = decode_string(body, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise _violation(v5, "An UNSUBSCRIBE has no topic filters.")  # [MQTT-3.10.3-2]
    return Unsubscribe(pid, tuple(filters), props)


def _dec_unsuback(flags: int, body: bytes, v5: bool) -> Unsuback:
    end = len(body)
    pid, pos = _dec_packet_id(body, 0, end, v5)
    if not v5:
        _trailing(pos, end, "UNSUBACK")
        return Unsuback(pid)
    props, pos = decode_properties(body, pos, end, _T.UNSUBACK)
    codes = tuple(body[pos:])
    if not codes:
        raise ProtocolError("An UNSUBACK has no reason codes.")
    return Unsuback(pid, codes, props)


def _dec_empty(cls: type[Pingreq | Pingresp]) -> _Decoder:
    instance = cls()

    def decode(flags: int, body: bytes, v5: bool) -> Packet:
        _trailing(0, len(body), cls.__name__.upper())
        return instance

    return decode


def _dec_reason_and_props(cls: type[Disconnect | Auth], ptype: PacketType) -> _Decoder:
    # DISCONNECT (§3.14.2) and AUTH (§3.15.2): an empty body means reason 0, no properties; a one-byte
    # body is a reason without a property length (AUTH spells out only the empty form; we accept both).
    def decode(flags: int, body: bytes, v5: bool) -> Packet:
        end = len(body)
        if not v5:
            _trailing(0, end, ptype.name)
            return cls()
        if end == 0:
            return cls()
        if end == 1:
            return cls(body[0])
        props, pos = decode_properties(body, 1, end, ptype)
        _trailing(pos, end, ptype.name)
        if ptype is _T.AUTH:
            _check_auth_pair(props, peer=True)
        return cls(body[0], props)

    return decode


def _dec_reserved(flags: int, body: bytes, v5: bool) -> Packet:
    raise MalformedPacket("Packet type 0 is reserved.")  # never reached: the first-byte check refuses it


_DECODERS: tuple[_Decoder, ...] = (
    _dec_reserved,
    _dec_connect,
    _dec_connack,
    lambda flags, body, v5: _dec_publish(flags, body, 0, len(body), v5),  # the reader calls it directly
    _dec_ack(Puback, _T.PUBACK),
    _dec_ack(Pubrec, _T.PUBREC),
    _dec_ack(Pubrel, _T.PUBREL),
    _dec_ack(Pubcomp, _T.PUBCOMP),
    _dec_subscribe,
    _dec_suback,
    _dec_unsubscribe,
    _dec_unsuback,
    _dec_empty(Pingreq),
    _dec_empty(Pingresp),
    _dec_reason_and_props(Disconnect, _T.DISCONNECT),
    _dec_reason_and_props(Auth, _T.AUTH),
)

# §2.1.3: the flags nibble every packet type must carry; None = PUBLISH, whose flags carry meaning.
_REQUIRED_FLAGS: tuple[int | None, ...] = (0, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)


def _first_byte_table(version: ProtocolVersion | None) -> bytes:
    """256 flags, one per possible first byte: 1 if the type and flags nibble are acceptable as is."""
    ok = bytearray(256)
    for first in range(256):
        ptype, flags = first >> 4, first & 0x0F
        try:
            _check_first_byte(ptype, flags, version)
        except MqttError:
            continue
        ok[first] = 1
    return bytes(ok)


def _check_first_byte(ptype: int, flags: int, version: ProtocolVersion | None) -> None:
    if ptype == 0 or (ptype == _T.AUTH and version is not None and version != _V5):
        raise MalformedPacket(f"Packet type {ptype} is reserved.")
    if version is None and ptype != _T.CONNECT:
        raise ProtocolError("The first packet on a connection must be CONNECT.")  # [MQTT-3.1.0-1]
    required = _REQUIRED_FLAGS[ptype]
    if required is not None and flags != required:
        raise MalformedPacket(f"{_T(ptype).name} has header flags {flags:#06b}, not {required:#06b}.")
    if ptype == _T.PUBLISH:
        # Checked here rather than in the body decoder so the error comes as soon as the byte arrives.
        if flags & 0x06 == 0x06:
            raise MalformedPacket("PUBLISH QoS is 3.")  # [MQTT-3.3.1-4]
        if flags & 0x0E == 0x08:
            raise MalformedPacket("DUP is set on a QoS 0 PUBLISH.")  # [MQTT-3.3.1-2]


_FIRST_BYTE_OK = {v: _first_byte_table(v) for v in (None, *ProtocolVersion)}
_REFUSING_TABLES: dict[tuple[ProtocolVersion | None, frozenset[int]], bytes] = {}


def _first_byte_ok(version: ProtocolVersion | None, refused: frozenset[int]) -> bytes:
    """The first-byte table of `version` with every byte of a refused packet type marked not ok."""
    if not refused:
        return _FIRST_BYTE_OK[version]
    table = _REFUSING_TABLES.get((version, refused))
    if table is None:
        ok = bytearray(_FIRST_BYTE_OK[version])
        for first in range(256):
            if first >> 4 in refused:
                ok[first] = 0
        table = _REFUSING_TABLES[(version, refused)] = bytes(ok)
    return table


class PacketReader:
    """Incremental decoder for one direction of one connection.

    `version=None` is a server that has not seen CONNECT yet: the first packet must be CONNECT and its
    protocol level fixes the version. A client calls `set_version()` when it sends its CONNECT.
    `max_packet_size` bounds the whole packet (fixed header included, as 5.0 §3.1.2.11.4 counts it).
    """

    __slots__ = ("_buf", "_error", "_first_ok", "_max", "_pos", "_publish_at", "_refused", "_v5", "_version")

    def __init__(self, *, max_packet_size: int = 268_435_455, version: ProtocolVersion | None = None) -> None:
        self._buf: Buffer = b""
        self._pos = 0
        self._publish_at = -1  # where the PUBLISH last returned by next_packet() starts in _buf
        self._max = max_packet_size
        self._error: MqttError | None = None
        self._refused: frozenset[int] = frozenset()
        self.set_version(version)

    @property
    def version(self) -> ProtocolVersion | None:
        return self._version

    def set_version(self, version: ProtocolVersion | None) -> None:
        self._version = version
        self._v5 = version == _V5
        self._first_ok = _first_byte_ok(version, self._refused)

    def refuse(self, packet_types: frozenset[int]) -> None:
        """From now on a packet of one of these types raises RefusedPacketType as soon as its first byte
        is read (the session machine's table decides which types; it costs the hot path nothing)."""
        self._refused = packet_types
        self._first_ok = _first_byte_ok(self._version, packet_types)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            return  # a poisoned stream is never read again; don't hold on to more of it
        self._publish_at = -1
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # Nothing pending (the usual case): read the caller's bytes in place. bytes() of a bytes
            # object is the object itself, so this copies only a bytearray or memoryview.
            self._buf = bytes(data)
        elif isinstance(buf, bytes):
            # A packet is split across reads: start accumulating, in a bytearray so that a large packet
            # arriving in many small reads is appended in amortised constant time, never re-copied.
            self._buf = bytearray(memoryview(buf)[pos:])
            self._buf += data
        else:
            del buf[:pos]  # drop what was consumed, once per feed: linear however many packets it held
            buf += data
        self._pos = 0

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes arrive; raises MqttError on bad input."""
        if self._error is not None:
            raise self._error.with_traceback(None)  # the same error again, without piling up tracebacks
        buf = self._buf
        pos = self._pos
        have = len(buf)
        if have - pos < 2:
            return None
        try:
            first = buf[pos]
            if not self._first_ok[first]:
                if first >> 4 in self._refused:
                    raise RefusedPacketType(first >> 4)
                _check_first_byte(first >> 4, first & 0x0F, self._version)  # raises the precise error
            size = buf[pos + 1]
            head = 2
            if size >= 128:
                # Two-byte lengths (128..16383) are the common case for telemetry; inline them.
                if have - pos > 2 and 0 < buf[pos + 2] < 128:
                    size = (size & 0x7F) | buf[pos + 2] << 7
                    head = 3
                else:
                    size, head = self._long_remaining_length(buf, pos, have)
                    if not head:
                        return None
            if head + size > self._max:
                raise PacketTooLarge(f"A {head + size}-byte packet exceeds the {self._max}-byte maximum.")
            end = pos + head + size
            if end > have:
                return None
            self._pos = end
            if first >> 4 == _PUBLISH:  # the hot path: decoded in place, without copying the body out
                publish = _dec_publish(first & 0x0F, buf, pos + head, end, self._v5)
                self._publish_at = pos
                return publish
            self._publish_at = -1
            body = buf[pos + head : end]
            if type(body) is not bytes:
                body = bytes(body)
            packet = _DECODERS[first >> 4](first & 0x0F, body, self._v5)
            if self._version is None:
                assert type(packet) is Connect  # the first-byte table admits nothing else
                self.set_version(packet.protocol_version)
            return packet
        except MqttError as exc:
            self._error = exc
            raise

    def last_publish_wire(self) -> bytes | None:
        """The exact bytes of the PUBLISH the last next_packet() returned, until the next feed().

        A broker that forwards a message unchanged can write these instead of encoding it again.
        None if the last packet was not a PUBLISH or more bytes have been fed since.
        """
        start = self._publish_at
        if start < 0:
            return None
        wire = self._buf[start : self._pos]
        return wire if type(wire) is bytes else bytes(wire)

    @staticmethod
    def _long_remaining_length(buf: Buffer, pos: int, have: int) -> tuple[int, int]:
        """(remaining length, fixed header size) for a multi-byte length; header size 0 = need more."""
        size = 0
        shift = 0
        head = 1
        while True:
            if pos + head >= have:
                return 0, 0
            byte = buf[pos + head]
            head += 1
            size |= (byte & 0x7F) << shift
            if byte < 128:
                if byte == 0:
                    raise MalformedPacket("The remaining length is not minimally encoded.")
                return size, head
            if head == 5:
                raise MalformedPacket("The remaining length has more than four bytes.")
            shift += 7


def decode_packet(data: bytes, version: ProtocolVersion | None = None) -> Packet:
    """Decode exactly one whole packet (for tests and tools); `version=None` expects a CONNECT."""
    reader = PacketReader(version=version)
    reader.feed(data)
    packet = reader.next_packet()
    if packet is None:
        raise MalformedPacket("The data ends before the packet does.")
    if reader.buffered:
        raise MalformedPacket(f"{reader.buffered} bytes follow the packet.")
    return packet
