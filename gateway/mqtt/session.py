"""The server side of one MQTT connection, as a state machine over bytes (3.1.1 and 5.0).

Theory of operation
-------------------
A `ServerSession` lives exactly as long as one network connection. Bytes go in with `receive_data`;
`next_event` returns, one at a time, the packets the broker must act on, or a `Violation` that ends the
connection. The broker answers through `encode` (bytes the transport writes) and tells the machine
about the few facts it cannot see by itself (`attach` for the inbound QoS 2 ids of the MQTT session,
`acks_flushed` when a batch of PUBACKs went out). Nothing here reads a clock, touches a socket or knows
about subscriptions: time comes in as `now`, MQTT session state (§4.1) is the broker's. The broker may
stop taking events mid-read (it holds a client back); what is left stays in the reader until asked.

    AWAIT_CONNECT --CONNECT--> CONNECTED --DISCONNECT--> CLOSED
          |                        |
          +--- anything else, a decoder error or a timeout: a Violation ---> CLOSED

The table `_TRANSITIONS` says, for each state and packet type, the next state or the violation the
packet is; once connected, the types it refuses are refused from their first byte, before their body is
decoded (a second CONNECT is a Protocol Error even if it would not parse). What the table cannot say is
checked per packet: topic aliases are resolved (5.0 §3.3.2.3.4) so the broker only ever sees full topic
names, topic names are validated (wildcards are 0x90), a Response Topic must be a topic name (0x82),
and the client's use of our Receive Maximum is counted (§4.9: QoS 1 PUBLISHes not yet acknowledged plus
QoS 2 ids awaiting PUBREL). The first violation closes the machine for good.

Outbound, `aliased` gives a 5.0 client that accepts topic aliases (its CONNECT's Topic Alias Maximum)
the PUBLISHes the broker sends it with aliases: per connection, never carried over [MQTT-3.3.2-7].

A violation becomes wire bytes in one place, `farewell`: in 5.0 a DISCONNECT with its reason code, or a
CONNACK if the connection never got past CONNECT; in 3.1.1 nothing (the spec's answer is to close),
except an unsupported protocol level, which gets a 3.1.1-framed CONNACK 0x01 so that old clients
understand it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Set
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from gateway.mqtt.codec import PacketReader, encode, with_topic_alias
from gateway.mqtt.errors import (
    MqttError,
    ProtocolError,
    ReceiveMaximumExceeded,
    RefusedPacketType,
    TopicAliasInvalid,
    UnsupportedProtocolVersion,
)
from gateway.mqtt.packets import (
    NO_PROPERTIES,
    PACKET_TYPE_OF,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Properties,
    ProtocolVersion,
    Publish,
)
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.topics import validate_topic_name

__all__ = ["AliasRewrite", "ConnectionState", "ServerSession", "Violation", "reason_of"]


class AliasRewrite(Protocol):
    """What `codec.with_topic_alias` is: a PUBLISH's bytes with a topic alias."""

    def __call__(self, data: bytes, alias: int, *, send_topic: bool) -> bytes: ...


