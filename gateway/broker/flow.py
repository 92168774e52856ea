"""Flow control: a subscriber that falls behind holds back the publishers that feed it.

Theory of operation
-------------------
A PUBACK (PUBREC) is the gateway taking responsibility for a message, so it goes out only when every
QoS 1/2 subscriber the message is for has room for it: a queue under its high-water mark
(`BrokerLimits.queue_high_water` messages, `queue_high_water_bytes` payload bytes).

    a connected subscriber's queue reaches high water        → it is *holding*
    a QoS>0 PUBLISH that would go to a holding subscriber at  → *held*: judged, but neither routed nor
      QoS>0                                                     acknowledged; the connection waits on
                                                                that subscriber
    a later QoS>0 PUBLISH of that client on a held topic      → held behind it (order per topic)
    the subscriber's queue falls to half its high water       → it stops holding; the connections
                                                                waiting on it are released, in the
                                                                order they were held, before the
                                                                broker call returns (`st.ready`)
    a 3.1.1 connection's held PUBLISHes reach our Receive     → reading from it is paused
      Maximum (3.1.1 clients are not bound by it)               (PauseReading) until some are released

Withholding the acknowledgement is MQTT's own flow control: a 5.0 client may have at most our Receive
Maximum QoS>0 PUBLISHes unacknowledged (§4.9), so a held-back client stops sending them by itself; a
3.1.1 client has no such limit and is stopped at the same count by pausing reading, TCP doing the
rest. Everything else on a held-back connection goes on: PINGREQ, QoS 0, the acks of what it
receives, and QoS>0 PUBLISHes to subscribers that are not behind. A unit whose telemetry waits for a
slow analytics service still gets its vehicle-control messages at once and its control acks are
routed at once (unless its own client queues them behind the held telemetry in its full window: see
docs/operations.md). Only publishers whose messages would go to the slow subscriber are held back.

Not held back: QoS 0 (dropped for a subscriber that far behind: queues.py), wills, the gateway's own
messages and retained messages sent on subscribe (no sender to slow down), and offline sessions
(their queues go to the store, within their bound). A holding subscriber that acknowledges nothing
for `subscriber_stall_timeout` is *stalled*: it stops holding, and its queue runs into its bound and
the drop policy instead, so a client that reads but never acknowledges cannot hold the fleet's
telemetry forever; its next acknowledgement ends the stall.

A held message was judged when it arrived (its rate tokens spent then) and is authorised again,
without spending, when released: a unit quarantined or revoked meanwhile is not routed. A held
message whose connection closes is dropped: it was never acknowledged, and the client still has it.
"""

from __future__ import annotations

from collections import deque

from gateway.broker.routing import SharedGroup
from gateway.broker.sessions import MqttSession
from gateway.broker.state import BrokerState, Connection, Held
from gateway.mqtt.packets import Publish


def over_high_water(st: BrokerState, session: MqttSession) -> bool:
    limits = st.limits
    return session.queued >= limits.high_water or session.queued_bytes >= limits.high_water_bytes


def _under_low_water(st: BrokerState, session: MqttSession) -> bool:
    limits = st.limits
    return session.queued <= limits.high_water // 2 and session.queued_bytes <= limits.high_water_bytes // 2


# --- the publish path --------------------------------------------------------------------------------


def blocker(st: BrokerState, conn: Connection, topic: str, origin: str) -> tuple[str, ...] | None:
    """Must a QoS>0 PUBLISH on `topic` from `conn` be held? None: no. Client ids: it goes to those
    holding subscribers (any of them catching up may let it go). (): an earlier message on its topic
    is held, and it waits behind that one."""
    topics = conn.held_topics
    if topics and topic in topics:
        return ()
    if not st.holding:
        return None
    return holders(st, topic, origin) or None


def holders(st: BrokerState, topic: str, origin: str) -> tuple[str, ...]:
    """The holding subscribers a QoS>0 message on `topic` would go to at QoS>0 (the first found; for a
    shared group whose connected members all hold, all of them)."""
    targets, groups = st.index.match(topic, origin)
    holding = st.holding
    for client_id, target in targets.items():
        if client_id in holding and target.qos:
            return (client_id,)
    for group in groups:
        blocked = _group_holders(st, group)
        if blocked:
            return blocked
    return ()


def _group_holders(st: BrokerState, group: SharedGroup) -> tuple[str, ...]:
    """A shared group holds when every connected member does (inbound.route prefers the others)."""
    found: list[str] = []
    for client_id in group.order:
        if not st.is_connected(client_id):
            continue
        if client_id not in st.holding or not group.members[client_id].options.qos:
            return ()
        found.append(client_id)
    return tuple(found)


