"""The Broker: the pure routing core the transport drives with bytes, losses and clock ticks.

Every entry point takes `now` (wall-clock epoch seconds: session expiry and message expiry are stored
as absolute times and must mean the same thing after a restart) and returns the actions to apply.
Nothing here reads a clock, opens a socket or awaits; the only I/O is the store, committed once at the
end of each entry point (group commit), before the actions that carry acknowledgements are returned.

Isolation: whatever bytes one client sends, `receive` does not raise. A protocol violation closes that
connection with the right code; a bug while handling it closes that connection with reason
"internal_error" (counted and logged) and leaves everyone else alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, replace

from gateway.broker import elsewhere, receipts
from gateway.broker.actions import Action, Outbox
from gateway.broker.connect import drop_connection, end_connection, end_session, handle_connect
from gateway.broker.events import BrokerEvent
from gateway.broker.flow import session_offline, unpause_if_room
from gateway.broker.inbound import (
    accept,
    deliver_stored,
    handle_publish,
    handle_pubrel,
    release_held,
    route,
    route_resend,
    route_to_group,
)
from gateway.broker.lifecycle import close_for_violation, count_denials, fire_timer, handle_disconnect
from gateway.broker.limits import BrokerLimits, BrokerMetrics, SessionInfo
from gateway.broker.loading import load_state
from gateway.broker.message import FromStore, Message
from gateway.broker.outbound import on_puback, on_pubcomp, on_pubrec, releases_due
from gateway.broker.persistence import BrokerStore
from gateway.broker.routing import IndexWatcher
from gateway.broker.sessions import MqttSession, offline_peer
from gateway.broker.state import BackboneSink, BrokerState, ClusterHooks, Connection, PublishObserver
from gateway.broker.subscribe import handle_subscribe, handle_unsubscribe, recheck_subscriptions
from gateway.mqtt.codec import puback_success
from gateway.mqtt.errors import MqttError
from gateway.mqtt.packets import (
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
)
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.session import ServerSession, Violation, reason_of
from gateway.mqtt.topics import validate_topic_name
from gateway.policy.access import AccessPolicy
from gateway.policy.peer import Peer
from pki.names import Identity

log = logging.getLogger("fleetgate.broker")


# A message another node accepted: topic, payload, QoS, retain flag, its 5.0 properties, the
# publisher's client id (no-local).
RemoteMessage = tuple[str, bytes, int, bool, Properties, str | None]
# A message from a persistent session's own consumer of the cluster's store: the message, its receipt,
# its backbone id and the packet id it goes out under at QoS 2 (the same on every node).
StoredMessage = tuple[RemoteMessage, int, str, int]


@dataclass(frozen=True)
class DiscardedSessions:
    sessions: int
    subscriptions: int
    actions: list[Action]


class Broker:
    def __init__(
        self,
        policy: AccessPolicy,
        limits: BrokerLimits = BrokerLimits(),  # noqa: B008 - frozen, so sharing the default is safe
        store: BrokerStore | None = None,
        *,
        allow_server_assigned_ids: bool = False,
        defer_commit: bool = False,
    ) -> None:
        """`defer_commit=True`: entry points only stage store writes, and the transport must call
        `flush_store()` before it applies the returned actions (one commit per event-loop batch)."""
        self._st = BrokerState(policy, limits, store, allow_server_assigned_ids)
        self._defer_commit = defer_commit
        self._unarmed: list[MqttSession] = []  # loaded sessions whose disconnect time is unknown
        self._released: list[Connection] = []  # connections whose held PUBLISHes this call acknowledged
        if store is not None:
            self._unarmed = load_state(self._st, store.load())

    # --- the transport's entry points -------------------------------------------------------------

    def open(self, peer: Peer, now: float) -> int:
        st = self._st
        self._arm(now)
        conn_id = st.next_conn_id
        st.next_conn_id += 1
        limits = st.limits
        protocol = ServerSession(
            now=now,
            connect_timeout=limits.connect_timeout,
            max_packet_size=limits.max_packet_size,
            receive_maximum=limits.receive_maximum,
            topic_alias_maximum=limits.max_topic_alias,
            max_keep_alive=limits.max_keep_alive,
        )
        st.connections[conn_id] = Connection(conn_id, peer, protocol, now)
        st.timers.set(("conn", conn_id), now + limits.connect_timeout)
        st.metrics.connections_opened += 1
        return conn_id

    def receive(self, conn: int, data: bytes, now: float) -> list[Action]:
        st = self._st
        connection = st.connections.get(conn)
        if connection is None:
            return []  # closed by us; the socket may still deliver a few bytes
        self._arm(now)
        st.metrics.bytes_in += len(data)
        if connection.paused:
            # Its sender is held back (flow.py) and the edge stopped reading; what was already on its
            # way waits, unparsed, until the connection is resumed.
            connection.protocol.receive_data(data, now)
            return []
        try:
            self._process(connection, data, now)
        except Exception:
            self._internal_error(connection, now)
        return self._finish(now, (connection,))

    def receive_batch(self, reads: list[tuple[int, bytes]], now: float) -> list[Action]:
        """What many connections' reads carried, in one entry (the edge hands it everything that
        arrived in one event-loop iteration): one arming of the timers, one release pass, one commit
        and one list of actions for all of them.

        Each (conn, data) is handled exactly as `receive` would, in the order given, so one
        connection's bytes keep their order; a connection that sends garbage or trips a bug is
        closed alone, as in `receive`. If the one commit fails, the connections handled from the
        first staged store write on are treated as `receive` treats its one: their sends are
        discarded and they are closed (their acknowledgements may not be durable)."""
        st = self._st
        self._arm(now)
        connections = st.connections
        metrics = st.metrics
        store = st.store
        staged: list[Connection] = []  # handled while the store had writes to commit
        for conn_id, data in reads:
            connection = connections.get(conn_id)
            if connection is None:
                continue  # closed by us (maybe earlier in this batch); its socket may still deliver
            metrics.bytes_in += len(data)
            if connection.paused:
                connection.protocol.receive_data(data, now)
                continue
            try:
                self._process(connection, data, now)
            except Exception:
                self._internal_error(connection, now)
            if store is not None and store.pending:
                staged.append(connection)
        return self._finish(now, staged)

    def connection_lost(self, conn: int, now: float) -> list[Action]:
        st = self._st
        connection = st.connections.get(conn)
        if connection is None:
            return []
        self._arm(now)
        try:
            end_connection(st, connection, now, "connection_lost", b"", will=True, socket_gone=True)
        except Exception:
            self._internal_error(connection, now)
        return self._finish(now)

    def tick(self, now: float) -> list[Action]:
        self._arm(now)
        for key in self._st.timers.pop_due(now):
            try:
                fire_timer(self._st, key, now)
            except Exception:
                log.exception("timer %r failed", key)
                self._st.metrics.internal_errors += 1
                kind, ident = key
                connection = self._st.connections.get(ident) if isinstance(ident, int) else None
                if kind == "conn" and connection is not None:
                    self._force_close(connection, now)
        return self._finish(now)

    def next_deadline(self) -> float | None:
        return self._st.timers.next_deadline()

    def flush_store(self) -> None:
        self._commit((), 0.0)
        self._released.clear()

    # --- the gateway's entry points -------------------------------------------------------------

    def disconnect_where(
        self, predicate: Callable[[Peer], bool], reason_code: int, reason: str, now: float
    ) -> list[Action]:
        """Close every live connection whose peer matches (revocation, partner cut-off...). 5.0 clients
        get DISCONNECT(reason_code) with `reason` as reason string; 3.1.1 clients are just closed."""
        close_reason = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "administrative_action"
        self._arm(now)
        for connection in list(self._st.connections.values()):
            try:
                if predicate(connection.peer):
                    farewell = connection.protocol.disconnect(reason_code, reason)
                    end_connection(self._st, connection, now, close_reason, farewell, will=True)
            except Exception:
                self._internal_error(connection, now)
        return self._finish(now)

    def discard_offline_sessions(self, predicate: Callable[[Peer], bool], now: float) -> DiscardedSessions:
        """End every offline session whose last peer matches, with its subscriptions, queue and pending
        will (a persistent session of an identity that was cut off can never resume). Live sessions
        are `disconnect_where`'s: disconnect them first."""
        st = self._st
        self._arm(now)
        offline = [s for s in st.sessions.values() if s.conn is None and s.peer is not None]
        victims = [s for s in offline if predicate(s.peer)]  # type: ignore[arg-type]  # peer checked above
        subscriptions = sum(len(session.subscriptions) for session in victims)
        for session in victims:
            end_session(st, session, now)
        return DiscardedSessions(len(victims), subscriptions, self._finish(now))

    def reauthorize(self, now: float) -> list[Action]:
        """Policy or identity state changed: re-decide every live session (connect, then subscriptions)."""
        st = self._st
        self._arm(now)
        for connection in list(st.connections.values()):
            session, connect = connection.session, connection.connect
            if session is None or connect is None or connection.conn_id not in st.connections:
                continue
            try:
                decision = st.counted("connect", st.policy.decide_connect(connection.peer, connect, now))
                if decision.allowed:
                    recheck_subscriptions(st, session, now)
                    continue
                farewell = connection.protocol.disconnect(ReasonCode.NOT_AUTHORIZED, decision.reason)
                end_connection(st, connection, now, "not_authorized", farewell, will=True)
            except Exception:
                self._internal_error(connection, now)
        return self._finish(now)

    def observe_publishes(self, observer: PublishObserver | None) -> None:
        """Call `observer(peer, topic, payload, now)` for every client PUBLISH the policy accepted."""
        self._st.publish_observer = observer

    def forward_accepted(self, sink: BackboneSink | None) -> None:
        """Call `sink(message, client_id, peer)` for every client PUBLISH and will accepted and routed
        here: a cluster's node sends it to the other nodes (gateway/app/backbone.py). Messages the
        gateway publishes itself (publish_internal) and messages from other nodes (route_remote) are
        not given to it: every node publishes its own, and nothing goes back out."""
        self._st.backbone = sink

    def watch_subscriptions(self, watcher: IndexWatcher | None) -> None:
        """Tell `watcher(added, client_id, subscription)` of every subscription in the index now
        (sessions loaded from the store) and of every one added or removed from now on."""
        index = self._st.index
        index.watcher = watcher
        if watcher is None:
            return
        for session in self._st.sessions.values():
            for sub in session.subscriptions.values():
                watcher(True, session.client_id, sub)

    def session_persistent(self, client_id: str) -> bool:
        """Does `client_id` have a session that outlives its connection (the cluster's backbone gives
        such sessions durable consumers of their own)?"""
        session = self._st.sessions.get(client_id)
        return session is not None and session.persistent

    def session_presence(self, client_id: str) -> tuple[bool, float]:
        """(connected to this node now, its session expiry interval in seconds)."""
        session = self._st.sessions.get(client_id)
        if session is None:
            return False, 0.0
        return session.connected, float(session.expiry_interval)

    def deliver_durably(self, clients: Container[str]) -> None:
        """`clients` (kept up to date by the caller) get client QoS 1/2 messages and wills only
        through `deliver_stored`: local routing skips them for those."""
        self._st.durable_sessions = clients

    def watch_deliveries(self, sink: Callable[[list[int]], None] | None) -> None:
        """Call `sink(receipts)` at the end of a broker call with the receipts (`deliver_stored`) whose
        deliveries ended: acknowledged by the subscriber, dropped, or sent at QoS 0."""
        self._st.delivery_sink = sink

    def deliver_stored(self, client_id: str, messages: Sequence[StoredMessage], now: float) -> list[Action]:
        """Messages from a session's own durable consumer in the cluster's store, for that session
        only, each with a receipt reported (watch_deliveries) once the store may forget it."""
        st = self._st
        self._arm(now)
        for (topic, payload, qos, retain, properties, origin), receipt, message_id, packet_id in messages:
            try:
                message = _arrived(topic, payload, qos, retain, properties, now)
                stored = FromStore(receipt, message_id, packet_id)
                deliver_stored(st, client_id, message, origin, stored, now)
                st.metrics.remote_in += 1
            except Exception:
                log.exception("delivering a stored message on %r to %r failed", topic, client_id)
                st.metrics.internal_errors += 1
        return self._finish(now)

    def releases_due(self, client_id: str, packet_ids: Sequence[int], now: float) -> list[Action]:
        """The cluster stored a record of `client_id`'s session naming these QoS 2 releases, or gave
        up waiting for it: their PUBRELs go out (outbound.release_waits says why they waited). A
        release already sent is left alone, so both may come."""
        self._arm(now)
        session = self._st.sessions.get(client_id)
        if session is not None:
            releases_due(self._st, session, packet_ids)
        return self._finish(now)

    def released_ids(self, client_id: str) -> set[str]:
        """The backbone ids of the QoS 2 messages from the cluster's store that `client_id`'s session
        released (PUBREC received) and still awaits PUBCOMP for: never to be delivered again."""
        session = self._st.sessions.get(client_id)
        if session is None:
            return set()
        return {d.stored.message_id for d in session.inflight.values() if d.released and d.stored}

    def route_remote(
        self, messages: Sequence[RemoteMessage], now: float, skip: Container[str] = ()
    ) -> list[Action]:
        """Messages another node accepted (after every check at its edge), routed to this node's
        subscribers through the same delivery decisions as a local message (decide_delivery per
        recipient, no-local against the publisher's client id). Not retained here and not given to
        the backbone again. A message whose topic is not a valid topic name is dropped and counted."""
        st = self._st
        self._arm(now)
        for topic, payload, qos, retain, properties, origin in messages:
            try:
                route(st, _arrived(topic, payload, qos, retain, properties, now), origin, now, skip=skip)
                st.metrics.remote_in += 1
            except Exception:
                log.exception("routing a message from another node on %r failed", topic)
                st.metrics.internal_errors += 1
        return self._finish(now)

    # --- a cluster's other nodes (broker/elsewhere.py) -------------------------------------------

    @property
    def cluster(self) -> ClusterHooks:
        """The hooks a cluster's node sets (gateway/app/cluster_*.py); all None on a single gateway."""
        return self._st.cluster

    def connected_elsewhere(
        self, client_id: str, identity: Identity | None, announced: tuple[float, str], here: str, now: float
    ) -> tuple[Peer | None, list[Action]]:
        """Node `announced[1]` accepted a CONNECT for `client_id` at `announced[0]`: end this node's
        session of it (and its live connection, if the announced one is later than it; `here` is this
        node's name, the tiebreak). Returns the peer whose connection was taken over, if any."""
        self._arm(now)
        taken = None
        try:
            taken = elsewhere.connected_elsewhere(self._st, client_id, identity, announced, here, now)
        except Exception:
            log.exception("ending the session of %r taken over on another node failed", client_id)
            self._st.metrics.internal_errors += 1
        return taken, self._finish(now)

    def taken_over_elsewhere(self, client_id: str, old_peer: Peer, now: float) -> None:
        """This node's new connection for `client_id` took over `old_peer`'s on another node."""
        elsewhere.taken_over_elsewhere(self._st, client_id, old_peer)

    def retained_elsewhere(
        self, topic: str, payload: bytes, qos: int, properties: Properties, expires_at: float | None,
        origin: str, now: float,
    ) -> list[Action]:  # fmt: skip
        """A retained message set (or, empty, cleared) through another node: stored here, not routed."""
        self._arm(now)
        try:
            message = _arrived(topic, payload, qos, True, properties, now)
            message.expires_at = expires_at  # from when it was set, not from now
            elsewhere.retained_elsewhere(self._st, message, origin, now)
        except Exception:
            log.exception("storing a retained message from another node on %r failed", topic)
            self._st.metrics.internal_errors += 1
        return self._finish(now)

    def route_to_group(
        self, message: RemoteMessage, group: tuple[str | None, str, str], now: float
    ) -> list[Action]:
        """A message NATS gave this node for one share group (scope, name, plain filter): one of
        the group's members here gets it, through the same decisions as `route`."""
        st = self._st
        self._arm(now)
        topic, payload, qos, retain, properties, _origin = message
        try:
            route_to_group(st, _arrived(topic, payload, qos, retain, properties, now), group, now)
        except Exception:
            log.exception("routing a shared message from the cluster on %r failed", topic)
            st.metrics.internal_errors += 1
        return self._finish(now)

    def stored(
        self,
        confirmed: Sequence[int],
        failed: Sequence[int],
        now: float,
        duplicates: Container[int] = (),
    ) -> list[Action]:
        """The backbone's word on receipts it took (receipts.py): `confirmed` are stored in the
        cluster, so their PUBACK/PUBREC goes out; `failed` can never be stored (larger than NATS's
        max_payload). A 5.0 client is told so, 0x97 on its PUBACK/PUBREC, and keeps its connection
        (with it a unit's control channel); a 3.1.1 client cannot be told, so its connection is closed
        unacknowledged and it resends. `duplicates`: confirmed receipts the store had had already (a
        QoS 2 resend after a node's death is routed here only if it is not one of them)."""
        st = self._st
        self._arm(now)
        for receipt in confirmed:
            settled = receipts.settle(st, receipt)
            if settled is None:
                continue
            entry, conn = settled
            session = st.sessions.get(entry.client_id)
            alive = conn is not None and conn.session is session
            if entry.resend is not None and receipt not in duplicates:
                peer = conn.peer if conn is not None and alive else None
                route_resend(st, entry.resend, entry.client_id, peer, now)
            if (
                entry.qos == 2
                and session is not None
                and (alive or (session.persistent and session.conn is None))
            ):
                session.inbound_qos2.add(entry.packet_id)
                if session.persistent and st.store is not None:
                    st.store.add_inbound_qos2(entry.client_id, entry.packet_id)
            if conn is None or not alive:
                continue
            if entry.qos == 1:
                st.out.send(conn.conn_id, puback_success(entry.packet_id))
            else:
                st.out.send(conn.conn_id, conn.protocol.encode(Pubrec(entry.packet_id)))
            conn.protocol.acks_flushed(receipts.withheld(conn))
        for receipt in failed:
            settled = receipts.settle(st, receipt)
            if settled is None:
                continue
            entry, conn = settled
            if conn is None:
                continue
            if conn.protocol.is_v5 and conn.session is not None:
                refused = ReasonCode.QUOTA_EXCEEDED
                ack = Puback(entry.packet_id, refused) if entry.qos == 1 else Pubrec(entry.packet_id, refused)
                st.out.send(conn.conn_id, conn.protocol.encode(ack))
                conn.protocol.acks_flushed(receipts.withheld(conn))
                continue
            self._force_close(conn, now, "not_stored")
        return self._finish(now)

    def publish_internal(self, publish: Publish, now: float) -> list[Action]:
        """The gateway's own message: routed and retained like any other, without decide_publish (the
        gateway is the authority) but through decide_delivery for every recipient."""
        validate_topic_name(publish.topic)  # a bad topic here is our bug: let it raise
        if publish.qos not in (0, 1, 2):
            raise ValueError(f"QoS {publish.qos} is not 0, 1 or 2")
        self._arm(now)
        props = replace(publish.properties, topic_alias=None, subscription_identifiers=())
        try:
            accept(self._st, publish.topic, publish.payload, publish.qos, publish.retain, props, None, now)
        except Exception:
            log.exception("routing an internal publish on %r failed", publish.topic)
            self._st.metrics.internal_errors += 1
        return self._finish(now)

    def shutdown(self, now: float) -> list[Action]:
        """DISCONNECT 0x8B to 5.0 clients, close everyone. Wills are not published: the clients did
        nothing wrong and persistent sessions resume after the restart."""
        self._arm(now)
        for connection in list(self._st.connections.values()):
            try:
                farewell = connection.protocol.disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
                end_connection(self._st, connection, now, "server_shutdown", farewell, will=False)
            except Exception:
                self._internal_error(connection, now)
        return self._finish(now)

    def drain_events(self) -> list[BrokerEvent]:
        events, self._st.events = self._st.events, []
        return events

    @property
    def metrics(self) -> BrokerMetrics:
        st = self._st
        st.fold_decisions()
        m = st.metrics
        m.retained_messages = len(st.retained)
        m.sessions = len(st.sessions)
        m.connected = sum(1 for c in st.connections.values() if c.session is not None)
        m.held = sum(len(c.held) for c in st.connections.values() if c.held)
        m.sessions_holding = len(st.holding)
        m.queued = sum(s.queued for s in st.sessions.values())
        return m

    @property
    def subscriptions_version(self) -> int:
        """Changes whenever any subscription is added or removed, anywhere: a caller that rebuilds
        something from sessions() (subscriber views, flows) can skip the O(sessions) snapshot when
        it has not changed since its last look."""
        return self._st.index.version

    def connected_peers(self) -> list[Peer]:
        """The peer of every connected session: what a node's heartbeat counts once a second, without
        the admin API's SessionInfo built for each of thousands of sessions (~4 % of a busy worker)."""
        return [s.peer for s in self._st.sessions.values() if s.connected and s.peer is not None]

    def sessions(self) -> list[SessionInfo]:
        return [
            SessionInfo(
                s.client_id,
                s.peer,
                s.connected,
                tuple(s.subscriptions),
                s.queued,
                len(s.inflight),
                s.since,
                s.expiry_interval,
                s.queued_bytes,
                s.dropped,
                s.holding,
            )
            for s in self._st.sessions.values()
        ]

    # --- one connection's packets ---------------------------------------------------------------

    def _process(self, conn: Connection, data: bytes, now: float) -> None:
        st = self._st
        protocol = conn.protocol
        protocol.receive_data(data, now)
        while conn.conn_id in st.connections and not conn.paused:  # paused: the rest waits in the reader
            event = protocol.next_event()
            if event is None:
                break
            if isinstance(event, Violation):
                close_for_violation(st, conn, event, now)
                break
            try:
                if type(event) is Publish:  # nearly every packet: handled here, without a call
                    session = conn.session
                    assert session is not None  # the session machine lets nothing but CONNECT through first
                    if not handle_publish(st, conn, session, event, now):
                        count_denials(st, conn, 1, now)
                else:
                    self._dispatch(conn, event, now)
            except MqttError as exc:
                if not exc.peer_at_fault:
                    raise
                protocol.close()
                violation = Violation(reason_of(exc), exc.reason_code, conn.session is None)
                close_for_violation(st, conn, violation, now)
                break
        # This call's PUBACKs go out with its actions; the PUBLISHes it holds stay unacknowledged.
        protocol.acks_flushed(receipts.withheld(conn) if conn.held or conn.awaiting else 0)

    def _dispatch(self, conn: Connection, packet: Packet, now: float) -> None:
        """Every packet but a PUBLISH (`_process` hands those to handle_publish itself)."""
        st = self._st
        session = conn.session
        if isinstance(packet, Connect):
            handle_connect(st, conn, packet, now)
            return
        assert session is not None  # the session machine lets nothing but CONNECT through first
        if isinstance(packet, Puback):
            on_puback(st, session, packet, now)
        elif isinstance(packet, Pubrec):
            on_pubrec(st, conn, session, packet, now)
        elif isinstance(packet, Pubrel):
            handle_pubrel(st, conn, session, packet)
        elif isinstance(packet, Pubcomp):
            on_pubcomp(st, session, packet, now)
        elif isinstance(packet, Pingreq):
            st.out.send(conn.conn_id, conn.protocol.encode(Pingresp()))
        elif isinstance(packet, Subscribe):
            count_denials(st, conn, handle_subscribe(st, conn, session, packet, now), now)
        elif isinstance(packet, Unsubscribe):
            handle_unsubscribe(st, conn, session, packet)
        elif isinstance(packet, Disconnect):
            handle_disconnect(st, conn, session, packet, now)

    # --- timers ---------------------------------------------------------------------------------

    def _arm(self, now: float) -> None:
        """Loaded sessions that were connected when the broker stopped start expiring from now."""
        if not self._unarmed:
            return
        for session in self._unarmed:
            if session.conn is None and self._st.sessions.get(session.client_id) is session:
                session.since = now
                self._st.timers.set(("expiry", session.client_id), now + session.expiry_interval)
        self._unarmed = []

    # --- failure containment and the end of a call ----------------------------------------------

    def _internal_error(self, conn: Connection, now: float) -> None:
        log.exception("internal error on connection %d (%s); closing it", conn.conn_id, conn.peer.address)
        self._st.metrics.internal_errors += 1
        self._force_close(conn, now)

    def _force_close(self, conn: Connection, now: float, reason: str = "internal_error") -> None:
        """Close one connection with the least possible machinery (no will, no routing, no store)."""
        st = self._st
        if conn.conn_id in st.connections:
            drop_connection(st, conn, reason)
        session, conn.session = conn.session, None
        if session is None or session.conn != conn.conn_id:
            return
        session.conn = None
        session.since = now
        session.peer = offline_peer(session.peer)
        session_offline(st, session)
        if session.expiry_interval > 0:
            st.timers.set(("expiry", session.client_id), now + session.expiry_interval)
            return
        if st.sessions.get(session.client_id) is session:
            del st.sessions[session.client_id]
        for sub in session.subscriptions.values():
            st.index.remove(session.client_id, sub)

    def _commit(self, culprits: Sequence[Connection], now: float) -> None:
        st = self._st
        store = st.store
        if store is None or not store.pending:
            return
        try:
            store.commit()
            st.metrics.store_commits += 1
        except Exception as exc:
            # A full disk or an I/O error is the operator's to fix, not a bug: one line, no traceback.
            log.error(
                "cannot save broker state (%s); the acknowledgements waiting on it are withheld and "
                "their clients disconnected to resend; free disk space or check the data directory",
                exc,
            )
            st.metrics.store_errors += 1
            try:
                store.rollback()
            except Exception as rollback_exc:
                log.error("rolling back broker state failed too (%s)", rollback_exc)
            # Their acks are not durable: they must not go out. The clients resend after reconnecting.
            for culprit in [*culprits, *self._released]:
                if culprit.conn_id in st.connections:
                    st.out.discard_sends(culprit.conn_id)
                    st.out.close(culprit.conn_id, "store_error")
                    self._force_close(culprit, now)

    def _release_ready(self, now: float) -> None:
        """Connections held back by a subscriber that caught up (flow.py): route and acknowledge what
        they hold, in the order they were held, and go on with what a paused one has buffered."""
        st = self._st
        while st.ready:
            conn_id = next(iter(st.ready))
            del st.ready[conn_id]
            connection = st.connections.get(conn_id)
            if connection is None:
                continue
            try:
                release_held(st, connection, now)
                self._released.append(connection)
                if unpause_if_room(st, connection, now):
                    self._process(connection, b"", now)
            except Exception:
                self._internal_error(connection, now)

    def _finish(self, now: float, culprits: Sequence[Connection] = ()) -> list[Action]:
        st = self._st
        if st.ready:
            self._release_ready(now)
        if not self._defer_commit:
            self._commit(culprits, now)
            self._released.clear()  # deferred: flush_store commits, and closes these if it fails
        if st.delivered:
            done, st.delivered = st.delivered, []
            if st.delivery_sink is not None:
                st.delivery_sink(done)
        out = st.out
        st.out = Outbox()
        st.metrics.bytes_out += out.nbytes
        return out.actions()


def _arrived(
    topic: str, payload: bytes, qos: int, retain: bool, properties: Properties, now: float
) -> Message:
    """A message from another node (or the cluster's store) as this broker holds it: its topic and
    QoS checked as a client's would be (ValueError, MqttError), alias and subscription ids stripped,
    its expiry counted from now."""
    validate_topic_name(topic)
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS {qos}")
    props = properties
    if props.topic_alias is not None or props.subscription_identifiers:  # most carry neither
        props = replace(props, topic_alias=None, subscription_identifiers=())
    return Message.arriving(topic, payload, qos, retain, props, now)
