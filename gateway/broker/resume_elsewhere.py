"""A persistent session that lived on another node of the cluster, resumed here (docs/cluster.md,
"Sessions, retained messages, shared subscriptions and wills across nodes").

The cluster keeps the latest record of every persistent session (client id, owner identity, expiry
interval, when its client left, its subscriptions; gateway/app/cluster_session_records.py). When a
CONNECT with clean start 0 names a client id this node holds no session of, `resume_elsewhere` builds
the session from that record, offline, so that the CONNECT resumes it as any persistent session
(session present 1) and its subscriptions bind the session's JetStream consumers through the index
hooks, without the client subscribing again. Nothing in the record is trusted beyond what the policy
grants now:

- only for the identity that owns it: the connecting certificate's identity must be the record's (a
  lab client without one never resumes a record); otherwise the CONNECT starts a fresh session;
- an expired record (its client left more than its expiry interval ago) is no session;
- every subscription is decided again against the policy for the connecting peer (grants, role,
  quarantine, as it stands now): one it denies is not restored (counted and reported as a revoked
  subscription), nor any past the identity's subscription cap, nor an invalid filter.

The record also names the QoS 2 messages the client acknowledged with PUBREC on the old node and has
not completed (`released`): they become in-flight releases here, so the resume sends their PUBREL and
the session's consumers never deliver them again (docs/cluster.md, "QoS 2 exactly once across a node's
death"). And it names the QoS 2 PUBLISHes the client sent the old node and has not released
(`received`): a resend of one (DUP, same topic and payload) is stored under the backbone id the old
node stored it under, and routed here only if the cluster's store had not had it (inbound.py); a PUBREL
for one completes.

A CONNECT with clean start 1 from the owner ends the record (`forget_elsewhere`), as it ends a
session on one node.
"""

from __future__ import annotations

from gateway.broker.events import SubscribeDenied
from gateway.broker.message import Delivery, FromStore, Message
from gateway.broker.records import SessionRecord, identity_to_text
from gateway.broker.sessions import (
    MqttSession,
    StoredSubscription,
    offline_peer,
)
from gateway.broker.state import BrokerState
from gateway.broker.subscribe import subscription_cap
from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.packets import Properties
from gateway.mqtt.topics import parse_shared
from gateway.policy.peer import Peer


def resume_elsewhere(st: BrokerState, peer: Peer, client_id: str, now: float) -> MqttSession | None:
    """The session `client_id` had on another node, rebuilt here offline for `peer` to resume, or
    None (no record, another identity's, expired)."""
    ask = st.cluster.session_elsewhere
    record = None if ask is None else ask(client_id)
    if record is None or not usable(record, peer, client_id, now):
        return None
    session = MqttSession(client_id, peer.identity, offline_peer(peer), record.expiry_interval, since=now)
    session.recorded = True
    st.sessions[client_id] = session  # first: the index hooks ask whether the session is persistent
    for packet_id, message_id in record.released:  # before the subscriptions: their hooks read these
        session.inflight[packet_id] = _released(packet_id, message_id)
    for packet_id, message_id, digest in record.received:  # a resend is stored under the same id
        session.inbound_recorded[packet_id] = (message_id, digest)
    cap = subscription_cap(st, peer)
    for sub in record.subscriptions:
        topic_filter = sub.options.topic_filter
        try:
            shared = parse_shared(topic_filter)
        except TopicFilterInvalid:
            continue
        decision = st.counted("subscribe", st.policy.decide_subscribe(peer, topic_filter, now))
        if not decision.allowed:
            st.metrics.subscriptions_revoked += 1
            st.events.append(
                SubscribeDenied(peer, client_id, topic_filter, decision.reason, decision.rule, revoked=True)
            )
            continue
        if len(session.subscriptions) >= cap:
            break
        scope = None if shared.group is None else st.share_scope(peer, shared.group)
        stored = StoredSubscription(sub.options, sub.identifier, shared.group, shared.topic_filter, scope)
        session.subscriptions[topic_filter] = stored
        st.index.add(client_id, stored)
    st.metrics.sessions_resumed_elsewhere += 1
    return session


def _released(packet_id: int, message_id: str) -> Delivery:
    """A QoS 2 message the client received through the session's old node and acknowledged with
    PUBREC: the CONNECT's resume sends its PUBREL, its PUBCOMP ends it, and the backbone never delivers
    `message_id` to the session again (Broker.released_ids). Its content is not needed: a released
    message is never sent again."""
    nothing = Message("", b"", 2, False, Properties())
    return Delivery(nothing, 2, False, packet_id=packet_id, released=True, stored=FromStore(None, message_id))


def received_from_record(st: BrokerState, peer: Peer, session: MqttSession, now: float) -> None:
    """A persistent session this node holds (kept on disk across the node's restart, say) resumed
    here: the QoS 2 PUBLISHes its cluster record names as received join it, unless this node has
    their PUBREC on record already (`inbound_qos2`). So the resend of one caught between its record
    and its store when the node died is stored under its recorded id, as any other node would."""
    ask = st.cluster.session_elsewhere
    record = None if ask is None else ask(session.client_id)
    if record is None or not record.received or not usable(record, peer, session.client_id, now):
        return
    for packet_id, message_id, digest in record.received:
        if packet_id not in session.inbound_qos2:
            session.inbound_recorded.setdefault(packet_id, (message_id, digest))


def forget_elsewhere(st: BrokerState, peer: Peer, client_id: str, now: float) -> None:
    """A clean start of the record's owner: the session another node held ends everywhere (that node
    ends its copy when the CONNECT is announced; the record goes here)."""
    ask, tell = st.cluster.session_elsewhere, st.cluster.session_recorded
    record = None if ask is None else ask(client_id)
    if record is not None and tell is not None and usable(record, peer, client_id, now):
        tell(client_id, None)


def usable(record: SessionRecord, peer: Peer, client_id: str, now: float) -> bool:
    """The record is this client id's, owned by this peer's certificate identity, and not expired."""
    if peer.identity is None or record.client_id != client_id:
        return False
    if record.identity != identity_to_text(peer.identity) or record.expiry_interval <= 0:
        return False
    left = record.disconnected_at
    return left is None or left + record.expiry_interval > now
