"""CONNECT and the end of connections and sessions.

An empty client id from a certificate client becomes the certificate's id (5.0: returned as the
Assigned Client Identifier), except in 3.1.1 with clean session 0, which §3.1.3.1 refuses (0x02).

A CONNECT is refused (CONNACK ≥ 0x80, then close) when: the client id is empty and the client has no
certificate while the listener does not assign ids; the client asks for enhanced authentication (we
authenticate by certificate only); the policy denies the connection (client id not the certificate's:
0x85 / 3.1.1 0x02; anything else 0x87 / 3.1.1 0x05); or the will's topic is not a valid topic name
(0x90 / 3.1.1 0x05: a protocol matter). Whether the policy lets the will be published is *not* asked
here: it is asked when the will fires (inbound.publish_will), because the answer can change while the
session lives (quarantine, release), and because refusing a unit's CONNECT for its will would cut its
vehicle-control channel — a quarantined unit reconnecting with its usual will on fleet/{id}/state must
get its control subscriptions back. A will the policy forbids then is dropped, counted and reported.

A session belongs to the identity that created it (policy.access.decide_session_owner): a CONNECT
whose client id names a live or persistent session of another identity is refused (0x85 / 3.1.1 0x02)
before anything is touched — the owner is not disconnected and its session is not discarded. The only
sessions that give way to a different peer are those no certificate identity owns (a lab client's, a
stored one whose owner does not parse), to the certificate holder whose id they name.

On a cluster's node, a CONNECT with clean start 0 for a client id this node holds no session of may
resume the persistent session another node held (resume_elsewhere.py: from the cluster's record of
it, for the same identity only, its subscriptions re-authorized now).

Otherwise the session is chosen (§3.1.2.4): a live connection with the same client id is taken over
(it gets DISCONNECT 0x8E and its will follows §3.1.3.2.2: published, or left pending with its delay if
the new connection continues the session); an existing session is resumed if clean start is 0 (and
it is the peer's own); otherwise it ends (its pending will fires) and a new one begins.

When a connection ends, its will is published now, or after its delay (cancelled if the session is
resumed in time), or when the session ends, whichever comes first. A session with expiry 0 ends with
its connection; others wait for their expiry timer.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.broker import flow
from gateway.broker.events import (
    ClientConnected,
    ClientDisconnected,
    ConnectRefused,
    SessionDiscarded,
    SessionTakenOver,
)
from gateway.broker.inbound import publish_will
from gateway.broker.outbound import resume
from gateway.broker.records import identity_to_text
from gateway.broker.resume_elsewhere import forget_elsewhere, received_from_record, resume_elsewhere
from gateway.broker.sessions import MqttSession, PendingWill, offline_peer
from gateway.broker.state import BrokerState, Connection
from gateway.broker.subscribe import recheck_subscriptions
from gateway.mqtt.errors import TopicNameInvalid
from gateway.mqtt.packets import Connack, Connect, Properties, ProtocolVersion, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.topics import validate_topic_name
from gateway.policy.access import decide_session_owner
from gateway.policy.peer import Peer

_V5 = ProtocolVersion.MQTT_5


def handle_connect(st: BrokerState, conn: Connection, connect: Connect, now: float) -> None:
    client_id = connect.client_id
    assigned: str | None = None
    if not client_id:
        # 3.1.1 §3.1.3.1: an empty id with clean session 0 is always refused.
        identity = conn.peer.identity
        if connect.protocol_version != _V5 and not connect.clean_start:
            refuse(st, conn, client_id, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty_client_id")
            return
        if identity is not None:
            # A certificate client gets its certificate's id (5.0: Assigned Client Identifier), the one
            # id the policy's floor would accept from it anyway.
            client_id = assigned = identity.id
            connect = replace(connect, client_id=client_id)
        elif not st.allow_server_assigned_ids:
            refuse(st, conn, client_id, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty_client_id")
            return
        else:
            st.assigned_ids += 1
            client_id = assigned = f"auto-{int(now * 1000):x}-{st.assigned_ids}"
    if connect.properties.authentication_method is not None:
        refuse(st, conn, client_id, ReasonCode.BAD_AUTHENTICATION_METHOD, "authentication_method_unsupported")
        return
    decision = st.counted("connect", st.policy.decide_connect(conn.peer, connect, now))
    if not decision.allowed:
        code = (
            ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
            if decision.reason.startswith("client_id")
            else ReasonCode.NOT_AUTHORIZED
        )
        refuse(st, conn, client_id, code, decision.reason, decision.rule)
        return
    existing = _current_session(st, client_id, now)
    if existing is None and st.cluster.session_elsewhere is not None:
        if not connect.clean_start:
            existing = resume_elsewhere(st, conn.peer, client_id, now)  # another node's persistent session
        else:
            forget_elsewhere(st, conn.peer, client_id, now)  # a clean start ends it cluster-wide
    if existing is not None:
        owner = st.counted("connect", decide_session_owner(existing.identity, conn.peer))
        if not owner.allowed:
            refuse(st, conn, client_id, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, owner.reason, owner.rule)
            return
        if not connect.clean_start and st.cluster.session_elsewhere is not None:
            received_from_record(st, conn.peer, existing, now)
    if connect.will is not None and not _will_valid(st, conn, client_id, connect.will):
        return
    _accept(st, conn, connect, client_id, assigned, now)


def _current_session(st: BrokerState, client_id: str, now: float) -> MqttSession | None:
    """The session `client_id` names, live or persistent; one that expired a moment ago (before the
    tick ran) is ended here and is no one's any more."""
    existing = st.sessions.get(client_id)
    if existing is None or existing.conn is not None:
        return existing
    deadline = st.timers.deadline(("expiry", client_id))
    if deadline is not None and deadline <= now:
        st.metrics.sessions_expired += 1
        end_session(st, existing, now)
        return None
    return existing


