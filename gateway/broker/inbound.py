"""Messages coming in: PUBLISH and PUBREL from clients, the gateway's own messages, wills; and routing.

QoS 2 uses "method B" of §4.3.3: the message is routed when the PUBLISH arrives and only its packet id
is kept until PUBREL, so a retransmitted PUBLISH with that id is acknowledged again but not routed
again. Routing at once keeps latency equal for QoS 1 and 2 and means the broker never holds a second
copy of an inbound message; the price is that the id set (not the message) must be persisted for
persistent sessions, which it is before PUBREC goes out.

Permission: every publish is decided by the policy before anything else happens. A denial is
acknowledged so that the client does not retransmit it forever: 5.0 clients get PUBACK/PUBREC 0x87 (and
can tell), 3.1.1 clients an ordinary ack (3.1.1 has no way to say no, §3.3.5). Denials that are
violations (Decision.violation: not rate limits, throttles or quarantine drops) count towards the
policy's violation limit, after which the connection is closed (5.0: DISCONNECT 0x87; lifecycle.py).

A cluster node with JetStream acknowledges a QoS 1/2 PUBLISH only once the cluster stored it
(receipts.py).

Flow control: an allowed QoS 1/2 PUBLISH that would go to a subscriber too far behind is held,
unacknowledged, and routed and acknowledged when that subscriber has caught up (flow.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import replace

from gateway.broker import flow, receipts
from gateway.broker.events import PublishDenied, WillDropped
from gateway.broker.message import Delivery, FromStore, Message
from gateway.broker.outbound import EncodeCache, deliver, send_qos0
from gateway.broker.sessions import MqttSession
from gateway.broker.state import BrokerState, Connection, GroupKey, Held, message_record
from gateway.mqtt.codec import puback_success
from gateway.mqtt.packets import Properties, ProtocolVersion, Puback, Pubcomp, Publish, Pubrec, Pubrel, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.decision import Verdict
from gateway.policy.peer import Peer

_ALLOW = Verdict.ALLOW
_SUCCESS = ReasonCode.SUCCESS  # read for every QoS 1/2 PUBLISH: a global, not an Enum member lookup


def handle_publish(
    st: BrokerState, conn: Connection, session: MqttSession, publish: Publish, now: float
) -> bool:
    """Handle a client PUBLISH; False if it was denied as a violation (the caller counts it)."""
    st.metrics.publishes_in += 1
    packet_id = publish.packet_id
    if publish.qos == 2 and packet_id in session.inbound_qos2:
        # Already routed (method B); a DUP retransmission after a lost PUBREC. Ack, don't route again.
        st.out.send(conn.conn_id, conn.protocol.encode(Pubrec(packet_id)))
        return True
    if publish.qos == 2 and conn.awaiting and publish.dup and receipts.qos2_awaiting(conn, packet_id):
        return True  # routed already, its PUBREC waits for the cluster's store (receipts.py)
    decision = st.counted(
        "publish",
        st.policy.decide_publish(
            conn.peer, publish.topic, len(publish.payload), publish.qos, publish.retain, now
        ),
    )
    if decision.verdict is not _ALLOW:  # Decision.allowed, without a property call per message
        st.metrics.drops["publish_denied"] += 1
        st.events.append(
            PublishDenied(conn.peer, session.client_id, publish.topic, decision.reason, decision.rule)
        )
        _ack(st, conn, publish, ReasonCode.NOT_AUTHORIZED if conn.protocol.is_v5 else ReasonCode.SUCCESS)
        return not decision.violation  # a denial the policy does not hold against the client
    retain = publish.retain
    if retain and publish.payload and not _may_retain(st, publish.topic, session.client_id):
        st.metrics.drops["retained_quota"] += 1
        if conn.protocol.is_v5:  # 5.0 can say no; 3.1.1 cannot, so its message is routed, not retained
            _ack(st, conn, publish, ReasonCode.QUOTA_EXCEEDED)
            return True
        retain = False
    wire = conn.protocol.forwardable(publish) if retain == publish.retain else None
    if publish.qos and (st.holding or conn.held_topics):
        on = flow.blocker(st, conn, publish.topic, session.client_id)
        if on is not None:
            if publish.qos == 2 and publish.dup and _held_id(conn, packet_id):
                return True  # a 3.1.1 retransmission of a PUBLISH already held: it is acked when released
            flow.hold(st, conn, publish, retain, wire, on)
            return True
    _route_and_ack(st, conn, session, publish, retain, wire, now)
    return True


def _route_and_ack(
    st: BrokerState,
    conn: Connection,
    session: MqttSession,
    publish: Publish,
    retain: bool,
    wire: bytes | None,
    now: float,
) -> None:
    recorded = publish.qos == 2 and session.persistent and st.cluster.message_id is not None
    if recorded and _resent_after_node_death(st, conn, session, publish, retain, now):
        return
    served: list[GroupKey] | None = None if st.backbone is None else []
    message = accept(
        st,
        publish.topic,
        publish.payload,
        publish.qos,
        retain,
        publish.properties,
        session.client_id,
        now,
        None if wire is None else (conn.protocol.version, wire),  # type: ignore[arg-type]
        st.durable_sessions if publish.qos else (),
        served,
    )
    if st.publish_observer is not None:
        st.publish_observer(conn.peer, publish.topic, publish.payload, now)
    # A cluster's node: the other nodes' subscribers get it too (and the sessions in
    # st.durable_sessions, skipped above, get it from the cluster's store).
    if st.backbone is not None:
        receipt = receipts.take_receipt(st) if publish.qos else None
        message_id = _record_inbound(st, session, publish) if recorded else None
        if (
            st.backbone(message, session.client_id, conn.peer, receipt, served or (), message_id)
            and receipt is not None
        ):
            receipts.await_store(st, conn, session.client_id, publish, receipt)
            return  # acknowledged by Broker.stored once the cluster has it
    if publish.qos == 2:
        packet_id = publish.packet_id
        session.inbound_qos2.add(packet_id)  # type: ignore[arg-type]  # the codec guarantees an id for QoS 2
        if session.persistent and st.store is not None:
            st.store.add_inbound_qos2(session.client_id, packet_id)  # type: ignore[arg-type]
    if publish.packet_id is not None:  # QoS 0 is not acknowledged: no call for nothing
        _ack(st, conn, publish, _SUCCESS)


def inbound_digest(publish: Publish) -> str:
    """What tells a resend (DUP) of a QoS 2 PUBLISH from a new message under the same packet id."""
    digest = hashlib.blake2b(publish.topic.encode(), digest_size=8)
    digest.update(b"\0")
    digest.update(publish.payload)
    return digest.hexdigest()


def _record_inbound(st: BrokerState, session: MqttSession, publish: Publish) -> str:
    """A QoS 2 PUBLISH from a persistent session on a cluster node: its backbone id goes into the
    session's cluster record, and its store waits for that record (docs/cluster.md, "QoS 2 exactly
    once across a node's death"). Should the node die after the store and before the client has its
    PUBREC, the node that resumes the session stores the client's resend under the same id, which the
    cluster's store keeps once. The pair leaves the record at the PUBREL."""
    assert st.cluster.message_id is not None and publish.packet_id is not None
    message_id = st.cluster.message_id()
    session.inbound_recorded[publish.packet_id] = (message_id, inbound_digest(publish))
    st.record_session(session)
    return message_id


