"""How connections end besides a clean CONNECT/DISCONNECT pair: violations, denials, timers.

A protocol violation (from the session machine, or raised by a handler) ends the connection with the
answer `ServerSession.farewell` gives and publishes the will, since the client did not disconnect
normally. Policy denials that are violations (not rate limits, throttles or quarantine drops: see
Decision.violation) are counted per connection; at the violation limit the connection is cut (5.0:
DISCONNECT 0x87). The limit is the policy's (`violation_limit()`, the policy file's
violations.max_denied_before_disconnect), asked at each count so that a policy reload applies to live
connections at once; BrokerLimits.max_violations stands in for a policy that has none.

Timers fire here: the CONNECT timeout and keep-alive (re-armed lazily, see timers.py; not while the
broker itself stopped reading the connection), the end of a live connection's certificate, delayed
wills, session expiry, retained-message expiry, and the stall check of a subscriber holding
publishers back (flow.py).
"""

from __future__ import annotations

from gateway.broker import flow
from gateway.broker.connect import end_connection, end_session, fire_pending_will
from gateway.broker.events import CertificateExpired, ProtocolViolation
from gateway.broker.sessions import MqttSession
from gateway.broker.state import BrokerState, Connection, TimerKey
from gateway.mqtt.packets import Disconnect
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.session import Violation

# Timeouts are not the client breaking the protocol (trucks drive into tunnels): no audit event.
_QUIET_ENDINGS = frozenset({"keep_alive_timeout", "connect_timeout"})


def close_for_violation(st: BrokerState, conn: Connection, violation: Violation, now: float) -> None:
    if violation.reason not in _QUIET_ENDINGS:
        st.metrics.protocol_errors[violation.reason] += 1
        st.events.append(
            ProtocolViolation(conn.peer, conn.client_id, violation.reason, violation.reason_code)
        )
    end_connection(st, conn, now, violation.reason, conn.protocol.farewell(violation), will=True)


def count_denials(st: BrokerState, conn: Connection, count: int, now: float) -> None:
    """Denied publishes/subscribes add up; past the limit the connection goes."""
    if not count:
        return
    conn.violations += count
    if conn.violations >= violation_limit(st) and conn.conn_id in st.connections:
        farewell = conn.protocol.disconnect(ReasonCode.NOT_AUTHORIZED, "too many denied requests")
        end_connection(st, conn, now, "too_many_violations", farewell, will=True)


def violation_limit(st: BrokerState) -> int:
    """The policy's limit when it has one (the engine does; minimal test policies need not), else ours.

    Asked by name, like the subscription cap in subscribe.py, and on every count rather than copied
    once: the copy is what made a SIGHUP reload leave the old limit in force."""
    ask = getattr(st.policy, "violation_limit", None)
    return st.limits.max_violations if ask is None else int(ask())


def handle_disconnect(
    st: BrokerState, conn: Connection, session: MqttSession, packet: Disconnect, now: float
) -> None:
    asked = packet.properties.session_expiry_interval
    if asked is not None and conn.protocol.is_v5 and conn.connect is not None:
        if not conn.connect.properties.session_expiry_interval and asked:
            # [MQTT-3.14.2-2]: a session that began with expiry 0 cannot be made persistent at the end.
            close_for_violation(st, conn, Violation("protocol_error", ReasonCode.PROTOCOL_ERROR, False), now)
            return
        session.expiry_interval = min(asked, st.limits.max_session_expiry)
    # Only a normal disconnection (0x00) discards the will (§3.14.4); 3.1.1 has no code and is normal.
    will = conn.protocol.is_v5 and packet.reason_code != ReasonCode.SUCCESS
    end_connection(st, conn, now, "client_disconnect", b"", will=will)


def end_for_expired_certificate(st: BrokerState, conn: Connection, now: float) -> None:
    """The certificate the connection was admitted with has expired (plus the clock-skew grace).

    5.0 clients get DISCONNECT 0xA0 "Maximum connect time" (§3.14.2.1: the maximum connection time
    authorized for this connection has been exceeded): the connection was authorized until the
    certificate's end, and that is what ran out. 0x87 "Not authorized" would tell the client it had
    done something it may not; 0x8B "Server shutting down" or 0x98 "Administrative action" would be
    untrue. 3.1.1 clients are closed. The will is published if the policy still allows it (it will
    not: an expired certificate publishes nothing).
    """
    st.metrics.certificates_expired += 1
    st.events.append(CertificateExpired(conn.peer, conn.client_id))
    farewell = conn.protocol.disconnect(ReasonCode.MAXIMUM_CONNECT_TIME, "certificate expired")
    end_connection(st, conn, now, "certificate_expired", farewell, will=True)


def fire_timer(st: BrokerState, key: TimerKey, now: float) -> None:
    kind, ident = key
    if kind == "cert" and isinstance(ident, int):
        conn = st.connections.get(ident)
        if conn is not None and conn.session is not None:
            end_for_expired_certificate(st, conn, now)
    elif kind == "conn" and isinstance(ident, int):
        conn = st.connections.get(ident)
        if conn is None:
            return
        if conn.paused:  # we stopped reading it (flow.py): its silence is ours, not a dead client's
            st.timers.set(key, now + max(1.0, float(conn.protocol.keep_alive)))
            return
        violation = conn.protocol.check_timeout(now)
        if violation is not None:
            close_for_violation(st, conn, violation, now)
            return
        deadline = conn.protocol.deadline()  # heard from since the timer was armed: re-arm
        if deadline is not None:
            st.timers.set(key, deadline)
    elif kind == "will" and isinstance(ident, str):
        session = st.sessions.get(ident)
        if session is not None:
            fire_pending_will(st, session, now)
    elif kind == "expiry" and isinstance(ident, str):
        session = st.sessions.get(ident)
        if session is not None and session.conn is None:
            st.metrics.sessions_expired += 1
            end_session(st, session, now)
    elif kind == "stall" and isinstance(ident, str):
        flow.fire_stall(st, ident, now)
    elif kind == "retained" and isinstance(ident, str):
        message = st.retained.get(ident)
        if message is not None and message.expired(now):
            st.retained.delete(ident)
            st.retained_owners.release(ident)
            if st.store is not None:
                st.store.delete_retained(ident)
