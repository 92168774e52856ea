"""Events the broker reports to the gateway (audit log, detectors, metrics): small frozen values.

The broker appends them while it works; the server drains them with `Broker.drain_events()`. They are
facts, not requests: nothing the gateway does with them can change what the broker already decided.
Field names are stable (the audit recorder reads `peer`/`new_peer`, `reason`, `topic`,
`topic_filter` and `client_id` by name).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.peer import Peer


@dataclass(frozen=True, slots=True)
class ClientConnected:
    peer: Peer
    client_id: str
    session_present: bool
    protocol_version: int


@dataclass(frozen=True, slots=True)
class ClientDisconnected:
    peer: Peer
    client_id: str
    reason: str  # "client_disconnect", "connection_lost", "keep_alive_timeout", ...


@dataclass(frozen=True, slots=True)
class ConnectRefused:
    peer: Peer
    client_id: str
    reason_code: int  # the 5.0 reason code (3.1.1 clients got its CONNACK equivalent)
    reason: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class SessionTakenOver:
    """A second connection used a live client id: possibly a cloned unit."""

    client_id: str
    old_peer: Peer
    new_peer: Peer


@dataclass(frozen=True, slots=True)
class CertificateExpired:
    """A live connection was ended because the certificate it was admitted with expired."""

    peer: Peer
    client_id: str
    reason: str = "certificate_expired"


@dataclass(frozen=True, slots=True)
class SessionDiscarded:
    """A stored session was thrown away instead of resumed because a different identity asked for it."""

    client_id: str
    reason: str  # "identity_mismatch"
    old_identity: str | None
    new_peer: Peer


@dataclass(frozen=True, slots=True)
class PublishDenied:
    peer: Peer
    client_id: str
    topic: str
    reason: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class WillDropped:
    """A will the policy did not let be published when it fired (quarantined since, another unit's
    topic, ...): dropped, never delivered. CONNECT does not judge wills, so this is where it shows."""

    peer: Peer
    client_id: str
    topic: str
    reason: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class SubscribeDenied:
    peer: Peer
    client_id: str
    topic_filter: str
    reason: str
    rule: str = ""
    revoked: bool = False  # True: an existing subscription was dropped by re-authorization


@dataclass(frozen=True, slots=True)
class DeliveryDenied:
    peer: Peer
    client_id: str
    topic: str
    reason: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    peer: Peer
    client_id: str  # "" before CONNECT
    reason: str
    reason_code: int


@dataclass(frozen=True, slots=True)
class QueueOverflow:
    """A session's queue is at its bound and a QoS 1/2 message for it was dropped: acknowledged to its
    publisher, never to be delivered. Reported once when a session starts dropping (again after its
    queue was back under the low-water mark), not per message: drops{queue_full_qos1} counts those."""

    peer: Peer  # the session's live or last peer
    client_id: str
    connected: bool
    queued: int
    queued_bytes: int
    max_messages: int
    max_bytes: int
    reason: str = "queue_full"


BrokerEvent = (
    ClientConnected
    | ClientDisconnected
    | ConnectRefused
    | SessionTakenOver
    | CertificateExpired
    | SessionDiscarded
    | PublishDenied
    | WillDropped
    | SubscribeDenied
    | DeliveryDenied
    | ProtocolViolation
    | QueueOverflow
)
