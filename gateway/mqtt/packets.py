"""MQTT control packets as frozen values, one model for 3.1.1 and 5.0.

The codec turns bytes into these values and back; the session and the broker only ever see these.
Fields that exist only in 5.0 (properties, reason codes on acks) have neutral defaults, and the
codec leaves them out when it writes 3.1.1. A packet value is protocol-version independent: the
version is a property of the connection, passed to the codec.

Reason codes are stored as plain ints (see reason_codes.ReasonCode for the names) so a packet decoded
from the wire can carry a code this version of the gateway has no name for without failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ProtocolVersion(IntEnum):
    MQTT_3_1_1 = 4
    MQTT_5 = 5


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


@dataclass(frozen=True, slots=True)
class Properties:
    """MQTT 5.0 properties (§2.2.2.2). None / empty means absent. Identifiers in comments."""

    payload_format_indicator: int | None = None  # 0x01 byte
    message_expiry_interval: int | None = None  # 0x02 four-byte int
    content_type: str | None = None  # 0x03 utf-8
    response_topic: str | None = None  # 0x08 utf-8
    correlation_data: bytes | None = None  # 0x09 binary
    subscription_identifiers: tuple[int, ...] = ()  # 0x0B varint, may repeat in PUBLISH
    session_expiry_interval: int | None = None  # 0x11 four-byte int
    assigned_client_identifier: str | None = None  # 0x12 utf-8
    server_keep_alive: int | None = None  # 0x13 two-byte int
    authentication_method: str | None = None  # 0x15 utf-8
    authentication_data: bytes | None = None  # 0x16 binary
    request_problem_information: int | None = None  # 0x17 byte
    will_delay_interval: int | None = None  # 0x18 four-byte int
    request_response_information: int | None = None  # 0x19 byte
    response_information: str | None = None  # 0x1A utf-8
    server_reference: str | None = None  # 0x1C utf-8
    reason_string: str | None = None  # 0x1F utf-8
    receive_maximum: int | None = None  # 0x21 two-byte int
    topic_alias_maximum: int | None = None  # 0x22 two-byte int
    topic_alias: int | None = None  # 0x23 two-byte int
    maximum_qos: int | None = None  # 0x24 byte
    retain_available: int | None = None  # 0x25 byte
    user_properties: tuple[tuple[str, str], ...] = ()  # 0x26 utf-8 pair, may repeat, order kept
    maximum_packet_size: int | None = None  # 0x27 four-byte int
    wildcard_subscription_available: int | None = None  # 0x28 byte
    subscription_identifier_available: int | None = None  # 0x29 byte
    shared_subscription_available: int | None = None  # 0x2A byte


NO_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES  # 5.0 will properties (will delay, expiry, ...)


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    protocol_version: ProtocolVersion = ProtocolVersion.MQTT_5
    clean_start: bool = True  # 3.1.1 "clean session"
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool = False
    reason_code: int = 0  # 5.0 reason code; the codec maps it to a 3.1.1 return code when needed
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str  # "" only on the wire in 5.0 when a topic alias stands for it
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # required for QoS 1 and 2, absent for QoS 0
    properties: Properties = NO_PROPERTIES

    # Written out, not generated: compiled (gateway/app/compiled.py), mypyc turns these into direct
    # slot writes, where the dataclass's own __init__ would run interpreted (about 700 ns a packet,
    # against 40). Interpreted, it is what the dataclass would generate. One PUBLISH in, one out.
    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        properties: Properties = NO_PROPERTIES,
    ) -> None:
        object.__setattr__(self, "topic", topic)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "qos", qos)
        object.__setattr__(self, "retain", retain)
        object.__setattr__(self, "dup", dup)
        object.__setattr__(self, "packet_id", packet_id)
        object.__setattr__(self, "properties", properties)


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def __init__(self, packet_id: int, reason_code: int = 0, properties: Properties = NO_PROPERTIES) -> None:
        object.__setattr__(self, "packet_id", packet_id)  # written out: see Publish
        object.__setattr__(self, "reason_code", reason_code)
        object.__setattr__(self, "properties", properties)


@dataclass(frozen=True, slots=True)
class Pubrec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubcomp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


class RetainHandling(IntEnum):
    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


@dataclass(frozen=True, slots=True)
class Subscription:
    topic_filter: str
    qos: int = 0  # maximum QoS requested
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES  # subscription identifier, user properties


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    reason_codes: tuple[int, ...]  # granted QoS (0..2) or an error code (>= 0x80; 3.1.1 writes 0x80)
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int
    reason_codes: tuple[int, ...] = ()  # 5.0 only; 3.1.1 UNSUBACK carries none
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int = 0  # 5.0 only; a 3.1.1 DISCONNECT has no body
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

PACKET_TYPE_OF: dict[type, PacketType] = {
    Connect: PacketType.CONNECT,
    Connack: PacketType.CONNACK,
    Publish: PacketType.PUBLISH,
    Puback: PacketType.PUBACK,
    Pubrec: PacketType.PUBREC,
    Pubrel: PacketType.PUBREL,
    Pubcomp: PacketType.PUBCOMP,
    Subscribe: PacketType.SUBSCRIBE,
    Suback: PacketType.SUBACK,
    Unsubscribe: PacketType.UNSUBSCRIBE,
    Unsuback: PacketType.UNSUBACK,
    Pingreq: PacketType.PINGREQ,
    Pingresp: PacketType.PINGRESP,
    Disconnect: PacketType.DISCONNECT,
    Auth: PacketType.AUTH,
}