def _resent_after_node_death(
    st: BrokerState, conn: Connection, session: MqttSession, publish: Publish, retain: bool, now: float
) -> bool:
    """A resend (DUP) of a QoS 2 PUBLISH the session's record names but this node never stored (the
    session was resumed here from its record): stored again under the recorded backbone id, and routed
    here only once the store says it had not had it (Broker.stored). False: not such a resend."""
    assert publish.packet_id is not None
    pair = session.inbound_recorded.get(publish.packet_id)
    if pair is None or not publish.dup or pair[1] != inbound_digest(publish):
        return False  # a new message: it takes the packet id's place in the record
    assert st.backbone is not None
    message = Message.arriving(publish.topic, publish.payload, publish.qos, retain, publish.properties, now)
    receipt = receipts.take_receipt(st)
    if not st.backbone(message, session.client_id, conn.peer, receipt, (), pair[0]):
        return False
    receipts.await_store(st, conn, session.client_id, publish, receipt, resend=message)
    return True


def route_resend(st: BrokerState, message: Message, client_id: str, peer: Peer | None, now: float) -> None:
    """A resend the cluster's store had not had (the node that died never stored it): routed here now,
    as `_route_and_ack` routes a new message (the other nodes have it from the store)."""
    if message.retain:
        _retain(st, message, client_id)
    route(st, message, client_id, now, None, st.durable_sessions)
    if peer is not None and st.publish_observer is not None:
        st.publish_observer(peer, message.topic, message.payload, now)


