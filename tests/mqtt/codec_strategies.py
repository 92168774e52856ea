"""Hypothesis strategies for valid MQTT packets, restricted to what each protocol version can carry.

Properties are generated from the property table itself (every field a packet may carry, with values
inside the spec's ranges), so a new row in properties.py is exercised without touching this file.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from hypothesis import strategies as st

from gateway.mqtt.packets import (
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
from gateway.mqtt.properties import PROPERTY_TABLE, WILL, PropertySpec, WireType
from gateway.mqtt.reason_codes import ReasonCode

V3 = ProtocolVersion.MQTT_3_1_1
V5 = ProtocolVersion.MQTT_5

# MQTT strings: any Unicode scalar value except U+0000 (surrogates cannot be UTF-8 encoded at all).
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
binary = st.binary(max_size=16)
packet_id = st.integers(1, 0xFFFF)
reason = st.integers(0, 0xFF)


def _value(spec: PropertySpec) -> st.SearchStrategy[Any]:
    low = 1 if spec.zero_error is not None else 0
    match spec.wire:
        case WireType.BYTE:
            return st.integers(0, 1 if spec.boolean else 0xFF)
        case WireType.U16:
            return st.integers(low, 0xFFFF)
        case WireType.U32:
            return st.integers(low, 0xFFFF_FFFF)
        case WireType.VARINT:
            return st.integers(low, 268_435_455)
        case WireType.UTF8:
            return text
        case WireType.BINARY:
            return binary
        case WireType.UTF8_PAIR:
            return st.tuples(text, text)
    raise AssertionError(spec.wire)


def _field(spec: PropertySpec, where: int) -> st.SearchStrategy[Any]:
    if not spec.many:
        return _value(spec)
    most = 3 if where in spec.repeatable_in else 1
    return st.lists(_value(spec), min_size=1, max_size=most).map(tuple)


def _fix_auth(props: Properties) -> Properties:
    # Authentication Data needs an Authentication Method (a Protocol Error otherwise).
    if props.authentication_data is not None and props.authentication_method is None:
        return dataclasses.replace(props, authentication_method="m")
    return props


def properties(where: int) -> st.SearchStrategy[Properties]:
    optional = {s.name: _field(s, where) for s in PROPERTY_TABLE if s.mask >> where & 1}
    return st.fixed_dictionaries({}, optional=optional).map(lambda d: _fix_auth(Properties(**d)))


def _props(version: ProtocolVersion, where: int) -> st.SearchStrategy[Properties]:
    return properties(where) if version is V5 else st.just(NO_PROPERTIES)


@st.composite
def connects(draw: st.DrawFn, version: ProtocolVersion) -> Connect:
    will = draw(st.none() | st.builds(Will, text, binary, st.integers(0, 2), st.booleans(),
                                      _props(version, WILL)))
    username = draw(st.none() | text)
    # 3.1.1 has no password without a user name [MQTT-3.1.2-22].
    password = draw(st.none() | binary) if username is not None or version is V5 else None
    return Connect(draw(text), version, draw(st.booleans()), draw(st.integers(0, 0xFFFF)), username,
                   password, will, draw(_props(version, PacketType.CONNECT)))


# What a 3.1.1 CONNACK can say: the reasons its six return codes decode to.
_CONNACK_311 = (ReasonCode.SUCCESS, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, ReasonCode.SERVER_UNAVAILABLE,
                ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.NOT_AUTHORIZED)


@st.composite
def connacks(draw: st.DrawFn, version: ProtocolVersion) -> Connack:
    code = draw(reason if version is V5 else st.sampled_from(_CONNACK_311).map(int))
    present = draw(st.booleans()) if code == 0 else False  # [MQTT-3.2.2-6]
    return Connack(present, code, draw(_props(version, PacketType.CONNACK)))


@st.composite
def publishes(draw: st.DrawFn, version: ProtocolVersion) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(_props(version, PacketType.PUBLISH))
    return Publish(draw(text), draw(st.binary(max_size=300)), qos, draw(st.booleans()),
                   draw(st.booleans()) if qos else False, draw(packet_id) if qos else None, props)


def acks(cls: type[Puback | Pubrec | Pubrel | Pubcomp], ptype: PacketType,
         version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    if version is V3:
        return st.builds(cls, packet_id)
    return st.builds(cls, packet_id, reason, properties(ptype))


def subscriptions(version: ProtocolVersion) -> st.SearchStrategy[Subscription]:
    if version is V3:
        return st.builds(Subscription, text, st.integers(0, 2))
    return st.builds(Subscription, text, st.integers(0, 2), st.booleans(), st.booleans(),
                     st.sampled_from(RetainHandling))


@functools.cache
def packets(version: ProtocolVersion) -> dict[str, st.SearchStrategy[Packet]]:
    """One strategy per packet type, keyed by name, for the given version."""
    v3 = version is V3
    table: dict[str, st.SearchStrategy[Packet]] = {
        "connect": connects(version),
        "connack": connacks(version),
        "publish": publishes(version),
        "puback": acks(Puback, PacketType.PUBACK, version),
        "pubrec": acks(Pubrec, PacketType.PUBREC, version),
        "pubrel": acks(Pubrel, PacketType.PUBREL, version),
        "pubcomp": acks(Pubcomp, PacketType.PUBCOMP, version),
        "subscribe": st.builds(Subscribe, packet_id,
                               st.lists(subscriptions(version), min_size=1, max_size=4).map(tuple),
                               _props(version, PacketType.SUBSCRIBE)),
        "suback": st.builds(Suback, packet_id,
                            st.lists(st.sampled_from((0, 1, 2, 0x80)) if v3 else reason,
                                     min_size=1, max_size=5).map(tuple),
                            _props(version, PacketType.SUBACK)),
        "unsubscribe": st.builds(Unsubscribe, packet_id, st.lists(text, min_size=1, max_size=4).map(tuple),
                                 _props(version, PacketType.UNSUBSCRIBE)),
        "unsuback": st.builds(Unsuback, packet_id) if v3 else st.builds(
            Unsuback, packet_id, st.lists(reason, min_size=1, max_size=5).map(tuple),
            properties(PacketType.UNSUBACK)),
        "pingreq": st.just(Pingreq()),
        "pingresp": st.just(Pingresp()),
        "disconnect": st.just(Disconnect()) if v3 else st.builds(
            Disconnect, reason, properties(PacketType.DISCONNECT)),
    }
    if not v3:
        table["auth"] = st.builds(Auth, reason, properties(PacketType.AUTH))
    return table


@functools.cache
def any_packet(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    return st.one_of(*packets(version).values())
