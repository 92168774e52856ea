"""The broker's world: connections, sessions, the index, the retained store, timers and the outbox.

Every handler module (connect, inbound, outbound, subscribe) works on one `BrokerState`; the Broker in
core.py owns it and is the only public face. The helpers here are the small things every handler
needs: asking the policy and counting the answer, and writing session state to the store (which is a
no-op without a store, for clean sessions, and for QoS 0).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.broker.actions import Outbox
from gateway.broker.events import BrokerEvent, DeliveryDenied
from gateway.broker.limits import BrokerLimits, BrokerMetrics
from gateway.broker.message import Delivery, FromStore, Message
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
from gateway.broker.sessions import MqttSession
from gateway.broker.timers import TimerQueue
from gateway.mqtt.packets import Connect, Publish, Will
from gateway.mqtt.session import ServerSession
from gateway.policy.access import AccessPolicy, identity_scope
from gateway.policy.decision import Decision, Verdict
from gateway.policy.peer import Peer

_ALLOW = Verdict.ALLOW
_TALLY_LIMIT = 64  # distinct decision objects counted per kind before they are folded into the metrics

# ("conn", conn_id) | ("cert", conn_id) | ("will", client_id) | ("expiry", client_id)
# | ("retained", topic) | ("stall", client_id)
TimerKey = tuple[str, Hashable]


@dataclass(slots=True)
class Held:
    """A client PUBLISH received and judged but neither routed nor acknowledged yet: a subscriber it
    goes to is too far behind (flow.py)."""

    publish: Publish
    retain: bool  # the RETAIN it is routed with (3.1.1 over the retained quota: cleared)
    wire: bytes | None  # the bytes it arrived as, when they can be forwarded as they are


@dataclass(slots=True)
class Awaiting:
    """A client QoS 1/2 PUBLISH whose acknowledgement waits for the cluster's store (receipts.py)."""

    conn_id: int
    client_id: str
    packet_id: int
    qos: int
    # A QoS 2 resend stored again under its recorded backbone id (inbound.py): routed here only if the
    # store had not had it (the node that died before its PUBREC may have stored it or not).
    resend: Message | None = None