def _held_id(conn: Connection, packet_id: int | None) -> bool:
    return conn.held is not None and any(h.publish.packet_id == packet_id for h in conn.held)


def release_held(st: BrokerState, conn: Connection, now: float) -> None:
    """Route and acknowledge what `conn` holds, oldest first, until a message still has a subscriber
    too far behind (the connection then waits on it again)."""
    held = conn.held
    session = conn.session
    if not held or session is None or conn.conn_id not in st.connections:
        return
    while held:
        head = held[0]
        on = flow.holders(st, head.publish.topic, session.client_id) if st.holding else ()
        if on:
            flow.wait(st, on, conn.conn_id)
            break
        held.popleft()
        flow.unheld(conn, head)
        _release(st, conn, session, head, now)
    conn.protocol.acks_flushed(receipts.withheld(conn))


def _release(st: BrokerState, conn: Connection, session: MqttSession, head: Held, now: float) -> None:
    publish = head.publish
    # Authorised again without spending rate tokens (the check a will gets when it fires): the unit
    # may have been quarantined, or lost a grant in a reload, while its message waited.
    decision = st.counted(
        "held",
        st.policy.decide_will(conn.peer, publish.topic, len(publish.payload), publish.qos, head.retain, now),
    )
    if decision.verdict is not _ALLOW:
        st.metrics.drops["publish_denied"] += 1
        st.events.append(
            PublishDenied(conn.peer, session.client_id, publish.topic, decision.reason, decision.rule)
        )
        _ack(st, conn, publish, ReasonCode.NOT_AUTHORIZED if conn.protocol.is_v5 else ReasonCode.SUCCESS)
        return
    _route_and_ack(st, conn, session, publish, head.retain, head.wire, now)


def _may_retain(st: BrokerState, topic: str, client_id: str) -> bool:
    """Room for a new retained topic, globally and in this identity's share (replacing is free)."""
    if topic in st.retained:
        return st.retained_owners.allows(topic, client_id, st.limits.max_retained_per_client)
    return len(st.retained) < st.limits.max_retained_messages and st.retained_owners.allows(
        topic, client_id, st.limits.max_retained_per_client
    )


def _ack(st: BrokerState, conn: Connection, publish: Publish, code: int) -> None:
    if publish.packet_id is None:
        return
    if publish.qos == 1 and code == _SUCCESS:  # the common case: fixed bytes, any version
        st.out.send(conn.conn_id, puback_success(publish.packet_id))
        return
    ack = Puback(publish.packet_id, code) if publish.qos == 1 else Pubrec(publish.packet_id, code)
    st.out.send(conn.conn_id, conn.protocol.encode(ack))


