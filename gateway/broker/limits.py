"""The broker's knobs (BrokerLimits), its counters (BrokerMetrics) and the admin view of a session.

Defaults suit a telematics gateway: small packets, many clients, modest per-session queues. The server
maps its configuration onto BrokerLimits; nothing else reads configuration.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.broker.histogram import Histogram
from gateway.policy.peer import Peer


@dataclass(frozen=True)
class BrokerLimits:
    max_packet_size: int = 256 * 1024
    receive_maximum: int = 100  # told to 5.0 clients and enforced on their inbound QoS>0
    max_inflight: int = 100  # outbound unacked QoS>0 per session
    # Per session, wherever the queue is held (memory; the store for persistent sessions): at the bound
    # the oldest QoS 0 goes first, then new messages are refused and counted (queues.py).
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 64 * 1024 * 1024  # payload bytes
    # A connected subscriber this far behind holds back the QoS>0 publishers that feed it (their
    # acknowledgements are withheld) until it is back under half of it; QoS 0 for it is dropped (flow.py).
    queue_high_water: int = 1000
    queue_high_water_bytes: int = 4 * 1024 * 1024
    # A subscriber holding publishers back that acknowledges nothing for this long is stalled: it stops
    # holding anyone back, and its queue runs into its bound instead.
    subscriber_stall_timeout: float = 60.0
    max_subscriptions: int = 100  # per session
    max_topic_alias: int = 32
    max_keep_alive: int = 600  # cap; 5.0 clients are told (server keep alive), 3.1.1 ones just held to it
    max_session_expiry: int = 7 * 24 * 3600
    max_retained_messages: int = 100_000
    max_retained_per_client: int = 1000  # one identity's share of the retained store (5.0: 0x97)
    connect_timeout: float = 10.0  # CONNECT must arrive this long after the connection opens
    # Kept for configuration compatibility only: both specs allow (3.1.1) or require (5.0 §4.4) that
    # unacknowledged messages are resent only when the session is resumed, which is what the broker
    # does. Timed retransmission on a live TCP connection only duplicates traffic.
    retry_interval: float = 20.0
    # Denied publishes/subscribes per connection before it is disconnected, for a policy that does not
    # say (the engine does: violations.max_denied_before_disconnect, followed across reloads).
    max_violations: int = 20

    @property
    def high_water(self) -> int:
        return max(1, min(self.queue_high_water, self.max_queued_messages))

    @property
    def high_water_bytes(self) -> int:
        return max(1, min(self.queue_high_water_bytes, self.max_queued_bytes))


@dataclass
class BrokerMetrics:
    """Counters and gauges; the server exports them (Prometheus) without the broker knowing how."""

    connections_opened: int = 0
    connections_closed: Counter[str] = field(default_factory=Counter)  # by Close/loss reason
    connects_accepted: int = 0
    connects_refused: Counter[str] = field(default_factory=Counter)  # by reason
    takeovers: int = 0
    sessions_taken_elsewhere: int = 0  # live connections here ended by a connect on another node
    sessions_resumed_elsewhere: int = 0  # persistent sessions of another node resumed here (a record)
    certificates_expired: int = 0  # live connections ended when their certificate expired
    sessions_resumed: int = 0
    sessions_discarded: Counter[str] = field(default_factory=Counter)  # clean_start, identity_mismatch
    sessions_expired: int = 0
    publishes_in: int = 0
    publishes_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # by reason: queue_full_qos1, delivery_denied, ...
    publishes_held: int = 0  # client PUBLISHes whose acknowledgement was withheld (flow control)
    reads_paused: int = 0  # connections whose reading was paused: their held PUBLISHes reached the cap
    subscribers_stalled: int = 0  # holding subscribers that stopped acknowledging (flow.py)
    held: int = 0  # gauge: client PUBLISHes held unacknowledged now
    sessions_holding: int = 0  # gauge: subscribers holding publishers back now
    queued: int = 0  # gauge: deliveries queued over all sessions (memory and store)
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (kind, verdict, reason)
    protocol_errors: Counter[str] = field(default_factory=Counter)  # by reason
    wills_published: int = 0
    remote_in: int = 0  # messages from other nodes (the cluster's backbone) routed here
    subscriptions_revoked: int = 0  # dropped by re-authorization
    internal_errors: int = 0
    store_errors: int = 0
    store_commits: int = 0
    retained_messages: int = 0  # gauge
    sessions: int = 0  # gauge: sessions held (connected or not)
    connected: int = 0  # gauge: live MQTT sessions
    # From the end of the TLS handshake (Broker.open) to the CONNACK that accepts the session.
    connect_seconds: Histogram = field(default_factory=Histogram)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One MQTT session as the admin API shows it."""

    client_id: str
    peer: Peer | None  # the live (or last known) peer
    connected: bool
    subscriptions: tuple[str, ...]
    queued: int  # in memory and, for persistent sessions, in the store
    inflight: int
    since: float  # connected since, or disconnected since
    expiry_interval: int
    queued_bytes: int = 0
    dropped: int = 0  # deliveries dropped at its queue bound
    holding: bool = False  # holding publishers back (flow control)