class Connection:
    """One network connection as the broker sees it."""

    __slots__ = (
        "awaiting",
        "client_id",
        "conn_id",
        "connect",
        "held",
        "held_topics",
        "opened_at",
        "paused",
        "peer",
        "protocol",
        "session",
        "violations",
        "will",
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
        # Flow control (flow.py), created on first use: PUBLISHes held unacknowledged in arrival order,
        # their topics (a later message on a held topic waits behind them), and whether reading from
        # the connection is paused (held messages reached the cap; the edge stops reading the socket).
        self.held: deque[Held] | None = None
        self.held_topics: dict[str, int] | None = None
        self.paused = False
        # receipt → packet id: PUBLISHes routed but acknowledged only once the cluster stored them
        self.awaiting: dict[int, int] | None = None


PublishObserver = Callable[[Peer, str, bytes, float], None]
# Sees every accepted client PUBLISH and will, after local routing, with the publisher's client id and
# peer: the cluster's backbone sends it to the other nodes (gateway/app/backbone.py). Must be cheap.
# The fourth argument is a receipt for a client's QoS 1/2 PUBLISH (None for wills and QoS 0); the sink
# answers True when that PUBLISH's acknowledgement must wait for `Broker.stored` (receipts.py). The
# fifth: the share groups (scope, name, plain filter) a member on this node took it for already
# (`route`'s local-first delivery), which no other node may give it to. The sixth: the backbone id to
# store it under (from `ClusterHooks.message_id`), named in the session's cluster record first, so
# that its store waits for that record; None: the backbone picks one.
GroupKey = tuple[str | None, str, str]
BackboneSink = Callable[[Message, str, Peer, int | None, Sequence[GroupKey], str | None], bool]


@dataclass(slots=True)
class ClusterHooks:
    """What a cluster's node adds to the broker (gateway/app/cluster_*.py, docs/cluster.md "Sessions,
    retained messages, shared subscriptions and wills across nodes"); a single gateway has none.

    `session_started(client_id, peer, now)`: a CONNECT was accepted here (the node announces it, so
    the other nodes end their session of that client id). `retained_changed(message, client_id)`: a
    client or will set (or, with an empty payload, cleared) a retained message here (stored once for
    the cluster). `groups_elsewhere()`: True while the backbone delivers shared subscriptions (NATS
    queue groups pick one node per message): then a message a client sent to this node goes to a
    share group here only if a connected member here takes it at once (local first: no crossing to
    another node; the backbone names the group on the message so no other node gives it again),
    and otherwise to the node NATS picks, which calls `route_to_group`; a message from another node
    reaches this node's share groups only that way.

    `session_recorded(client_id, record)`: a persistent session was created or changed here (its
    subscriptions, its connection's start or end), or, with None, ended; the cluster keeps the latest
    record per client id. `session_elsewhere(client_id)`: the cluster's latest record of that client
    id's persistent session, if another node holds one (a CONNECT with clean start 0 resumes it here:
    resume_elsewhere.py). `message_id()`: a new backbone id for a message the cluster stores
    (JetStream), for a QoS 2 PUBLISH from a persistent session, whose cluster record names it before
    its store (inbound.py)."""

    session_started: Callable[[str, Peer, float], None] | None = None
    retained_changed: Callable[[Message, str], None] | None = None
    groups_elsewhere: Callable[[], bool] | None = None
    session_recorded: Callable[[str, SessionRecord | None], None] | None = None
    session_elsewhere: Callable[[str], SessionRecord | None] | None = None
    message_id: Callable[[], str] | None = None


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
        self.backbone: BackboneSink | None = None  # None unless cluster.nats is set
        self.cluster = ClusterHooks()  # all None unless cluster.nats is set
        self.out = Outbox()
        # Sessions holding publishers back (flow.py); empty (nearly always) keeps the publish path short.
        self.holding: dict[str, None] = {}
        self.ready: dict[int, None] = {}  # held-back connections to try again before this call ends
        self.awaiting: dict[int, Awaiting] = {}  # receipt → an ack waiting for the cluster's store
        self.next_receipt = 1
        self.delivered: list[int] = []  # receipts of stored messages whose delivery ended (receipts.py)
        self.delivery_sink: Callable[[list[int]], None] | None = None
        # Persistent sessions whose QoS 1/2 messages come only from the cluster's store (their own
        # durable consumers): local QoS>0 routing skips them (the backbone keeps this up to date).
        self.durable_sessions: Container[str] = ()
        self._tallies: dict[str, dict[int, list[Any]]] = {}  # kind → id(decision) → [decision, count]
        # The "delivery" tally, read by may_deliver itself (once per recipient of every message).
        self._delivery_tally: dict[int, list[Any]] = self._tallies.setdefault("delivery", {})
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
        decision = self.policy.decide_delivery(session.peer, topic, now)
        cell = self._delivery_tally.get(id(decision))
        if cell is not None:
            cell[1] += 1  # what counted("delivery", decision) does for a decision seen before
        else:
            self.counted("delivery", decision)
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
        self.record_session(session)
        store = self.store
        if store is None:
            return
        if session.persistent:
            store.save_session(session_record(session))
            session.stored = True
        elif session.stored:
            self.page_in(session, session.stored_queued)  # it goes on without the store: all in memory
            self.unpersist_session(session)

    def let_store_forget(self, stored: FromStore | None) -> None:
        """The cluster's store may forget this message now: its receipt is reported at the end of
        this broker call (watch_deliveries), once."""
        if stored is not None and stored.receipt is not None:
            self.delivered.append(stored.receipt)
            stored.receipt = None

    def record_session(self, session: MqttSession, *, ended: bool = False) -> bool:
        """Tell the cluster (if any) a persistent session's latest state, or that it is gone. Not for
        a session whose client went to another node: the record is that node's to write now. True
        when a record of the session went to the cluster."""
        hook = self.cluster.session_recorded
        if hook is None or session.elsewhere:
            return False
        if session.persistent and not ended:
            hook(session.client_id, session_record(session))
            session.recorded = True
            return True
        if session.recorded:
            hook(session.client_id, None)
            session.recorded = False
        return False

    def unpersist_session(self, session: MqttSession) -> None:
        """Drop the session from the store (its rows go with it, and messages only it pointed at)."""
        for delivery in (*session.inflight.values(), *session.queue):
            if delivery.seq:
                delivery.seq = 0
                delivery.message.refs -= 1
        if self.store is not None and session.stored:
            self.store.delete_session(session.client_id)
        session.stored = False

    def persist_delivery(self, session: MqttSession, delivery: Delivery, *, kept: bool = True) -> None:
        """Write a QoS>0 delivery of a persistent session (insert, or update its packet id / PUBREL
        state). `kept=False`: the delivery will be held only in the store (queues.py)."""
        store = self.store
        if store is None or delivery.qos == 0 or not session.persistent:
            return
        message = delivery.message
        if delivery.seq == 0:
            if message.message_id == 0:
                message.message_id = self.next_message_id
                self.next_message_id += 1
            if message.refs == 0:
                # No delivery held in memory vouches for the row: it may never have been written, or
                # been deleted with its last delivery since. Write it (again: insert or replace).
                store.save_message(message.message_id, message_record(message))
            delivery.seq = session.allocate_seq()
            if kept:
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
        if delivery.stored is not None:
            self.let_store_forget(delivery.stored)
        if not delivery.seq:
            return
        message = delivery.message
        if self.store is not None:
            self.store.delete_delivery(session.client_id, delivery.seq, message.message_id)
        delivery.seq = 0
        message.refs -= 1

    # --- queues held in the store (queues.py says when) ----------------------------------------

    def spill_queue(self, session: MqttSession) -> None:
        """Keep a persistent session's queued QoS>0 deliveries only in the store (it went offline)."""
        if self.store is None or not session.stored or not session.queue:
            return
        kept: deque[Delivery] = deque()
        moved = 0
        for delivery in session.queue:
            if delivery.seq:
                delivery.message.refs -= 1
                moved += 1
            else:
                kept.append(delivery)  # QoS 0: never written to the store
        if moved:
            session.queue = kept
            session.stored_queued += moved
            session.stored_after = 0  # every queued row of the session is store-only now

    def page_in(self, session: MqttSession, limit: int) -> None:
        """Move up to `limit` store-only queued deliveries, oldest first, to the in-memory queue."""
        store = self.store
        asked = min(limit, session.stored_queued)
        if store is None or asked <= 0:
            return
        rows = store.load_queued(session.client_id, session.stored_after, asked)
        for seq, record, m in rows:
            message = Message(
                m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at, record.message_id, 1
            )
            ids = record.subscription_ids
            session.queue.append(Delivery(message, record.qos, record.retain, ids, seq=seq))
            session.stored_after = seq
        session.stored_queued -= len(rows)
        if len(rows) < asked:  # fewer rows than counted (none should be): the store is the truth
            session.queued -= session.stored_queued
            session.stored_queued = 0
            session.queued_bytes = sum(len(d.message.payload) for d in session.queue)


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
        released=tuple(
            (packet_id, d.stored.message_id)
            for packet_id, d in session.inflight.items()
            if d.released and d.stored is not None
        ),
        received=tuple(
            (packet_id, message_id, digest)
            for packet_id, (message_id, digest) in session.inbound_recorded.items()
        ),
    )
