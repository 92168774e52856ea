"""SUBSCRIBE, UNSUBSCRIBE, retained messages on subscribe, and re-deciding subscriptions.

Each filter of a SUBSCRIBE is judged on its own (§3.8.4: as if it came in its own packet): an invalid
filter gets 0x8F (3.1.1: 0x80), a filter the policy denies 0x87 (0x80), one over the per-session limit
0x97 (0x80). The SUBACK goes out before any retained message (§3.8.4), and retained messages are sent
per Retain Handling (§3.8.3.1) for ordinary subscriptions only: a shared subscription gets none,
since only one member of a group may receive a message. Retained messages go through decide_delivery
like every other delivery.

Protocol errors in a SUBSCRIBE (No Local on a shared subscription, a subscription identifier of 0) are
found before anything changes and end the connection, as the spec requires.

The work a packet can cause is bounded by the identity's subscription cap (`max_subscriptions` of its
role, at most BrokerLimits.max_subscriptions), not by how many filters fit in a packet (a 250 KB
SUBSCRIBE holds 26,000 short filters, and deciding them all stalls every connection for seconds):

- only the first `cap` filters of a SUBSCRIBE are judged; the rest get 0x97 Quota exceeded (3.1.1:
  0x80), a code §3.9.3 allows, since a session could not hold them anyway. The SUBACK still has one
  code per filter (§3.8.4), which costs a byte each and no decision;
- judging stops as soon as the connection reaches its violation limit: it is cut off (5.0: DISCONNECT
  0x87) without a SUBACK, since a connection that is closed needs no answer;
- an UNSUBSCRIBE validates at most `cap` filters it finds no subscription for; past that a filter costs
  one dictionary lookup and, if absent, gets 0x11 No subscription existed (true whatever its syntax).
"""

from __future__ import annotations

from dataclasses import replace

from gateway.broker.events import SubscribeDenied
from gateway.broker.message import Delivery
from gateway.broker.outbound import deliver
from gateway.broker.sessions import MqttSession, StoredSubscription
from gateway.broker.state import BrokerState, Connection
from gateway.mqtt.errors import ProtocolError, TopicFilterInvalid
from gateway.mqtt.packets import RetainHandling, Suback, Subscribe, Subscription, Unsuback, Unsubscribe
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.topics import SHARE_PREFIX, parse_shared, validate_topic_filter
from gateway.policy.peer import Peer


def handle_subscribe(
    st: BrokerState, conn: Connection, session: MqttSession, packet: Subscribe, now: float
) -> int:
    """Handle a SUBSCRIBE; returns the number of denied filters (violations)."""
    ids = packet.properties.subscription_identifiers
    identifier = ids[0] if ids and conn.protocol.is_v5 else None
    subscriptions = packet.subscriptions
    for sub in subscriptions:  # cheap, so every filter is checked: nothing has changed yet
        if sub.no_local and sub.topic_filter.startswith(SHARE_PREFIX) and _is_shared(sub.topic_filter):
            raise ProtocolError("No Local is set on a shared subscription.")  # [MQTT-3.8.3-4]
    judged = subscriptions[: subscription_cap(st, conn.peer)]
    allowed_denials = st.limits.max_violations - conn.violations
    codes: list[int] = []
    to_send: list[StoredSubscription] = []
    denied = 0
    for sub in judged:
        code, stored, is_new = _subscribe_one(st, conn, session, sub, identifier, now)
        codes.append(code)
        if code == ReasonCode.NOT_AUTHORIZED:
            denied += 1
            if denied >= allowed_denials:  # the caller cuts the connection: judge no more, answer nothing
                if any(c <= ReasonCode.GRANTED_QOS_2 for c in codes):
                    st.persist_session(session)
                return denied
        if stored is not None and _wants_retained(stored, is_new):
            to_send.append(stored)
    codes += [ReasonCode.QUOTA_EXCEEDED] * (len(subscriptions) - len(judged))
    st.out.send(conn.conn_id, conn.protocol.encode(Suback(packet.packet_id, tuple(codes))))
    if any(code <= ReasonCode.GRANTED_QOS_2 for code in codes):
        st.persist_session(session)
    for stored in to_send:
        send_retained(st, session, stored, now)
    return denied


def _is_shared(topic_filter: str) -> bool:
    try:
        return parse_shared(topic_filter).is_shared
    except TopicFilterInvalid:
        return False  # an invalid filter: answered 0x8F in the SUBACK