def _will_valid(st: BrokerState, conn: Connection, client_id: str, will: Will) -> bool:
    """Only protocol validity: the policy judges the will when it fires (see the module docstring)."""
    try:
        validate_topic_name(will.topic)
    except TopicNameInvalid:
        refuse(st, conn, client_id, ReasonCode.TOPIC_NAME_INVALID, "will_topic_invalid")
        return False
    return True


def refuse(st: BrokerState, conn: Connection, client_id: str, code: int, reason: str, rule: str = "") -> None:
    st.metrics.connects_refused[reason] += 1
    st.events.append(ConnectRefused(conn.peer, client_id, code, reason, rule))
    st.out.send(conn.conn_id, conn.protocol.encode(Connack(reason_code=code)))
    drop_connection(st, conn, "connect_refused")


def _expiry(st: BrokerState, connect: Connect) -> tuple[int, int]:
    """(granted session expiry, what the client asked for) in seconds."""
    cap = st.limits.max_session_expiry
    if connect.protocol_version == _V5:
        asked = connect.properties.session_expiry_interval or 0
        return min(asked, cap), asked
    return (0 if connect.clean_start else cap), 0  # 3.1.1 clean session 0: "never", within our cap


def _accept(
    st: BrokerState, conn: Connection, connect: Connect, client_id: str, assigned: str | None, now: float
) -> None:
    session = _take_session(st, conn, connect, client_id, now)
    present = session is not None
    if session is None:
        session = MqttSession(client_id, conn.peer.identity, conn.peer)
        st.sessions[client_id] = session
    granted, asked = _expiry(st, connect)
    session.expiry_interval = granted
    session.peer = conn.peer
    session.conn = conn.conn_id
    session.since = now
    conn.session, conn.connect, conn.will, conn.client_id = session, connect, connect.will, client_id
    conn.protocol.attach(session.inbound_qos2)
    st.persist_session(session)
    props = (
        _connack_properties(st, conn, granted, asked, assigned)
        if connect.protocol_version == _V5
        else Properties()
    )
    st.out.send(conn.conn_id, conn.protocol.encode(Connack(present, 0, props)))
    st.metrics.connects_accepted += 1
    st.metrics.connect_seconds.observe(max(0.0, now - conn.opened_at))
    st.events.append(ClientConnected(conn.peer, client_id, present, int(connect.protocol_version)))
    if st.cluster.session_started is not None:  # a cluster's node: the others end theirs (cluster_sessions)
        st.cluster.session_started(client_id, conn.peer, now)
    deadline = conn.protocol.deadline()
    if deadline is None:
        st.timers.cancel(("conn", conn.conn_id))
    else:
        st.timers.set(("conn", conn.conn_id), deadline)
    expires = st.certificate_deadline(conn.peer)
    if expires is not None:
        st.timers.set(("cert", conn.conn_id), expires)  # lifecycle.end_for_expired_certificate
    if present:
        st.metrics.sessions_resumed += 1
        recheck_subscriptions(st, session, now)  # the policy may have changed while it was away
        resume(st, session, now)


