"""Messages on their way out: encode once, respect the window, queue the rest, handle the client's acks.

Hot path. A routed message is encoded once per distinct wire form (protocol version, QoS, RETAIN flag,
subscription identifiers) and the bytes are shared by every recipient with that form; a QoS>0 copy
only gets its two-byte packet identifier patched in. Most fan-outs (one topic, same options) encode
once in total.

A 5.0 client that accepts topic aliases gets them (ServerSession.aliased): the shared bytes are
rewritten for that one recipient at the last moment, so the encode-once path stays as it is.

Flow control (§4.9): at most min(client's Receive Maximum, BrokerLimits.max_inflight) QoS>0 messages
are unacknowledged per session; the rest waits in the session queue, which is bounded (queues.py says
what is dropped first, and where a persistent session's queue is held); a subscriber far behind
holds back the publishers that feed it (flow.py). QoS 0 is sent at once to a connected client.
Unacknowledged messages are resent, with DUP set, only when a session is resumed (§4.4); PUBREL is
resent for QoS 2 messages the client already acknowledged with PUBREC. A QoS 2 message from the
cluster's store (a persistent session's own consumer) goes out under the packet id the store fixes,
and its PUBREL waits for the session's cluster record (`release_waits`). Expiry (§3.3.2.3.3) applies to
messages that have not been sent yet: they are dropped when they reach the head of the queue too late.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from gateway.broker import flow
from gateway.broker.message import Delivery, Message
from gateway.broker.queues import PAGE, queue_delivery
from gateway.broker.sessions import MqttSession
from gateway.broker.state import BrokerState, Connection
from gateway.mqtt.codec import encode_publish, publish_at_qos0, with_topic_alias
from gateway.mqtt.packets import Properties, ProtocolVersion, Puback, Pubcomp, Publish, Pubrec, Pubrel
from gateway.mqtt.reason_codes import ReasonCode

_V5 = ProtocolVersion.MQTT_5


class EncodeCache:
    """The wire forms of one message at one instant, keyed by what differs between recipients.

    `wire` seeds it with the bytes the message arrived as, (publisher's version, bytes), when they
    are exactly what a recipient on that version would get at the message's QoS without RETAIN
    (ServerSession.forwardable decides that): then a 1→1 or same-version fan-out encodes nothing.
    """

    __slots__ = ("_aliased", "_forms", "_message", "_now", "_wire")

    def __init__(
        self, message: Message, now: float, wire: tuple[ProtocolVersion, bytes] | None = None
    ) -> None:
        self._message = message
        self._now = now
        # Made at the first form that is not `wire` itself (a fan-in message to one subscriber on the
        # publisher's version, the common case, needs neither map).
        self._forms: dict[tuple[int, int, bool, tuple[int, ...]], bytes] | None = None
        self._aliased: dict[tuple[int, bool], tuple[bytes, bytes]] | None = None
        self._wire = wire

    def publish(self, version: ProtocolVersion, delivery: Delivery, *, dup: bool = False) -> bytes:
        template = self.form(version, delivery.qos, delivery.retain, delivery.subscription_ids)
        if delivery.packet_id is None:
            return template
        return with_packet_id(template, delivery.packet_id, dup=dup)

    def form(self, version: ProtocolVersion, qos: int, retain: bool, ids: tuple[int, ...]) -> bytes:
        """The PUBLISH for a recipient on `version` (a QoS>0 form carries a placeholder packet id)."""
        if version != _V5:
            ids = ()
        wire = self._wire
        if wire is not None and wire[0] == version and not retain and not ids and qos == self._message.qos:
            return wire[1]  # the bytes it arrived as: nothing to encode, nothing to remember
        key = (version, qos, retain, ids)
        forms = self._forms
        if forms is None:
            forms = self._forms = {}
        template = forms.get(key)
        if template is None:
            if wire is not None and not qos and not retain and not ids and wire[0] == version:
                # A QoS 1/2 message as it came, to a QoS 0 subscription: the same bytes less the id.
                template = publish_at_qos0(wire[1])
            else:
                template = encode_publish(self._build(version, qos, retain, ids), version)
            forms[key] = template
        return template

    def with_alias(self, data: bytes, alias: int, *, send_topic: bool) -> bytes:
        """`codec.with_topic_alias`, remembered: QoS 0 subscribers connected alike share one form and
        usually the same alias number for a topic, so a fan-out rewrites once, not once per recipient."""
        key = (alias, send_topic)
        aliased = self._aliased
        if aliased is None:
            aliased = self._aliased = {}
        seen = aliased.get(key)
        if seen is not None and seen[0] is data:
            return seen[1]
        out = with_topic_alias(data, alias, send_topic=send_topic)
        aliased[key] = (data, out)
        return out

    def _build(self, version: ProtocolVersion, qos: int, retain: bool, ids: tuple[int, ...]) -> Publish:
        message = self._message
        props = message.properties
        if version == _V5:
            expiry = message.remaining_expiry(self._now)
            if ids or expiry is not None:
                props = replace(props, subscription_identifiers=ids, message_expiry_interval=expiry)
        else:
            props = Properties()
        return Publish(
            message.topic, message.payload, qos, retain, packet_id=1 if qos else None, properties=props
        )


def with_packet_id(template: bytes, packet_id: int, *, dup: bool = False) -> bytes:
    """A QoS>0 PUBLISH's bytes with another packet id (and optionally DUP): the id sits right after the
    topic name, whose position the fixed header and the topic length give."""
    pos = 1
    while template[pos] & 0x80:  # remaining length varint
        pos += 1
    pos += 1
    pos += 2 + (template[pos] << 8 | template[pos + 1])
    first = template[0] | 0x08 if dup else template[0]
    return b"".join((bytes((first,)), template[1:pos], packet_id.to_bytes(2, "big"), template[pos + 2 :]))


def window(st: BrokerState, conn: Connection) -> int:
    return min(conn.protocol.client_receive_maximum, st.limits.max_inflight)


def deliver(
    st: BrokerState, session: MqttSession, delivery: Delivery, cache: EncodeCache | None, now: float
) -> None:
    """Hand one (already authorised) delivery to a session: send it now, or queue it."""
    conn = st.connection_of(session)
    if conn is not None and (
        delivery.qos == 0 or (not session.queued and len(session.inflight) < window(st, conn))
    ):
        if not delivery.qos:
            transmit(st, conn, session, delivery, cache or EncodeCache(delivery.message, now))
            return
        # The common case in one call; a message from the cluster's store may have to wait for its id.
        packet_id = (
            session.allocate_packet_id() if delivery.stored is None else next_packet_id(session, delivery)
        )
        if packet_id:
            delivery.packet_id = packet_id
            session.inflight[packet_id] = delivery
            st.persist_delivery(session, delivery)
            transmit(st, conn, session, delivery, cache or EncodeCache(delivery.message, now))
            return
    queue_delivery(st, session, delivery, now)
    if conn is not None and len(session.inflight) < window(st, conn):
        pump(st, session, now)  # a slot freed without an ack (e.g. an oversized message was skipped)


def next_packet_id(session: MqttSession, delivery: Delivery) -> int:
    """The packet id a QoS>0 delivery goes out under: the next free one, or, for a QoS 2 message from
    the cluster's store, its own (FromStore.packet_id); 0 while that one is still in flight for
    another message (the delivery waits at the head of the queue until it is free)."""
    stored = delivery.stored
    if stored is not None and stored.packet_id:
        return 0 if stored.packet_id in session.inflight else stored.packet_id
    return session.allocate_packet_id()


def send_qos0(st: BrokerState, conn: Connection, data: bytes, topic: str, cache: EncodeCache) -> None:
    """A QoS 0 copy to a connected client: nothing to track, only its Maximum Packet Size to respect."""
    protocol = conn.protocol
    if protocol.outbound_alias_maximum:
        data = protocol.aliased(data, topic, cache.with_alias)
    if len(data) > protocol.client_max_packet_size:  # not protocol.fits(len(data)): one call fewer
        st.metrics.drops["packet_too_large"] += 1
        return
    st.out.send(conn.conn_id, data)
    st.metrics.publishes_out += 1


def transmit(
    st: BrokerState,
    conn: Connection,
    session: MqttSession,
    delivery: Delivery,
    cache: EncodeCache,
    *,
    dup: bool = False,
) -> None:
    version = conn.protocol.version
    assert version is not None
    data = cache.publish(version, delivery, dup=dup)
    if conn.protocol.outbound_alias_maximum:  # per recipient, after the shared encoding
        data = conn.protocol.aliased(data, delivery.message.topic, cache.with_alias)
    if not conn.protocol.fits(len(data)):
        # Never send more than the client said it can take (§3.1.2.11.4): drop it for this client as if
        # it had been delivered, so it does not block the window forever.
        st.metrics.drops["packet_too_large"] += 1
        if delivery.packet_id is not None:
            session.inflight.pop(delivery.packet_id, None)
            st.forget_delivery(session, delivery)
        return
    st.out.send(conn.conn_id, data)
    st.metrics.publishes_out += 1


def pump(st: BrokerState, session: MqttSession, now: float) -> None:
    """Move queued deliveries out while the window has room."""
    conn = st.connection_of(session)
    if conn is None:
        return
    limit = window(st, conn)
    queue = session.queue
    while True:
        if not queue:
            if not session.stored_queued:
                break
            st.page_in(session, PAGE)  # the rest of a persistent session's queue is in the store
            queue = session.queue
            if not queue:
                break
        delivery = queue[0]
        packet_id = 0
        if delivery.qos:
            if len(session.inflight) >= limit:
                break
            packet_id = (
                session.allocate_packet_id() if delivery.stored is None else next_packet_id(session, delivery)
            )
            if not packet_id:
                break  # its own packet id is still in flight for another message
        session.pop_queued()
        if delivery.message.expired(now):
            st.metrics.drops["message_expired"] += 1
            st.forget_delivery(session, delivery)
            continue
        if not st.may_deliver(session, delivery.message.topic, now):  # it waited: ask again
            st.forget_delivery(session, delivery)
            continue
        if packet_id:
            delivery.packet_id = packet_id
            session.inflight[packet_id] = delivery
            st.persist_delivery(session, delivery)
        transmit(st, conn, session, delivery, EncodeCache(delivery.message, now))
    if session.holding or session.dropping:
        flow.note_drained(st, session)


def resume(st: BrokerState, session: MqttSession, now: float) -> None:
    """A session was resumed: resend what the client has not acknowledged (§4.4), then the queue."""
    conn = st.connection_of(session)
    if conn is None:
        return
    for packet_id, delivery in list(session.inflight.items()):
        if delivery.released:
            if not release_waits(delivery):
                st.out.send(conn.conn_id, conn.protocol.encode(Pubrel(packet_id)))
        elif st.may_deliver(session, delivery.message.topic, now):
            transmit(st, conn, session, delivery, EncodeCache(delivery.message, now), dup=True)
        else:
            del session.inflight[packet_id]
            st.forget_delivery(session, delivery)
    pump(st, session, now)
    flow.note_queued(st, session, now)  # back far behind: it holds its publishers back from now


# --- the client's acknowledgements of our PUBLISHes ---------------------------------------------------


def on_puback(st: BrokerState, session: MqttSession, packet: Puback, now: float) -> None:
    delivery = session.inflight.get(packet.packet_id)
    if delivery is None or delivery.qos != 1:
        return  # late or stray ack: nothing to release
    del session.inflight[packet.packet_id]
    st.forget_delivery(session, delivery)
    flow.note_progress(st, session, now)
    pump(st, session, now)


def on_pubrec(st: BrokerState, conn: Connection, session: MqttSession, packet: Pubrec, now: float) -> None:
    delivery = session.inflight.get(packet.packet_id)
    if delivery is None or delivery.qos != 2:
        st.out.send(
            conn.conn_id,
            conn.protocol.encode(Pubrel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)),
        )
        return
    if packet.reason_code >= 0x80:  # the client refused it: the flow ends here (§4.3.3)
        del session.inflight[packet.packet_id]
        st.forget_delivery(session, delivery)
        flow.note_progress(st, session, now)
        pump(st, session, now)
        return
    if not delivery.released:
        delivery.released = True
        st.persist_delivery(session, delivery)
        if delivery.stored is not None and not st.record_session(session):
            st.let_store_forget(delivery.stored)  # no cluster record to wait for
    if not release_waits(delivery):
        st.out.send(conn.conn_id, conn.protocol.encode(Pubrel(packet.packet_id)))


def release_waits(delivery: Delivery) -> bool:
    """A QoS 2 message from the cluster's store whose PUBREL waits until the session's cluster record
    names its release (releases_due). Sent before, a node that died in between would leave the
    next node to deliver the message again to a client that already had it (docs/cluster.md). The
    wait is bounded: the cluster gives up on the record after a while and the PUBREL goes anyway,
    so a store that does not answer never holds a unit's in-flight window (and the control
    messages queued behind it)."""
    return delivery.stored is not None and delivery.stored.receipt is not None


def releases_due(st: BrokerState, session: MqttSession, packet_ids: Iterable[int]) -> None:
    """The cluster stored a record of the session naming these releases (or gave up waiting for
    it): their PUBRELs go out, and the store may forget their messages."""
    conn = st.connection_of(session)
    for packet_id in packet_ids:
        delivery = session.inflight.get(packet_id)
        if delivery is None or not delivery.released or not release_waits(delivery):
            continue
        st.let_store_forget(delivery.stored)
        if conn is not None:
            st.out.send(conn.conn_id, conn.protocol.encode(Pubrel(packet_id)))


def on_pubcomp(st: BrokerState, session: MqttSession, packet: Pubcomp, now: float) -> None:
    delivery = session.inflight.get(packet.packet_id)
    if delivery is None or not delivery.released:
        return
    del session.inflight[packet.packet_id]
    st.forget_delivery(session, delivery)
    if delivery.stored is not None:
        st.record_session(session)  # its record names the release no more
    flow.note_progress(st, session, now)
    pump(st, session, now)
