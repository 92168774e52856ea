"""Errors of the MQTT layer, each carrying the reason code that goes on the wire and who is at fault.

The codec raises these for bytes that break the protocol (peer_at_fault=True: the session answers with a
DISCONNECT or CONNACK carrying `reason_code` and closes) and for values it was asked to encode that cannot
be written (peer_at_fault=False: a bug on our side, never reported to the peer as its fault). Topic and
session rules raise the same classes from topics.py and session.py so there is one vocabulary.
"""

from __future__ import annotations

from typing import ClassVar

from .reason_codes import ReasonCode

__all__ = [
    "MalformedPacket",
    "MqttError",
    "PacketIdInUse",
    "PacketIdNotFound",
    "PacketTooLarge",
    "ProtocolError",
    "ReceiveMaximumExceeded",
    "RefusedPacketType",
    "TopicAliasInvalid",
    "TopicFilterInvalid",
    "TopicNameInvalid",
    "UnsupportedProtocolVersion",
]


class MqttError(Exception):
    """Base of every MQTT-level error; the message is one plain sentence."""

    default_reason: ClassVar[ReasonCode] = ReasonCode.UNSPECIFIED_ERROR

    def __init__(self, message: str, *, peer_at_fault: bool = True, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code: int = self.default_reason if reason_code is None else reason_code
        self.peer_at_fault = peer_at_fault

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r}, reason_code=0x{self.reason_code:02X})"


class MalformedPacket(MqttError):
    default_reason = ReasonCode.MALFORMED_PACKET


class ProtocolError(MqttError):
    default_reason = ReasonCode.PROTOCOL_ERROR


class RefusedPacketType(ProtocolError):
    """A packet whose type alone is a protocol violation where it arrived (a second CONNECT, a packet only
    a server sends, AUTH when none was announced): refused from its first byte, before its body is
    decoded, so a broken body cannot turn the Protocol Error the spec names into a Malformed Packet."""

    def __init__(self, packet_type: int) -> None:
        super().__init__(f"Packet type {packet_type} is not allowed here.")
        self.packet_type = packet_type


class PacketTooLarge(MqttError):
    default_reason = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(MqttError):
    """A CONNECT for a protocol level we do not speak.

    `protocol_level` lets the server answer in the client's own dialect: a 3.1 client (level 3) only
    understands a 3.1.1-style CONNACK with return code 0x01.
    """

    default_reason = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(
        self, protocol_level: int, message: str | None = None, *, peer_at_fault: bool = True
    ) -> None:
        message = message or f"Protocol level {protocol_level} is not supported."
        super().__init__(message, peer_at_fault=peer_at_fault)
        self.protocol_level = protocol_level


class TopicAliasInvalid(MqttError):
    default_reason = ReasonCode.TOPIC_ALIAS_INVALID


class TopicNameInvalid(MqttError):
    default_reason = ReasonCode.TOPIC_NAME_INVALID


class TopicFilterInvalid(MqttError):
    default_reason = ReasonCode.TOPIC_FILTER_INVALID


class ReceiveMaximumExceeded(MqttError):
    default_reason = ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


class PacketIdInUse(MqttError):
    default_reason = ReasonCode.PACKET_IDENTIFIER_IN_USE


class PacketIdNotFound(MqttError):
    default_reason = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
