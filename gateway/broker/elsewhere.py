"""What the other nodes of a cluster tell this node's broker (docs/cluster.md, "Sessions, retained
messages, shared subscriptions and wills across nodes"). Pure: the node's cluster modules
(gateway/app/cluster_*.py) carry the announcements; this decides what they change here.

- A client connected on another node (`connected_elsewhere`): one live session per client id in the
  cluster, so a live connection here with that id is taken over exactly as a local takeover does
  (DISCONNECT 0x8E to a 5.0 client, its will published or left pending by §3.1.3.2.2) and the
  session here ends (its pending will fires): the session lives where its client is now. Only if the
  announced connection is the later one (the caller compares), and only for the identity that owns
  the session: another identity's announcement changes nothing here (decide_session_owner).
- The node that accepted the new connection is told what it took over (`taken_over_elsewhere`) and
  reports the takeover as a local one (`SessionTakenOver`: the audit record and the cloning detector),
  so a cross-node takeover is seen once, there, and never on the old node.
- A retained message set or cleared through another node (`retained_elsewhere`) is stored here as
  if set here, without routing it (its live copy crossed on its topic's subject already) and without
  telling the cluster again.
"""

from __future__ import annotations

from gateway.broker.connect import end_connection, end_session
from gateway.broker.events import SessionTakenOver
from gateway.broker.inbound import retain_here
from gateway.broker.message import Message
from gateway.broker.state import BrokerState
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.peer import Peer
from pki.names import Identity


def connected_elsewhere(
    st: BrokerState,
    client_id: str,
    identity: Identity | None,
    announced: tuple[float, str],
    here: str,
    now: float,
) -> Peer | None:
    """Node `announced[1]` accepted a CONNECT for `client_id` from `identity` at `announced[0]`.
    A live connection here is taken over only if that one is later: (time, node name) compared, so
    of two CONNECTs at once on two nodes the same one wins on both. Returns the peer of the live
    connection taken over here, if there was one."""
    session = st.sessions.get(client_id)
    if session is None or (session.identity is not None and session.identity != identity):
        return None
    old_peer = None
    if session.conn is not None and announced <= (session.since, here):
        return None  # ours is the later connection: the other node ends its own
    session.elsewhere = True  # the session's record is the new node's to write from now on
    if session.conn is not None:
        conn = st.connections.get(session.conn)
        if conn is not None:
            old_peer = conn.peer
            st.metrics.sessions_taken_elsewhere += 1
            end_connection(
                st,
                conn,
                now,
                "session_taken_over",
                conn.protocol.disconnect(ReasonCode.SESSION_TAKEN_OVER),
                will=True,
            )
    session = st.sessions.get(client_id)  # an expiry-0 session ended with its connection
    if session is not None and session.conn is None:
        st.metrics.sessions_discarded["moved_elsewhere"] += 1
        end_session(st, session, now)
    return old_peer


def taken_over_elsewhere(st: BrokerState, client_id: str, old_peer: Peer) -> None:
    """The connection this node accepted for `client_id` took over `old_peer`'s on another node."""
    session = st.sessions.get(client_id)
    if session is None:
        return
    st.metrics.takeovers += 1
    st.events.append(SessionTakenOver(client_id, old_peer, session.peer))


def retained_elsewhere(st: BrokerState, message: Message, origin: str, now: float) -> None:
    """A retained message (or, empty, its clearing) another node accepted; `message.expires_at` is
    absolute. An expired one is not stored (and clears what is stored)."""
    if message.expires_at is not None and message.expires_at <= now:
        message.payload = b""
    retain_here(st, message, origin)