def hold(
    st: BrokerState,
    conn: Connection,
    publish: Publish,
    retain: bool,
    wire: bytes | None,
    on: tuple[str, ...],
) -> None:
    """Keep `publish` unacknowledged on `conn`, waiting on the subscribers `on` (none: behind its topic)."""
    held = conn.held
    topics = conn.held_topics
    if held is None or topics is None:
        held = conn.held = deque()
        topics = conn.held_topics = {}
    held.append(Held(publish, retain, wire))
    topics[publish.topic] = topics.get(publish.topic, 0) + 1
    st.metrics.publishes_held += 1
    wait(st, on, conn.conn_id)
    if len(held) >= st.limits.receive_maximum and not conn.paused and not conn.protocol.is_v5:
        # 3.1.1 has no Receive Maximum: a client that keeps sending gets its reading paused. A 5.0 client
        # cannot get here (more would be a protocol violation), and is never paused: its PINGREQs and
        # the acks of what it receives (a unit's control messages) must still be read.
        conn.paused = True
        st.out.pause(conn.conn_id)
        st.metrics.reads_paused += 1


def wait(st: BrokerState, on: tuple[str, ...], conn_id: int) -> None:
    for client_id in on:
        session = st.sessions[client_id]
        if session.waiting is None:
            session.waiting = {}
        session.waiting[conn_id] = None


def unheld(conn: Connection, held: Held) -> None:
    """`held` left the head of the connection's held queue (released or refused)."""
    topics = conn.held_topics
    assert topics is not None
    topic = held.publish.topic
    left = topics[topic] - 1
    if left:
        topics[topic] = left
    else:
        del topics[topic]


def unpause_if_room(st: BrokerState, conn: Connection, now: float) -> bool:
    """Resume reading a paused connection whose held messages went under the cap; True if it was."""
    if not conn.paused or (conn.held is not None and len(conn.held) >= st.limits.receive_maximum):
        return False
    conn.paused = False
    conn.protocol.heard(now)  # its silence while paused was ours
    st.out.resume(conn.conn_id)
    return True


# --- the subscriber side -----------------------------------------------------------------------------


def note_queued(st: BrokerState, session: MqttSession, now: float) -> None:
    """A delivery joined the session's queue (or a session came back with one)."""
    if session.holding or session.stalled or session.conn is None or not over_high_water(st, session):
        return
    session.holding = True
    session.progress_at = now  # the stall clock starts now: before, it had nothing to acknowledge
    st.holding[session.client_id] = None
    st.timers.set(("stall", session.client_id), now + st.limits.subscriber_stall_timeout)


def note_drained(st: BrokerState, session: MqttSession) -> None:
    """Deliveries left the session's queue."""
    if (session.holding or session.dropping) and _under_low_water(st, session):
        session.dropping = False  # a new episode of drops would be reported again
        stop_holding(st, session)


def note_progress(st: BrokerState, session: MqttSession, now: float) -> None:
    """The subscriber acknowledged a delivery."""
    session.progress_at = now
    if session.stalled:
        session.stalled = False
        note_queued(st, session, now)


def stop_holding(st: BrokerState, session: MqttSession) -> None:
    """The session no longer holds anyone back: the connections waiting on it are tried again."""
    if not session.holding:
        return
    session.holding = False
    st.holding.pop(session.client_id, None)
    st.timers.cancel(("stall", session.client_id))
    waiting, session.waiting = session.waiting, None
    if waiting:
        ready = st.ready
        for conn_id in waiting:
            ready[conn_id] = None


def fire_stall(st: BrokerState, client_id: str, now: float) -> None:
    session = st.sessions.get(client_id)
    if session is None or not session.holding:
        return
    timeout = st.limits.subscriber_stall_timeout
    if now - session.progress_at < timeout:
        st.timers.set(("stall", client_id), session.progress_at + timeout)
        return
    session.stalled = True
    st.metrics.subscribers_stalled += 1
    stop_holding(st, session)


def session_offline(st: BrokerState, session: MqttSession) -> None:
    """The session's connection ended (the session may live on, offline): it holds nobody back, and a
    persistent one keeps its queue in the store only."""
    session.stalled = False
    stop_holding(st, session)
    st.spill_queue(session)


def connection_closed(st: BrokerState, conn: Connection) -> None:
    """Forget what the connection held: never acknowledged, so the client still has it."""
    if conn.held:
        st.metrics.drops["held_at_disconnect"] += len(conn.held)
        for client_id in st.holding:
            waiting = st.sessions[client_id].waiting
            if waiting:
                waiting.pop(conn.conn_id, None)
    conn.held = conn.held_topics = None
    conn.paused = False
    st.ready.pop(conn.conn_id, None)
