"""The broker's world: connections, sessions, the index, the retained store, timers and the outbox.

Every handler module (connect, inbound, outbound, subscribe) works on one `BrokerState`; the Broker in
core.py owns it and is the only public face. The helpers here are the small things every handler
needs: asking the policy and counting the answer, and writing session state to the store (which is a
no-op without a store, for clean sessions, and for QoS 0).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from gateway.broker.actions import Outbox
from gateway.broker.events import BrokerEvent, DeliveryDenied
from gateway.broker.limits import BrokerLimits, BrokerMetrics
from gateway.broker.persistence import BrokerStore
from gateway.broker.quota import RetainedOwners
from gateway.broker.records import (
    DeliveryRecord,
    MessageRecord,
    SessionRecord,
    SubscriptionRecord,
    identity_to_text,
)
from gateway.broker.routing import RetainedStore, SubscriptionIndex
from gateway.broker.sessions import Delivery, Message, MqttSession
from gateway.broker.timers import TimerQueue
from gateway.mqtt.packets import Connect, Will
from gateway.mqtt.session import ServerSession
from gateway.policy.access import AccessPolicy, Peer, identity_scope
from gateway.policy.decision import Decision, Verdict

_ALLOW = Verdict.ALLOW
_TALLY_LIMIT = 64  # distinct decision objects counted per kind before they are folded into the metrics

# ("conn", conn_id) | ("cert", conn_id) | ("will", client_id) | ("expiry", client_id) | ("retained", topic)
TimerKey = tuple[str, Hashable]


class Connection:
    """One network connection as the broker sees it."""

    __slots__ = (
        "client_id", "conn_id", "connect", "opened_at", "peer", "protocol", "session", "violations", "will"
    )

    def __init__(self, conn_id: int, peer: Peer, protocol: ServerSession, opened_at: float = 0.0) -> None:
        self.conn_id = conn_id
        self.opened_at = opened_at  # `now` at Broker.open: the CONNACK latency counts from here
        self.peer = peer
        self.protocol = protocol
        self.session: MqttSession | None = None  # set once CONNECT is accepted
        self.connect: Connect | None = None  # the accepted CONNECT (re-authorization asks about it again)
        self.will: Will | None = None  # discarded on DISCONNECT 0x00, moved to the session otherwise
        self.client_id = ""
        self.violations = 0  # denied publishes and subscribes on this connection


PublishObserver = Callable[[Peer, str, bytes, float], None]


class BrokerState:
    def __init__(
        self,
        policy: AccessPolicy,
        limits: BrokerLimits,
        store: BrokerStore | None,
        allow_server_assigned_ids: bool,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.store = store
        self.allow_server_assigned_ids = allow_server_assigned_ids
        self.connections: dict[int, Connection] = {}
        self.sessions: dict[str, MqttSession] = {}
        self.index = SubscriptionIndex()
        self.retained = RetainedStore()
        self.retained_owners = RetainedOwners()  # per-identity retained quota (quota.py)
        self.timers: TimerQueue[TimerKey] = TimerQueue()
        self.metrics = BrokerMetrics()
        self.events: list[BrokerEvent] = []
        # Sees every accepted client PUBLISH (continuous evaluation: rates, GPS fixes); must be cheap.
        self.publish_observer: PublishObserver | None = None
        self.out = Outbox()
        self._tallies: dict[str, dict[int, list[Any]]] = {}  # kind → id(decision) → [decision, count]
        self.next_conn_id = 1
        self.next_message_id = 1
        self.assigned_ids = 0

    # --- policy ---------------------------------------------------------------------------------

    def counted(self, kind: str, decision: Decision) -> Decision:
        """Count a decision by (kind, verdict, reason). Twice per routed message, so the count is kept
        per decision object (the engine hands out shared ones) and folded into metrics.decisions when
        the metrics are read; a tally of many distinct objects is folded early to stay small."""
        tally = self._tallies.get(kind)
        if tally is None:
            tally = self._tallies[kind] = {}
        cell = tally.get(id(decision))
        if cell is not None:
            cell[1] += 1
            return decision
        if len(tally) >= _TALLY_LIMIT:
            self.fold_decisions()
        tally[id(decision)] = [decision, 1]  # holding the object keeps its id from being reused
        return decision

    def fold_decisions(self) -> None:
        decisions = self.metrics.decisions
        for kind, tally in self._tallies.items():
            for decision, count in tally.values():
                decisions[(kind, decision.verdict.value, decision.reason)] += count
            tally.clear()

    def share_scope(self, peer: Peer, group: str) -> str:
        """Who `$share/{group}/...` of this peer is shared with; the policy answers when it can
        (a profile it lets share the group), otherwise the peer's own identity ("lab" for lab
        clients, which share only among themselves). Never the bare group name."""
        ask = getattr(self.policy, "share_scope", None)
        return str(ask(peer, group)) if ask is not None else identity_scope(peer)

    def certificate_deadline(self, peer: Peer) -> float | None:
        """When a live session of this peer must end because its certificate expires: the policy's
        answer (not_after plus its clock-skew grace) when it has one, else not_after itself."""
        ask = getattr(self.policy, "certificate_deadline", None)
        return ask(peer) if ask is not None else peer.certificate_not_after  # type: ignore[no-any-return]

    def may_deliver(self, session: MqttSession, topic: str, now: float) -> bool:
        """decide_delivery for one recipient; every delivery path goes through here."""
        decision = self.counted("delivery", self.policy.decide_delivery(session.peer, topic, now))
        if decision.verdict is _ALLOW:  # Decision.allowed, without a property call per delivery
            return True
        self.metrics.drops["delivery_denied"] += 1
        self.events.append(
            DeliveryDenied(session.peer, session.client_id, topic, decision.reason, decision.rule)
        )
        return False

    def connection_of(self, session: MqttSession) -> Connection | None:
        return None if session.conn is None else self.connections.get(session.conn)

    def is_connected(self, client_id: str) -> bool:
        session = self.sessions.get(client_id)
        return session is not None and session.conn is not None

    # --- persistence ----------------------------------------------------------------------------

    def persist_session(self, session: MqttSession) -> None:
        store = self.store
        if store is None:
            return
        if session.persistent:
            store.save_session(session_record(session))
            session.stored = True
        elif session.stored:
            self.unpersist_session(session)

    def unpersist_session(self, session: MqttSession) -> None:
        """Drop the session from the store (its rows go with it; unreferenced messages too)."""
        for delivery in (*session.inflight.values(), *session.queue):
            self._unref(delivery)
        if self.store is not None and session.stored:
            self.store.delete_session(session.client_id)
        session.stored = False

    def persist_delivery(self, session: MqttSession, delivery: Delivery) -> None:
        store = self.store
        if store is None or delivery.qos == 0 or not session.persistent:
            return
        message = delivery.message
        if message.message_id == 0:
            message.message_id = self.next_message_id
            self.next_message_id += 1
            store.save_message(message.message_id, message_record(message))
        if delivery.seq == 0:
            delivery.seq = session.allocate_seq()
            message.refs += 1
        store.save_delivery(
            session.client_id,
            delivery.seq,
            DeliveryRecord(
                message.message_id,
                delivery.qos,
                delivery.retain,
                delivery.subscription_ids,
                delivery.packet_id,
                delivery.released,
            ),
        )

    def forget_delivery(self, session: MqttSession, delivery: Delivery) -> None:
        """A delivery is done (acked, dropped or expired): remove it from the store."""
        if delivery.seq and self.store is not None:
            self.store.delete_delivery(session.client_id, delivery.seq)
        self._unref(delivery)

    def _unref(self, delivery: Delivery) -> None:
        if not delivery.seq:
            return
        delivery.seq = 0
        message = delivery.message
        message.refs -= 1
        if message.refs <= 0 and message.message_id and self.store is not None:
            self.store.delete_message(message.message_id)
            message.message_id = 0
            message.refs = 0


def message_record(message: Message, owner: str | None = None) -> MessageRecord:
    return MessageRecord(
        message.topic,
        message.payload,
        message.qos,
        message.retain,
        message.properties,
        message.expires_at,
        owner,
    )


def session_record(session: MqttSession) -> SessionRecord:
    return SessionRecord(
        client_id=session.client_id,
        identity=identity_to_text(session.identity),
        expiry_interval=session.expiry_interval,
        disconnected_at=None if session.connected else session.since,
        subscriptions=tuple(
            SubscriptionRecord(s.options, s.identifier) for s in session.subscriptions.values()
        ),
    )
