"""MQTT session state (§4.1): what outlives a network connection.

A session holds, per client id: its subscriptions, the QoS 1/2 messages sent but not yet acknowledged
(`inflight`, keyed and ordered by packet id), the messages waiting for a free slot or for the client to
come back (`queue`), the inbound QoS 2 packet ids awaiting PUBREL, the will that may still fire, and
its expiry. Connection-level state (topic aliases, keep-alive, receive-maximum accounting) is not here:
it dies with the connection, in gateway.mqtt.session.

The queue is counted as a whole (`queued`, `queued_bytes`) wherever its deliveries are held: the
`queue` deque holds its head in memory, and a persistent session may hold the rest only in the store
(`stored_queued` of them, all later than anything in the deque; queues.py says when and why).

A routed application message is one `Message` object shared by every recipient; each recipient gets a
small `Delivery` pointing at it with its own QoS, RETAIN flag and subscription identifiers, so a fan-out
copies no payload (both are in message.py, compiled with the per-message path).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from gateway.broker.message import Delivery
from gateway.mqtt.packets import Subscription, Will
from gateway.policy.peer import Peer
from pki.names import Identity


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """A granted subscription: the client's options plus what the broker derived from them."""

    options: Subscription  # topic_filter is the full filter as subscribed ($share/... included)
    identifier: int | None  # 5.0 subscription identifier
    group: str | None  # share group, None for an ordinary subscription
    plain_filter: str  # the filter without its $share/{group}/ prefix
    # Whose group it is: members of `$share/{group}/...` share messages only with subscribers of the
    # same scope (BrokerState.share_scope: the identity, or a profile the policy lets share the group).
    scope: str | None = None

    @property
    def topic_filter(self) -> str:
        return self.options.topic_filter


@dataclass(slots=True)
class PendingWill:
    """A will waiting for its delay (§3.1.3.2.2) or for the session to end, whichever comes first."""

    will: Will
    peer: Peer
    deadline: float


def offline_peer(peer: Peer) -> Peer:
    """The peer an offline session is judged by: the same identity and certificate serial, without
    the certificate's dates (they end the connection; an offline session waits for the identity's
    next certificate, which admission checks, and a session restored from disk has no dates either)."""
    return peer if peer.certificate_not_after is None else replace(peer, certificate_not_after=None)


@dataclass(slots=True, eq=False)
class MqttSession:
    client_id: str
    identity: Identity | None  # the identity that owns it: a session never changes hands
    peer: Peer  # the live peer, or the last one seen (policy decisions for offline delivery)
    expiry_interval: int = 0  # seconds after disconnect; 0 = ends with the connection
    conn: int | None = None  # live connection id
    since: float = 0.0  # connected since / disconnected since
    subscriptions: dict[str, StoredSubscription] = field(default_factory=dict)
    inflight: dict[int, Delivery] = field(default_factory=dict)  # insertion order = send order
    queue: deque[Delivery] = field(default_factory=deque)
    inbound_qos2: set[int] = field(default_factory=set)
    # A cluster node's only: the client's QoS 2 PUBLISHes its cluster record names, from before their
    # store until their PUBREL: packet id → (backbone id, digest). Resumed from the record on another
    # node, they let a resend be stored under the same id (inbound.py).
    inbound_recorded: dict[int, tuple[str, str]] = field(default_factory=dict)
    pending_will: PendingWill | None = None
    last_packet_id: int = 0
    last_seq: int = 0
    stored: bool = False  # the store holds a row for it
    recorded: bool = False  # the cluster holds a record of it (ClusterHooks.session_recorded)
    elsewhere: bool = False  # its client connected on another node: that node records it now
    queued: int = 0  # deliveries queued: in `queue` plus those held only in the store
    queued_bytes: int = 0  # their payload bytes
    queued_qos0: int = 0  # QoS 0 deliveries in `queue`: a full queue of QoS>0 is refused without a scan
    stored_queued: int = 0  # queued deliveries held only in the store, paged back in as the queue drains
    stored_after: int = 0  # page cursor: every store-only delivery has a seq above it
    # Flow control (flow.py): more than the high-water mark behind while connected, so the publishers
    # that feed it are held back (`waiting`, in the order they were held); `stalled` when it stopped
    # acknowledging for `subscriber_stall_timeout` (no hold-back then); `progress_at` its last ack.
    holding: bool = False
    stalled: bool = False
    progress_at: float = 0.0
    waiting: dict[int, None] | None = None
    dropping: bool = False  # dropping QoS>0 messages at its bound; reported once per episode
    dropped: int = 0  # deliveries dropped at its queue bound (QoS 0 and QoS>0)

    @property
    def persistent(self) -> bool:
        """Only sessions that outlive their connection are written to the store."""
        return self.expiry_interval > 0

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def allocate_packet_id(self) -> int:
        """A free packet id (§2.2.1). Ids advance round-robin so a just-freed id is reused last,
        which keeps a late duplicate from the client from hitting an unrelated message."""
        pid = self.last_packet_id
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in self.inflight:
                self.last_packet_id = pid
                return pid
        raise RuntimeError("all 65535 packet identifiers are in flight")  # window caps make this impossible

    def allocate_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def push(self, delivery: Delivery) -> None:
        """Append to the in-memory queue (the caller checked the bounds: queues.py)."""
        self.queue.append(delivery)
        self.queued += 1
        self.queued_bytes += len(delivery.message.payload)
        if delivery.qos == 0:
            self.queued_qos0 += 1

    def pop_queued(self) -> Delivery:
        delivery = self.queue.popleft()
        self.queued -= 1
        self.queued_bytes -= len(delivery.message.payload)
        if delivery.qos == 0:
            self.queued_qos0 -= 1
        return delivery

    def evict_qos0(self) -> Delivery | None:
        """Remove the oldest queued QoS 0 delivery (at-most-once may be lost), if there is one."""
        if not self.queued_qos0:
            return None
        evicted = next(d for d in self.queue if d.qos == 0)
        self.queue.remove(evicted)
        self.queued -= 1
        self.queued_bytes -= len(evicted.message.payload)
        self.queued_qos0 -= 1
        return evicted

    def clear_queue(self) -> None:
        self.queue.clear()
        self.queued = self.queued_bytes = self.queued_qos0 = self.stored_queued = self.stored_after = 0