def _subscribe_one(
    st: BrokerState,
    conn: Connection,
    session: MqttSession,
    sub: Subscription,
    identifier: int | None,
    now: float,
) -> tuple[int, StoredSubscription | None, bool]:
    try:
        shared = parse_shared(sub.topic_filter)
    except TopicFilterInvalid:
        return ReasonCode.TOPIC_FILTER_INVALID, None, False
    decision = st.counted("subscribe", st.policy.decide_subscribe(conn.peer, sub.topic_filter, now))
    if not decision.allowed:
        st.events.append(
            SubscribeDenied(conn.peer, session.client_id, sub.topic_filter, decision.reason, decision.rule)
        )
        return ReasonCode.NOT_AUTHORIZED, None, False
    old = session.subscriptions.get(sub.topic_filter)
    if old is None and len(session.subscriptions) >= subscription_cap(st, conn.peer):
        return ReasonCode.QUOTA_EXCEEDED, None, False
    scope = None if shared.group is None else st.share_scope(conn.peer, shared.group)
    stored = StoredSubscription(sub, identifier, shared.group, shared.topic_filter, scope)
    if old is not None:
        st.index.remove(session.client_id, old)  # its group may be another scope's by now
    session.subscriptions[sub.topic_filter] = stored  # same filter: replaced (§3.8.4)
    st.index.add(session.client_id, stored)
    return sub.qos, stored, old is None


def subscription_cap(st: BrokerState, peer: Peer) -> int:
    """The broker's limit, lowered by the policy's per-role `max_subscriptions` (units: 20) when set.

    Asked by name: the policy engine has it, minimal AccessPolicy fakes in tests need not."""
    ask = getattr(st.policy, "max_subscriptions_for", None)
    own = ask(peer) if ask is not None else None
    return st.limits.max_subscriptions if own is None else min(int(own), st.limits.max_subscriptions)


def _rescope(st: BrokerState, session: MqttSession, stored: StoredSubscription) -> None:
    if stored.group is None:
        return
    scope = st.share_scope(session.peer, stored.group)
    if scope == stored.scope:
        return
    st.index.remove(session.client_id, stored)
    moved = replace(stored, scope=scope)
    session.subscriptions[stored.topic_filter] = moved
    st.index.add(session.client_id, moved)


def _wants_retained(stored: StoredSubscription, is_new: bool) -> bool:
    if stored.group is not None:
        return False
    handling = stored.options.retain_handling
    return handling == RetainHandling.SEND_ON_SUBSCRIBE or (
        handling == RetainHandling.SEND_IF_NEW_SUBSCRIPTION and is_new
    )


def send_retained(st: BrokerState, session: MqttSession, stored: StoredSubscription, now: float) -> None:
    ids = () if stored.identifier is None else (stored.identifier,)
    for message in st.retained.match(stored.plain_filter):
        if message.expired(now) or not st.may_deliver(session, message.topic, now):
            continue
        # Sent because of a new subscription: RETAIN stays 1 whatever Retain As Published says.
        deliver(st, session, Delivery(message, min(message.qos, stored.options.qos), True, ids), None, now)


def handle_unsubscribe(st: BrokerState, conn: Connection, session: MqttSession, packet: Unsubscribe) -> None:
    codes: list[int] = []
    validations = subscription_cap(st, conn.peer)
    for topic_filter in packet.topic_filters:
        stored = session.subscriptions.pop(topic_filter, None)
        if stored is not None:  # it was validated when it was subscribed
            st.index.remove(session.client_id, stored)
            codes.append(ReasonCode.SUCCESS)
            continue
        if validations > 0:
            validations -= 1
            try:
                validate_topic_filter(topic_filter)
            except TopicFilterInvalid:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID)
                continue
        codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
    # In-flight messages of a removed subscription are still completed (§3.10.4).
    reply = Unsuback(packet.packet_id, tuple(codes) if conn.protocol.is_v5 else ())
    st.out.send(conn.conn_id, conn.protocol.encode(reply))
    if ReasonCode.SUCCESS in codes:
        st.persist_session(session)


def recheck_subscriptions(st: BrokerState, session: MqttSession, now: float) -> int:
    """Ask the policy again about every subscription; drop the ones it now denies, and move shared
    ones whose scope changed (a reload, a new role) to their new group. Returns how many it dropped."""
    dropped = 0
    for topic_filter, stored in list(session.subscriptions.items()):
        decision = st.counted("subscribe", st.policy.decide_subscribe(session.peer, topic_filter, now))
        if decision.allowed:
            _rescope(st, session, stored)
            continue
        del session.subscriptions[topic_filter]
        st.index.remove(session.client_id, stored)
        st.metrics.subscriptions_revoked += 1
        st.events.append(
            SubscribeDenied(
                session.peer, session.client_id, topic_filter, decision.reason, decision.rule, revoked=True
            )
        )
        dropped += 1
    if dropped:
        st.persist_session(session)
    return dropped