class ConnectionState(Enum):
    AWAIT_CONNECT = "await_connect"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol (or timed out): the connection ends."""

    reason: str  # stable snake_case: "malformed_packet", "second_connect", "keep_alive_timeout", ...
    reason_code: int  # the 5.0 reason code
    during_connect: bool  # no CONNACK was sent yet: a 5.0 answer is a CONNACK, not a DISCONNECT
    notify: bool = True  # False: close without a word (e.g. the CONNECT never came)
    protocol_level: int | None = None  # of a CONNECT whose protocol level we do not speak


@dataclass(frozen=True, slots=True)
class _Reject:
    reason: str
    code: ReasonCode = ReasonCode.PROTOCOL_ERROR


_S = ConnectionState
_P = PacketType
_BEFORE_CONNECT = _Reject("packet_before_connect")  # [MQTT-3.1.0-1]
_SERVER_ONLY = _Reject("server_packet_from_client")

# state → packet type → next state, or the violation that packet is in that state. CLOSED is absent:
# nothing is read once a connection is closed.
_TRANSITIONS: dict[ConnectionState, dict[PacketType, ConnectionState | _Reject]] = {
    _S.AWAIT_CONNECT: {t: (_S.CONNECTED if t is _P.CONNECT else _BEFORE_CONNECT) for t in _P},
    _S.CONNECTED: {
        _P.CONNECT: _Reject("second_connect"),  # [MQTT-3.1.0-2]
        _P.CONNACK: _SERVER_ONLY,
        _P.PUBLISH: _S.CONNECTED,
        _P.PUBACK: _S.CONNECTED,
        _P.PUBREC: _S.CONNECTED,
        _P.PUBREL: _S.CONNECTED,
        _P.PUBCOMP: _S.CONNECTED,
        _P.SUBSCRIBE: _S.CONNECTED,
        _P.SUBACK: _SERVER_ONLY,
        _P.UNSUBSCRIBE: _S.CONNECTED,
        _P.UNSUBACK: _SERVER_ONLY,
        _P.PINGREQ: _S.CONNECTED,
        _P.PINGRESP: _SERVER_ONLY,
        _P.DISCONNECT: _S.CLOSED,
        # We never announce an authentication method, so AUTH is a protocol error (§4.12).
        _P.AUTH: _Reject("unexpected_auth"),
    },
}

_V5 = ProtocolVersion.MQTT_5
_V311 = ProtocolVersion.MQTT_3_1_1
# The states as plain globals for the per-packet code (receive_data, next_event): in Python 3.11 an
# Enum member read off its class (`ConnectionState.CONNECTED`) costs ~6 times a global's load, and a
# PUBLISH read five of them (docs/benchmarks.md, issue 18, fifth round).
_AWAIT_CONNECT, _CONNECTED, _CLOSED = _S.AWAIT_CONNECT, _S.CONNECTED, _S.CLOSED

# The packet types the table refuses once connected: the reader refuses them from their first byte
# (RefusedPacketType), so a second CONNECT or a client-sent SUBACK is the Protocol Error the table says
# even when its body would not decode. AUTH does not exist in 3.1.1 (a reserved type, malformed there).
_REFUSED_WHEN_CONNECTED = {
    version: frozenset(
        int(t)
        for t, rule in _TRANSITIONS[_S.CONNECTED].items()
        if isinstance(rule, _Reject) and (version == _V5 or t is not _P.AUTH)
    )
    for version in (_V311, _V5)
}
_NO_MAX = 268_435_455 + 5  # larger than any MQTT packet


def _check_response_topic(topic: str) -> None:
    """A Response Topic is a topic name (§3.3.2.3.5): wildcards are a Protocol Error [MQTT-3.3.2-14], and
    so is an empty one (every topic name has a character, [MQTT-4.7.3-1]). A string that is not UTF-8
    or holds U+0000 never gets here: the decoder refuses it as a Malformed Packet (§1.5.4)."""
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError("The Response Topic must be a topic name: not empty and without wildcards.")


def reason_of(exc: MqttError) -> str:
    """The snake_case name of an MQTT error class: MalformedPacket -> malformed_packet."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class ServerSession:
    """Protocol state of one server-side connection."""

    # Outbound topic aliases (§3.3.2.3.4), made at CONNECT only for a 5.0 client that accepts them
    # (most units do not: two objects fewer per connection for the collector to walk): topic -> alias
    # in least-recently-used order, and topics that missed once while every alias was taken.
    _out_aliases: OrderedDict[str, int]
    _alias_misses: OrderedDict[str, None]

    def __init__(
        self,
        *,
        now: float,
        connect_timeout: float = 10.0,
        max_packet_size: int = 256 * 1024,
        receive_maximum: int = 100,
        topic_alias_maximum: int = 32,
        max_keep_alive: int = 600,
    ) -> None:
        self.state = ConnectionState.AWAIT_CONNECT
        self.opened_at = now
        self.last_packet_at = now
        self.keep_alive = 0  # effective keep alive in seconds; 0 = none
        self.server_keep_alive: int | None = None  # announced in a 5.0 CONNACK when we override
        self.client_receive_maximum = 65535
        self.client_max_packet_size = _NO_MAX
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self._connect_timeout = connect_timeout
        self._max_keep_alive = max_keep_alive
        self._reader = PacketReader(max_packet_size=max_packet_size)
        self._now = now
        self._head = b""  # first bytes while awaiting CONNECT: which dialect to answer a bad CONNECT in
        self._pending: Violation | None = None
        self._aliases: dict[int, str] = {}
        self.outbound_alias_maximum = 0  # 0 until a 5.0 CONNECT accepts aliases (then the maps exist)
        self._inbound_qos2: Set[int] = frozenset()
        self._qos1_unacked = 0
        # Per-message shortcuts, set once the CONNECT fixed the protocol version: the version itself
        # (read on every PUBLISH), the last topic that passed validation (telemetry repeats its topic),
        # and the last PUBLISH handed out unchanged (the broker may forward its bytes as they came).
        self.version: ProtocolVersion | None = None
        self.is_v5 = False
        self._valid_topic: str | None = None  # not "": an empty topic name is never valid
        self._last_publish: Publish | None = None

    # --- facts --------------------------------------------------------------------------------

    def attach(self, inbound_qos2: Set[int]) -> None:
        """The MQTT session's inbound QoS 2 ids (awaiting PUBREL) count against our Receive Maximum."""
        self._inbound_qos2 = inbound_qos2

    def acks_flushed(self, withheld: int = 0) -> None:
        """Every QoS 1 PUBLISH received so far has been acknowledged, but for `withheld` QoS 1/2
        PUBLISHes the broker holds back unacknowledged (they still count against our Receive Maximum;
        a held QoS 2 id is not among the session's inbound QoS 2 ids until it is released)."""
        self._qos1_unacked = withheld

    def heard(self, now: float) -> None:
        """Count the connection as heard from now: the broker resumed reading it after a pause of its
        own making, which must not pass for a silent client at the next keep-alive check."""
        self.last_packet_at = max(self.last_packet_at, now)

    def fits(self, size: int) -> bool:
        """May a packet of `size` bytes be sent to this client (its Maximum Packet Size, §3.1.2.11.4)?"""
        return size <= self.client_max_packet_size

    # --- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self.state is _AWAIT_CONNECT and len(self._head) < 16:
            if not self._head and data and data[0] >> 4 != PacketType.CONNECT:
                self._pending = Violation("packet_before_connect", ReasonCode.PROTOCOL_ERROR, True)
            self._head += data[: 16 - len(self._head)]
        self._reader.feed(data)

    def next_event(self) -> Packet | Violation | None:
        """The next packet for the broker, a Violation (after which the machine is CLOSED), or None."""
        if self.state is _CLOSED:
            return None
        if self._pending is not None:
            return self._fail(self._pending)
        reader = self._reader
        if reader._error is None and len(reader._buf) - reader._pos < 2:
            # What next_packet() would say (no packet can be complete), without the call. The read is
            # consumed, so the last PUBLISH is handled: let it go now rather than hold it until the
            # client's next read (a second later, for a unit), long enough for the garbage collector
            # to move it to the old generation and make the next full collection come sooner.
            self._last_publish = None
            return None
        during_connect = self.state is _AWAIT_CONNECT
        try:
            packet = reader.next_packet()
            if packet is None:
                self._last_publish = None
                return None
            if type(packet) is Publish and self.state is _CONNECTED:
                # The hot path: what the table says for it (stay CONNECTED), without the lookups.
                publish = self._last_publish = self._inbound_publish(packet)
                self.last_packet_at = self._now
                return publish
            rule = _TRANSITIONS[self.state][PACKET_TYPE_OF[type(packet)]]
            if isinstance(rule, _Reject):
                return self._fail(Violation(rule.reason, rule.code, during_connect))
            if type(packet) is Publish:
                packet = self._inbound_publish(packet)
            elif type(packet) is Connect:
                self.version = self._reader.version
                self.is_v5 = self.version == _V5
                self._negotiate(packet)
                if self.version is not None:
                    self._reader.refuse(_REFUSED_WHEN_CONNECTED[self.version])
        except RefusedPacketType as refusal:  # mypyc: one name per handler (compiled code types it once)
            refused = _TRANSITIONS[self.state][PacketType(refusal.packet_type)]
            assert isinstance(refused, _Reject)
            return self._fail(Violation(refused.reason, refused.code, during_connect))
        except UnsupportedProtocolVersion as unsupported:
            code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
            return self._fail(
                Violation("unsupported_protocol_version", code, True, True, unsupported.protocol_level)
            )
        except MqttError as exc:
            return self._fail(Violation(reason_of(exc), exc.reason_code, during_connect))
        self.last_packet_at = self._now
        self.state = rule
        return packet

    def _fail(self, violation: Violation) -> Violation:
        self.state = ConnectionState.CLOSED
        self._pending = None
        return violation

    def _negotiate(self, connect: Connect) -> None:
        # Keep alive (§3.1.2.10, §3.2.2.3.14): we cap it, and also impose it on clients that asked for
        # none, so a silently dead connection cannot hold a unit's session forever. A 5.0 client is
        # told; a 3.1.1 client has no way to be told and is simply held to the cap.
        asked = connect.keep_alive
        cap = self._max_keep_alive
        self.keep_alive = cap if cap > 0 and (asked == 0 or asked > cap) else asked
        if connect.protocol_version == _V5:
            if connect.will is not None and connect.will.properties.response_topic is not None:
                _check_response_topic(connect.will.properties.response_topic)
            if self.keep_alive != asked:
                self.server_keep_alive = self.keep_alive
            props = connect.properties
            if props.receive_maximum is not None:
                self.client_receive_maximum = props.receive_maximum
            if props.maximum_packet_size is not None:
                self.client_max_packet_size = props.maximum_packet_size
            # We use at most as many aliases towards the client as we accept from it, so a client
            # that allows 65,535 cannot make us keep 65,535 topics per connection.
            self.outbound_alias_maximum = min(props.topic_alias_maximum or 0, self.topic_alias_maximum)
            if self.outbound_alias_maximum:
                self._out_aliases, self._alias_misses = OrderedDict(), OrderedDict()

    def forwardable(self, publish: Publish) -> bytes | None:
        """The bytes `publish` arrived as, if a subscriber on this protocol version would be sent
        exactly these (its packet id aside, which the broker patches in): the PUBLISH the last
        next_event() returned, unchanged (no topic alias resolved), without RETAIN, DUP or properties.
        Valid until next_event() returns None (the read is consumed); None otherwise."""
        if (
            publish is not self._last_publish
            or publish.retain
            or publish.dup
            or publish.properties is not NO_PROPERTIES
        ):
            return None
        return self._reader.last_publish_wire()

    def _inbound_publish(self, publish: Publish) -> Publish:
        # A 5.0 PUBLISH without properties (the codec hands out the one NO_PROPERTIES) has no topic
        # alias, subscription identifier or response topic to look at: only its topic name to check.
        if self.is_v5 and (publish.properties is not NO_PROPERTIES or not publish.topic):
            publish = self._resolve_alias(publish)
            props = publish.properties
            if props.subscription_identifiers:
                raise ProtocolError("A client PUBLISH carries a subscription identifier.")  # §3.3.4
            if props.response_topic is not None:
                _check_response_topic(props.response_topic)
        topic = publish.topic
        if topic != self._valid_topic:  # a string compare is far cheaper than validating it again
            validate_topic_name(topic)
            self._valid_topic = topic
        if publish.qos:
            if publish.qos == 1:
                self._qos1_unacked += 1
            used = self._qos1_unacked + len(self._inbound_qos2)
            if publish.qos == 2 and publish.packet_id not in self._inbound_qos2:
                used += 1
            # 3.1.1 has no Receive Maximum: a 3.1.1 client may pipeline as much as it likes.
            if self.is_v5 and used > self.receive_maximum:
                raise ReceiveMaximumExceeded(
                    f"More than {self.receive_maximum} QoS 1/2 publications are unacknowledged."
                )
        return publish

    def _resolve_alias(self, publish: Publish) -> Publish:
        alias = publish.properties.topic_alias
        if alias is None:
            if not publish.topic:
                raise ProtocolError("A PUBLISH has neither a topic name nor a topic alias.")
            return publish
        if alias > self.topic_alias_maximum:
            raise TopicAliasInvalid(f"Topic alias {alias} exceeds our maximum {self.topic_alias_maximum}.")
        topic = publish.topic
        if topic:
            self._aliases[alias] = topic
        else:
            known = self._aliases.get(alias)
            if known is None:
                raise ProtocolError(f"Topic alias {alias} was never set on this connection.")
            topic = known
        return replace(publish, topic=topic, properties=replace(publish.properties, topic_alias=None))

    def aliased(self, data: bytes, topic: str, rewrite: AliasRewrite = with_topic_alias) -> bytes:
        """`data`, a PUBLISH of `topic` encoded for this client, sent with an outbound topic alias where
        that pays; call only when `outbound_alias_maximum` > 0, with the bytes about to be sent.

        A topic with an alias goes out as a zero-length topic name plus the alias (3 bytes for the whole
        name). A new topic takes a free alias, sent once with its name. When every alias is taken, a
        topic must miss twice (within the last `outbound_alias_maximum` misses) before it takes the
        least recently used alias: a stream of distinct topics then passes unaliased instead of
        evicting an alias per message, each eviction costing 3 bytes more than sending no alias at all.
        `rewrite` makes the bytes (the broker passes one that remembers them for a fan-out).
        """
        aliases = self._out_aliases
        alias = aliases.get(topic)
        if alias is not None:
            aliases.move_to_end(topic)
            return rewrite(data, alias, send_topic=False)
        victim = None
        if len(aliases) < self.outbound_alias_maximum:
            alias = len(aliases) + 1
        else:
            misses = self._alias_misses
            if topic not in misses:
                misses[topic] = None
                if len(misses) > self.outbound_alias_maximum:
                    misses.popitem(last=False)
                return data
            del misses[topic]
            victim, alias = next(iter(aliases.items()))
        out = rewrite(data, alias, send_topic=True)
        if not self.fits(len(out)):
            return data  # 3 bytes over the client's maximum: sent without an alias, nothing changed
        if victim is not None:
            del aliases[victim]
        aliases[topic] = alias
        return out

    # --- timers -------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When this connection times out unless a packet arrives: CONNECT timeout, then 1.5 x keep alive."""
        if self.state is ConnectionState.AWAIT_CONNECT:
            return self.opened_at + self._connect_timeout
        if self.state is ConnectionState.CONNECTED and self.keep_alive:
            return self.last_packet_at + 1.5 * self.keep_alive  # [MQTT-3.1.2-22]
        return None

    def check_timeout(self, now: float) -> Violation | None:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        if self.state is ConnectionState.AWAIT_CONNECT:
            return self._fail(Violation("connect_timeout", ReasonCode.PROTOCOL_ERROR, True, notify=False))
        return self._fail(Violation("keep_alive_timeout", ReasonCode.KEEP_ALIVE_TIMEOUT, False))

    # --- output -------------------------------------------------------------------------------

    def encode(self, packet: Packet) -> bytes:
        version = self._reader.version
        if version is None:
            raise ProtocolError("Nothing can be sent before CONNECT.", peer_at_fault=False)
        return encode(packet, version)

    def farewell(self, violation: Violation) -> bytes:
        """The last bytes the client gets for a violation (may be empty: 3.1.1 just closes)."""
        if not violation.notify:
            return b""
        if violation.protocol_level is not None:
            # A level we don't speak: MQTT 3.x clients can parse only a 3.1.1 CONNACK (0x01); anything
            # newer than 5 gets the 5.0 form (0x84), the closest to what it will understand.
            framing = _V5 if violation.protocol_level > 5 else _V311
            return encode(Connack(reason_code=violation.reason_code), framing)
        version = self._reader.version
        if version is None and violation.during_connect:
            version = self._level_hint()
        if version != _V5:
            return b""
        if violation.during_connect:
            return encode(Connack(reason_code=violation.reason_code), _V5)
        return encode(Disconnect(violation.reason_code), _V5)

    def disconnect(self, reason_code: int, reason_string: str | None = None) -> bytes:
        """A server-initiated DISCONNECT (5.0 only; a 3.1.1 server just closes). Closes the machine."""
        was_connected = self.state is ConnectionState.CONNECTED
        self.state = ConnectionState.CLOSED
        if not was_connected or not self.is_v5:
            return b""
        if reason_string:
            data = encode(Disconnect(reason_code, Properties(reason_string=reason_string)), _V5)
            if self.fits(len(data)):
                return data
        return encode(Disconnect(reason_code), _V5)

    def close(self) -> None:
        self.state = ConnectionState.CLOSED

    def _level_hint(self) -> ProtocolVersion | None:
        """The protocol level of a CONNECT that failed to decode, read from its first bytes."""
        head = self._head
        pos = 1
        while pos < len(head) and head[pos] & 0x80:  # skip the remaining length
            pos += 1
        pos += 1
        if pos + 2 > len(head):
            return None
        pos += 2 + int.from_bytes(head[pos : pos + 2], "big")  # protocol name
        if pos >= len(head):
            return None
        return _V5 if head[pos] == 5 else _V311 if head[pos] == 4 else None
