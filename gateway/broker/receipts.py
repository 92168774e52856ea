"""Acknowledgements that wait for the cluster's durable store (docs/cluster.md, "QoS 1 and 2 across
nodes: JetStream").

On a cluster node with JetStream, a client's QoS 1/2 PUBLISH is routed to this node's subscribers at
once, but its PUBACK (PUBREC) goes out only when the backbone says the message is stored in the
cluster's stream: the acknowledgement is the gateway taking responsibility, and a node can die.

    the backbone sink takes a receipt and answers True   → the ack waits (`Connection.awaiting`);
                                                            it still counts against Receive Maximum
    `Broker.stored(confirmed, failed)` confirms a receipt → the ack goes out (QoS 2: the id joins the
                                                            session's inbound ids, so a retransmission
                                                            is acknowledged, not routed again)
    … or reports it failed (the store did not answer)     → no ack; the connection is closed so that
                                                            the client resends (with DUP) on a new one
    a QoS 2 retransmission of an id still awaiting        → ignored: its PUBREC comes when stored
    a QoS 2 resend after a node's death (`resend`)        → routed only when confirmed, and only if
                                                            the store had not had it (inbound.py)

A confirmation for a connection already gone still records a QoS 2 id in its persistent session: the
message is stored, so the client's retransmission must be acknowledged without routing it twice.
Pure: no clock, no I/O beyond the broker's store.
"""

from __future__ import annotations

from gateway.broker.message import Message
from gateway.broker.state import Awaiting, BrokerState, Connection
from gateway.mqtt.packets import Publish


def take_receipt(st: BrokerState) -> int:
    receipt = st.next_receipt
    st.next_receipt += 1
    return receipt


def await_store(
    st: BrokerState,
    conn: Connection,
    client_id: str,
    publish: Publish,
    receipt: int,
    resend: Message | None = None,
) -> None:
    """The ack of `publish` waits for the backbone's word on `receipt`; `resend`: routed then, unless
    the store had it already (inbound.py)."""
    assert publish.packet_id is not None  # QoS 1/2: the codec guarantees an id
    st.awaiting[receipt] = Awaiting(conn.conn_id, client_id, publish.packet_id, publish.qos, resend)
    if conn.awaiting is None:
        conn.awaiting = {}
    conn.awaiting[receipt] = publish.packet_id


def qos2_awaiting(conn: Connection, packet_id: int | None) -> bool:
    awaiting = conn.awaiting
    return bool(awaiting) and packet_id in awaiting.values()  # type: ignore[union-attr]


def withheld(conn: Connection) -> int:
    """QoS 1/2 PUBLISHes of `conn` not acknowledged yet: held by flow control or awaiting the store."""
    return (len(conn.held) if conn.held else 0) + (len(conn.awaiting) if conn.awaiting else 0)


def settle(st: BrokerState, receipt: int) -> tuple[Awaiting, Connection | None] | None:
    """Forget `receipt`; what it was for, and its connection if that is still open."""
    entry = st.awaiting.pop(receipt, None)
    if entry is None:
        return None
    conn = st.connections.get(entry.conn_id)
    if conn is not None and conn.awaiting is not None:
        conn.awaiting.pop(receipt, None)
    return entry, conn