def _take_session(
    st: BrokerState, conn: Connection, connect: Connect, client_id: str, now: float
) -> MqttSession | None:
    """Take over a live connection, then resume or end the existing session. Returns it if resumed.

    Called once decide_session_owner allowed it: the session is the peer's own, or no identity's."""
    existing = st.sessions.get(client_id)
    if existing is not None and existing.conn is not None:
        old = st.connections.get(existing.conn)
        if old is not None:
            st.metrics.takeovers += 1
            st.events.append(SessionTakenOver(client_id, old.peer, conn.peer))
            end_connection(
                st,
                old,
                now,
                "session_taken_over",
                old.protocol.disconnect(ReasonCode.SESSION_TAKEN_OVER),
                will=True,
            )
        existing = st.sessions.get(client_id)  # an expiry-0 session ended with its connection
    if existing is None:
        return None
    if existing.identity != conn.peer.identity:  # no identity's, given way (decide_session_owner)
        st.metrics.sessions_discarded["identity_mismatch"] += 1
        st.events.append(
            SessionDiscarded(client_id, "identity_mismatch", identity_to_text(existing.identity), conn.peer)
        )
        end_session(st, existing, now)
        return None
    if connect.clean_start:
        st.metrics.sessions_discarded["clean_start"] += 1
        end_session(st, existing, now)
        return None
    # Continued in time: a delayed will is not published (§3.1.3.2.2), the session does not expire.
    existing.pending_will = None
    st.timers.cancel(("will", client_id))
    st.timers.cancel(("expiry", client_id))
    return existing


def _connack_properties(
    st: BrokerState, conn: Connection, granted: int, asked: int, assigned: str | None
) -> Properties:
    limits = st.limits
    return Properties(
        session_expiry_interval=granted if granted != asked else None,
        receive_maximum=limits.receive_maximum if limits.receive_maximum < 65535 else None,
        maximum_packet_size=limits.max_packet_size,
        topic_alias_maximum=limits.max_topic_alias or None,
        retain_available=1,
        wildcard_subscription_available=1,
        subscription_identifier_available=1,
        shared_subscription_available=1,
        server_keep_alive=conn.protocol.server_keep_alive,
        assigned_client_identifier=assigned,
    )


# --- endings -----------------------------------------------------------------------------------------


def drop_connection(st: BrokerState, conn: Connection, reason: str, *, socket_gone: bool = False) -> None:
    """Forget a connection (no session business): close it unless the socket is already gone."""
    conn.protocol.close()
    st.connections.pop(conn.conn_id, None)
    st.timers.cancel(("conn", conn.conn_id))
    st.timers.cancel(("cert", conn.conn_id))
    flow.connection_closed(st, conn)
    st.metrics.connections_closed[reason] += 1
    if not socket_gone:
        st.out.close(conn.conn_id, reason)


def end_connection(
    st: BrokerState,
    conn: Connection,
    now: float,
    reason: str,
    farewell: bytes,
    *,
    will: bool,
    socket_gone: bool = False,
) -> None:
    """The connection is over: say goodbye, close it, and leave its session offline (or end it)."""
    if not socket_gone:
        st.out.send(conn.conn_id, farewell)
    drop_connection(st, conn, reason, socket_gone=socket_gone)
    session = conn.session
    conn.session = None
    if session is None or session.conn != conn.conn_id:
        return
    st.events.append(ClientDisconnected(conn.peer, session.client_id, reason))
    session.conn = None
    session.since = now
    session.peer = offline_peer(session.peer)
    flow.session_offline(st, session)
    if will and conn.will is not None:
        _schedule_will(st, session, conn.will, conn.peer, now)
    if session.expiry_interval == 0:
        end_session(st, session, now)
        return
    st.timers.set(("expiry", session.client_id), now + session.expiry_interval)
    st.persist_session(session)


def _schedule_will(st: BrokerState, session: MqttSession, will: Will, peer: Peer, now: float) -> None:
    delay = will.properties.will_delay_interval or 0
    if delay == 0 or session.expiry_interval == 0:
        publish_will(st, session.client_id, peer, will, now)
        return
    # Whichever comes first: the delay, or the session's end (end_session publishes it then).
    session.pending_will = PendingWill(will, peer, now + delay)
    st.timers.set(("will", session.client_id), now + delay)


def fire_pending_will(st: BrokerState, session: MqttSession, now: float) -> None:
    pending = session.pending_will
    if pending is None:
        return
    session.pending_will = None
    st.timers.cancel(("will", session.client_id))
    publish_will(st, session.client_id, pending.peer, pending.will, now)


def end_session(st: BrokerState, session: MqttSession, now: float) -> None:
    """Discard a session's state (§4.1): subscriptions, queue, in-flight; then publish a pending will."""
    client_id = session.client_id
    if st.sessions.get(client_id) is session:
        del st.sessions[client_id]
    for sub in session.subscriptions.values():
        st.index.remove(client_id, sub)
    st.timers.cancel(("expiry", client_id))
    flow.stop_holding(st, session)
    st.record_session(session, ended=True)
    st.unpersist_session(session)
    session.inflight.clear()
    session.clear_queue()
    fire_pending_will(st, session, now)