def handle_pubrel(st: BrokerState, conn: Connection, session: MqttSession, packet: Pubrel) -> None:
    packet_id = packet.packet_id
    # In the cluster's record (a QoS 2 PUBLISH stored, here or on a node that died after its PUBREC):
    # released now, so the record drops it.
    recorded = session.inbound_recorded.pop(packet_id, None) if session.inbound_recorded else None
    if recorded is not None:
        st.record_session(session)
    if packet_id in session.inbound_qos2 or recorded is not None:
        session.inbound_qos2.discard(packet_id)
        if session.persistent and st.store is not None:
            st.store.remove_inbound_qos2(session.client_id, packet_id)
        st.out.send(conn.conn_id, conn.protocol.encode(Pubcomp(packet_id)))
        return
    # Unknown id: 5.0 says so (0x92); 3.1.1 completes anyway so the client can free its id.
    st.out.send(
        conn.conn_id, conn.protocol.encode(Pubcomp(packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
    )


def accept(
    st: BrokerState,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    properties: Properties,
    origin: str | None,
    now: float,
    wire: tuple[ProtocolVersion, bytes] | None = None,
    skip: Container[str] = (),
    served: list[GroupKey] | None = None,
) -> Message:
    """An authorised application message enters the broker: retain it if asked, route it.

    `wire`: the bytes it arrived as, when they can be forwarded as they are (see EncodeCache).
    `served`: see `route`."""
    interval = properties.message_expiry_interval  # Message.arriving, inline: every PUBLISH comes here
    message = Message(topic, payload, qos, retain, properties, None if interval is None else now + interval)
    if retain:
        _retain(st, message, origin)
    route(st, message, origin, now, wire, skip, served)
    return message


def _retain(st: BrokerState, message: Message, origin: str | None) -> None:
    if retain_here(st, message, origin) and origin is not None and st.cluster.retained_changed is not None:
        st.cluster.retained_changed(message, origin)  # stored once for the cluster (cluster_retained)


def retain_here(st: BrokerState, message: Message, origin: str | None) -> bool:
    """Store (or, empty, delete) the topic's retained message in this node's store; False when the
    store is full and the message was not kept."""
    topic = message.topic
    if not message.payload:  # §3.3.1.3: an empty retained message deletes the topic's retained message
        st.retained_owners.release(topic)
        if st.retained.delete(topic):
            st.timers.cancel(("retained", topic))
            if st.store is not None:
                st.store.delete_retained(topic)
        return True
    if topic not in st.retained and len(st.retained) >= st.limits.max_retained_messages:
        st.metrics.drops["retained_limit"] += 1
        return False
    st.retained.set(message)
    st.retained_owners.set(topic, origin)
    if message.expires_at is not None:
        st.timers.set(("retained", topic), message.expires_at)
    else:
        st.timers.cancel(("retained", topic))
    if st.store is not None:
        st.store.save_retained(message_record(message, owner=origin))
    return True


def route(
    st: BrokerState,
    message: Message,
    origin: str | None,
    now: float,
    wire: tuple[ProtocolVersion, bytes] | None = None,
    skip: Container[str] = (),
    served: list[GroupKey] | None = None,
) -> None:
    """Deliver to every matching subscriber the policy lets receive it (one copy per client, §3.3.4),
    but those in `skip` (sessions the cluster's store delivers to one by one: receipts.py).

    While a cluster's backbone balances share groups across nodes, a client's message (`origin`
    set) goes to a share group here only when a connected member here takes it at once, and the
    group is added to `served` (the backbone names it on the message: no other node gives it again;
    local first, so it does not cross to another node). Any other group gets it on the node NATS
    picks (`route_to_group`). Without `served` (a message from another node) no group gets it here."""
    topic = message.topic
    targets, groups = st.index.match(topic, origin)
    elsewhere = bool(groups) and origin is not None and _groups_elsewhere(st)
    if elsewhere and served is None:
        groups = []
    if not targets and not groups:
        return
    cache = EncodeCache(message, now, wire)
    sessions = st.sessions
    connections = st.connections
    for client_id, target in targets.items():
        if skip and client_id in skip:
            continue
        session = sessions.get(client_id)
        if session is None or not st.may_deliver(session, topic, now):
            continue
        qos = message.qos if message.qos < target.qos else target.qos
        retain = message.retain and target.retain_as_published
        ids = tuple(target.subscription_ids)
        conn = None if qos or session.conn is None else connections.get(session.conn)
        if conn is not None:
            # QoS 0 to a connected client (the hot path): sent at once, as deliver() would, without
            # a Delivery to track.
            form = cache.form(conn.protocol.version, 0, retain, ids)  # type: ignore[arg-type]
            send_qos0(st, conn, form, topic, cache)
            continue
        deliver(st, session, Delivery(message, qos, retain, ids), cache, now)
    holding = st.holding
    for group in groups:
        # A member far behind counts as offline: another connected member takes the message if one can.
        picked = group.pick(
            (lambda cid: cid not in holding and st.is_connected(cid)) if holding else st.is_connected,
            lambda cid: st.may_deliver(sessions[cid], topic, now),
            offline_too=not elsewhere,  # none connected here: a node with one gets it from NATS
        )
        if picked is None:
            if not elsewhere:
                st.metrics.drops["no_shared_member"] += 1
            continue
        if served is not None and elsewhere:
            served.append(group.key)
        client_id, sub = picked
        ids = () if sub.identifier is None else (sub.identifier,)
        options = sub.options
        delivery = Delivery(
            message, min(message.qos, options.qos), message.retain and options.retain_as_published, ids
        )
        deliver(st, sessions[client_id], delivery, cache, now)


def _groups_elsewhere(st: BrokerState) -> bool:
    ask = st.cluster.groups_elsewhere
    return ask is not None and ask()


def route_to_group(st: BrokerState, message: Message, key: tuple[str | None, str, str], now: float) -> bool:
    """A message NATS gave this node for one share group (scope, group, plain filter): one of its
    members here gets it, as `route` would pick one. False when the group has no member here that
    may take it (it left a moment ago, or the policy says no)."""
    group = st.index.group(key)
    if group is None:
        st.metrics.drops["no_shared_member"] += 1
        return False
    sessions = st.sessions
    topic = message.topic
    holding = st.holding
    picked = group.pick(
        (lambda cid: cid not in holding and st.is_connected(cid)) if holding else st.is_connected,
        lambda cid: st.may_deliver(sessions[cid], topic, now),
    )
    if picked is None:
        st.metrics.drops["no_shared_member"] += 1
        return False
    client_id, sub = picked
    ids = () if sub.identifier is None else (sub.identifier,)
    options = sub.options
    delivery = Delivery(
        message, min(message.qos, options.qos), message.retain and options.retain_as_published, ids
    )
    deliver(st, sessions[client_id], delivery, EncodeCache(message, now, None), now)
    return True


def deliver_stored(
    st: BrokerState, client_id: str, message: Message, origin: str | None, stored: FromStore, now: float
) -> None:
    """One message from the cluster's store for one session (its own durable consumer): delivered
    like route() would deliver it to that session, with its receipt reported when the delivery ends
    (PUBACK; at QoS 2 once the session's cluster record names its release; dropped), or at once when
    nothing is to be delivered or it goes at QoS 0. At QoS 2 it goes out under `stored.packet_id`."""
    session = st.sessions.get(client_id)
    target = st.index.match(message.topic, origin)[0].get(client_id) if session is not None else None
    if session is None or target is None or not st.may_deliver(session, message.topic, now):
        st.let_store_forget(stored)
        return
    qos = min(message.qos, target.qos)
    if qos < 2:
        stored.packet_id = 0  # only a QoS 2 flow keeps its packet id from node to node
    retain = message.retain and target.retain_as_published
    delivery = Delivery(message, qos, retain, tuple(target.subscription_ids), stored=stored if qos else None)
    deliver(st, session, delivery, None, now)
    if not qos:
        st.let_store_forget(stored)


def publish_will(st: BrokerState, client_id: str, peer: Peer, will: Will, now: float) -> None:
    """Publish a will, if the policy lets it be published now. This is the only place a will's
    permission is decided (CONNECT checks only that its topic is valid): the client may have been
    quarantined, released or revoked since it connected. A denied will is dropped, counted and
    reported (`WillDropped`, audited); it never reaches anyone."""
    decision = st.counted(
        "will", st.policy.decide_will(peer, will.topic, len(will.payload), will.qos, will.retain, now)
    )
    if not decision.allowed:
        st.metrics.drops["will_denied"] += 1
        st.events.append(WillDropped(peer, client_id, will.topic, decision.reason, decision.rule))
        return
    st.metrics.wills_published += 1
    properties = replace(will.properties, will_delay_interval=None)
    skip = st.durable_sessions if will.qos else ()
    served: list[GroupKey] | None = None if st.backbone is None else []
    message = accept(
        st, will.topic, will.payload, will.qos, will.retain, properties, client_id, now, None, skip, served
    )
    if st.backbone is not None:
        st.backbone(message, client_id, peer, None, served or (), None)
