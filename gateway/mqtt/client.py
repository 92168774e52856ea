"""A sans-IO MQTT client core (3.1.1 and 5.0): what a truck, a test or the load generator speaks.

Bytes in (`receive_data`), events out (the packets the application cares about, plus `PublishDone`
when one of our QoS 1/2 messages has completed); bytes out through `data_to_send`. The core runs the
QoS flows itself: it answers PUBLISH with PUBACK or PUBREC, PUBREC with PUBREL, PUBREL with PUBCOMP.
Inbound QoS 2 is "method B" (§4.3.3): a message is delivered once, when its PUBLISH first arrives, and
its packet id is remembered until PUBREL so a retransmission is not delivered twice.

With `auto_ack=False` the application acknowledges each QoS>0 message itself (`ack`), which lets a test
hold the broker's in-flight window open. No clock: keep-alive is the caller's business (`ping`).
Errors in what the server sends raise the codec's MqttError from `receive_data`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.mqtt.codec import PacketReader, encode
from gateway.mqtt.packets import (
    NO_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)

__all__ = ["ClientEvent", "MqttClient", "PublishDone"]


@dataclass(frozen=True, slots=True)
class PublishDone:
    """One of our QoS>0 PUBLISHes is finished (PUBACK, PUBCOMP, or a PUBREC carrying an error)."""

    packet_id: int
    reason_code: int


ClientEvent = Connack | Publish | PublishDone | Suback | Unsuback | Pingresp | Disconnect


class MqttClient:
    def __init__(
        self,
        client_id: str,
        *,
        version: ProtocolVersion = ProtocolVersion.MQTT_5,
        keep_alive: int = 60,
        clean_start: bool = True,
        will: Will | None = None,
        properties: Properties = NO_PROPERTIES,
        auto_ack: bool = True,
    ) -> None:
        self.client_id = client_id
        self.version = version
        self.keep_alive = keep_alive
        self.clean_start = clean_start
        self.will = will
        self.properties = properties
        self.auto_ack = auto_ack
        self.connack: Connack | None = None
        self.pending: dict[int, Publish] = {}  # our QoS>0 messages not yet completed
        self.released: set[int] = set()  # QoS 2: PUBREC received, PUBREL sent
        self.inbound_qos2: set[int] = set()  # server's QoS 2 ids awaiting PUBREL
        self._requests: set[int] = set()  # SUBSCRIBE/UNSUBSCRIBE ids awaiting their ack
        self._aliases: dict[int, str] = {}
        self._reader = PacketReader(version=version)
        self._out: list[bytes] = []
        self._last_id = 0

    @property
    def connected(self) -> bool:
        return self.connack is not None and self.connack.reason_code < 0x80

    # --- output -------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def send_packet(self, packet: Packet) -> None:
        self._out.append(encode(packet, self.version))

    def send_raw(self, data: bytes) -> None:
        self._out.append(data)

    def connect(self) -> None:
        self.send_packet(
            Connect(
                self.client_id,
                self.version,
                self.clean_start,
                self.keep_alive,
                will=self.will,
                properties=self.properties,
            )
        )

    def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
    ) -> int | None:
        packet_id = self._next_id() if qos else None
        publish = Publish(topic, payload, qos, retain, packet_id=packet_id, properties=properties)
        if packet_id is not None:
            self.pending[packet_id] = publish
        self.send_packet(publish)
        return packet_id

    def subscribe(
        self, *subscriptions: Subscription | str, qos: int = 0, properties: Properties = NO_PROPERTIES
    ) -> int:
        subs = tuple(s if isinstance(s, Subscription) else Subscription(s, qos) for s in subscriptions)
        packet_id = self._next_id()
        self._requests.add(packet_id)
        self.send_packet(Subscribe(packet_id, subs, properties))
        return packet_id

    def unsubscribe(self, *topic_filters: str, properties: Properties = NO_PROPERTIES) -> int:
        packet_id = self._next_id()
        self._requests.add(packet_id)
        self.send_packet(Unsubscribe(packet_id, topic_filters, properties))
        return packet_id

    def ping(self) -> None:
        self.send_packet(Pingreq())

    def disconnect(self, reason_code: int = 0, properties: Properties = NO_PROPERTIES) -> None:
        self.send_packet(Disconnect(reason_code, properties))

    def ack(self, publish: Publish) -> None:
        """Acknowledge a received message (only needed with auto_ack=False)."""
        if publish.packet_id is None:
            return
        if publish.qos == 1:
            self.send_packet(Puback(publish.packet_id))
        elif publish.qos == 2:
            self.send_packet(Pubrec(publish.packet_id))

    def resend_pending(self) -> None:
        """After a reconnect with session present: resend unfinished flows, in order (§4.4)."""
        for packet_id, publish in self.pending.items():
            if packet_id in self.released:
                self.send_packet(Pubrel(packet_id))
            else:
                self.send_packet(replace(publish, dup=True))

    def _next_id(self) -> int:
        for _ in range(65535):
            self._last_id = self._last_id % 65535 + 1
            if self._last_id not in self.pending and self._last_id not in self._requests:
                return self._last_id
        raise RuntimeError("no free packet identifier")

    # --- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        self._reader.feed(data)
        events: list[ClientEvent] = []
        while (packet := self._reader.next_packet()) is not None:
            event = self._handle(packet)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, packet: Packet) -> ClientEvent | None:
        if isinstance(packet, Publish):
            return self._on_publish(packet)
        if isinstance(packet, Puback | Pubcomp):
            self.pending.pop(packet.packet_id, None)
            self.released.discard(packet.packet_id)
            return PublishDone(packet.packet_id, packet.reason_code)
        if isinstance(packet, Pubrec):
            return self._on_pubrec(packet)
        if isinstance(packet, Pubrel):
            self.inbound_qos2.discard(packet.packet_id)
            self.send_packet(Pubcomp(packet.packet_id))
            return None
        if isinstance(packet, Connack):
            self.connack = packet
            return packet
        if isinstance(packet, Suback | Unsuback):
            self._requests.discard(packet.packet_id)
            return packet
        if isinstance(packet, Pingresp | Disconnect):
            return packet
        return None  # nothing else is sent to clients; the codec has already checked the rest

    def _on_publish(self, publish: Publish) -> Publish | None:
        alias = publish.properties.topic_alias
        if alias is not None:
            topic = publish.topic or self._aliases.get(alias, "")
            self._aliases[alias] = topic
            publish = replace(publish, topic=topic, properties=replace(publish.properties, topic_alias=None))
        if publish.qos == 2:
            fresh = publish.packet_id not in self.inbound_qos2
            self.inbound_qos2.add(publish.packet_id)  # type: ignore[arg-type]  # QoS 2 always has one
            if self.auto_ack or not fresh:
                self.send_packet(Pubrec(publish.packet_id))  # type: ignore[arg-type]
            return publish if fresh else None
        if publish.qos == 1 and self.auto_ack:
            self.send_packet(Puback(publish.packet_id))  # type: ignore[arg-type]
        return publish

    def _on_pubrec(self, packet: Pubrec) -> PublishDone | None:
        if packet.reason_code >= 0x80:
            self.pending.pop(packet.packet_id, None)
            return PublishDone(packet.packet_id, packet.reason_code)
        self.released.add(packet.packet_id)
        self.send_packet(Pubrel(packet.packet_id))
        return None
