"""Rebuilding the broker's state from its store at start: retained messages and persistent sessions.

Every loaded session starts offline. Its expiry counts from the moment it was disconnected; a session
that was still connected when the broker stopped has no such moment, so it starts counting when the
broker first learns the time (Broker._arm). In-flight messages are loaded (shared again between the
deliveries that point at them); queued ones stay in the store, counted, and are paged in when their
session comes back and drains (queues.py), so a restart with long offline queues costs no memory.
"""

from __future__ import annotations

import logging

from gateway.broker.message import Delivery, Message
from gateway.broker.records import StoredState, SubscriptionRecord, identity_from_text
from gateway.broker.sessions import MqttSession, StoredSubscription
from gateway.broker.state import BrokerState
from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.topics import parse_shared
from gateway.policy.peer import Peer

log = logging.getLogger("fleetgate.broker")


def load_state(st: BrokerState, state: StoredState) -> list[MqttSession]:
    """Fill `st` from `state`; returns the sessions whose expiry clock has yet to start."""
    for record in state.retained:
        message = Message(
            record.topic, record.payload, record.qos, True, record.properties, record.expires_at
        )
        st.retained.set(message)
        st.retained_owners.set(record.topic, record.owner)
        if record.expires_at is not None:
            st.timers.set(("retained", record.topic), record.expires_at)
    messages = {
        mid: Message(r.topic, r.payload, r.qos, r.retain, r.properties, r.expires_at, message_id=mid)
        for mid, r in state.messages.items()
    }
    st.next_message_id = max(state.max_message_id, *messages, 0) + 1
    unarmed: list[MqttSession] = []
    for srec in state.sessions:
        identity = identity_from_text(srec.identity)
        session = MqttSession(
            srec.client_id,
            identity,
            Peer(address="", identity=identity),
            expiry_interval=srec.expiry_interval,
            since=srec.disconnected_at or 0.0,
            stored=True,
        )
        _load_subscriptions(st, session, srec.subscriptions)
        _load_deliveries(session, state, messages)
        session.last_seq = max(session.last_seq, state.last_seq.get(srec.client_id, 0))
        count, size = state.queued.get(srec.client_id, (0, 0))
        session.queued = session.stored_queued = count
        session.queued_bytes = size
        session.inbound_qos2 = set(state.inbound_qos2.get(srec.client_id, ()))
        st.sessions[session.client_id] = session
        if srec.disconnected_at is None:
            unarmed.append(session)
        else:
            st.timers.set(("expiry", session.client_id), srec.disconnected_at + srec.expiry_interval)
    return unarmed


def _load_subscriptions(
    st: BrokerState, session: MqttSession, records: tuple[SubscriptionRecord, ...]
) -> None:
    for record in records:
        try:
            shared = parse_shared(record.options.topic_filter)
        except TopicFilterInvalid:
            log.warning(
                "dropping stored subscription %r of %s: not a valid filter",
                record.options.topic_filter,
                session.client_id,
            )
            continue
        scope = None if shared.group is None else st.share_scope(session.peer, shared.group)
        stored = StoredSubscription(
            record.options, record.identifier, shared.group, shared.topic_filter, scope
        )
        session.subscriptions[record.options.topic_filter] = stored
        st.index.add(session.client_id, stored)


def _load_deliveries(session: MqttSession, state: StoredState, messages: dict[int, Message]) -> None:
    for seq, record in state.deliveries.get(session.client_id, []):
        message = messages.get(record.message_id)
        if message is None:
            continue  # its message row is gone: nothing to deliver
        delivery = Delivery(
            message,
            record.qos,
            record.retain,
            record.subscription_ids,
            record.packet_id,
            record.released,
            seq,
        )
        message.refs += 1
        session.last_seq = max(session.last_seq, seq)
        if record.packet_id is not None and record.packet_id not in session.inflight:
            session.inflight[record.packet_id] = delivery
            session.last_packet_id = max(session.last_packet_id, record.packet_id)
        else:
            delivery.packet_id = None
            session.push(delivery)
