"""The broker's knobs (BrokerLimits), its counters (BrokerMetrics) and the admin view of a session.

Defaults suit a telematics gateway: small packets, many clients, modest per-session queues. The server
maps its configuration onto BrokerLimits; nothing else reads configuration.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.broker.histogram import Histogram
from gateway.policy.access import Peer


@dataclass(frozen=True)
class BrokerLimits:
    max_packet_size: int = 256 * 1024
    receive_maximum: int = 100  # told to 5.0 clients and enforced on their inbound QoS>0
    max_inflight: int = 100  # outbound unacked QoS>0 per session
    max_queued_messages: int = 1000  # per session: oldest QoS 0 dropped first, then new ones refused
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


@dataclass
class BrokerMetrics:
    """Counters and gauges; the server exports them (Prometheus) without the broker knowing how."""

    connections_opened: int = 0
    connections_closed: Counter[str] = field(default_factory=Counter)  # by Close/loss reason
    connects_accepted: int = 0
    connects_refused: Counter[str] = field(default_factory=Counter)  # by reason
    takeovers: int = 0
    certificates_expired: int = 0  # live connections ended when their certificate expired
    sessions_resumed: int = 0
    sessions_discarded: Counter[str] = field(default_factory=Counter)  # clean_start, identity_mismatch
    sessions_expired: int = 0
    publishes_in: int = 0
    publishes_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # by reason: queue_full, delivery_denied, ...
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (kind, verdict, reason)
    protocol_errors: Counter[str] = field(default_factory=Counter)  # by reason
    wills_published: int = 0
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
    queued: int
    inflight: int
    since: float  # connected since, or disconnected since
    expiry_interval: int
