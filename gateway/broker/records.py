"""What the broker persists, as plain frozen records, and how properties and identities become text.

The records are the store's vocabulary: they know nothing about live sessions or connections, so a
store implementation (in memory, SQLite, later PostgreSQL) only moves them in and out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.mqtt.packets import Properties, RetainHandling, Subscription
from pki.names import Identity


@dataclass(frozen=True, slots=True)
class MessageRecord:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    expires_at: float | None = None
    owner: str | None = None  # retained only: the client whose message it is (its quota slot)


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    options: Subscription
    identifier: int | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    client_id: str
    identity: str | None  # spiffe URI of the owner; None for lab clients
    expiry_interval: int
    disconnected_at: float | None  # None: it was connected when last written
    subscriptions: tuple[SubscriptionRecord, ...] = ()
    # The cluster's record only: (packet id, backbone message id) of each QoS 2 message from the
    # cluster's store that the client acknowledged with PUBREC and that awaits its PUBCOMP. A node
    # resuming the session sends PUBREL for these and never delivers those messages again.
    released: tuple[tuple[int, str], ...] = ()
    # The cluster's record only: (packet id, backbone message id, digest) of each QoS 2 PUBLISH from
    # the client that this record names before its message is stored, until the client's PUBREL. A
    # node resuming the session stores the client's resend of it (DUP, same digest) under the same
    # backbone id, which the cluster's store keeps once (gateway/broker/inbound.py).
    received: tuple[tuple[int, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    message_id: int
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    packet_id: int | None = None
    released: bool = False


@dataclass
class StoredState:
    """What a broker loads at start: everything but the queued deliveries, which stay in the store
    (counted in `queued`) and are paged in when their session drains its queue (`load_queued`)."""

    retained: list[MessageRecord] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    messages: dict[int, MessageRecord] = field(default_factory=dict)  # those the in-flight ones point at
    deliveries: dict[str, list[tuple[int, DeliveryRecord]]] = field(default_factory=dict)  # in flight, by seq
    inbound_qos2: dict[str, set[int]] = field(default_factory=dict)
    queued: dict[str, tuple[int, int]] = field(default_factory=dict)  # client id → (count, payload bytes)
    max_message_id: int = 0  # over every message row, loaded or not: new ids start above it
    last_seq: dict[str, int] = field(default_factory=dict)  # client id → its highest delivery seq


QueuedRecord = tuple[int, DeliveryRecord, MessageRecord]  # (seq, delivery, its message): one page entry


# ------------------------------------------------------------------------------------ text forms

_BYTES_FIELDS = {"correlation_data", "authentication_data"}


def properties_to_json(props: Properties) -> str | None:
    data: dict[str, Any] = {}
    for f in fields(Properties):
        value = getattr(props, f.name)
        if value is None or value == ():
            continue
        data[f.name] = value.hex() if f.name in _BYTES_FIELDS else value
    return json.dumps(data, separators=(",", ":")) if data else None


def properties_from_json(text: str | None) -> Properties:
    if not text:
        return Properties()
    data: dict[str, Any] = json.loads(text)
    for name in _BYTES_FIELDS & data.keys():
        data[name] = bytes.fromhex(data[name])
    if "subscription_identifiers" in data:
        data["subscription_identifiers"] = tuple(data["subscription_identifiers"])
    if "user_properties" in data:
        data["user_properties"] = tuple((str(k), str(v)) for k, v in data["user_properties"])
    return Properties(**data)


def subscriptions_to_json(subs: tuple[SubscriptionRecord, ...]) -> str:
    return json.dumps(
        [
            [
                s.options.topic_filter,
                s.options.qos,
                int(s.options.no_local),
                int(s.options.retain_as_published),
                int(s.options.retain_handling),
                s.identifier,
            ]
            for s in subs
        ],
        separators=(",", ":"),
    )


def subscriptions_from_json(text: str) -> tuple[SubscriptionRecord, ...]:
    out = []
    for topic_filter, qos, no_local, rap, handling, identifier in json.loads(text):
        options = Subscription(topic_filter, int(qos), bool(no_local), bool(rap), RetainHandling(handling))
        out.append(SubscriptionRecord(options, None if identifier is None else int(identifier)))
    return tuple(out)


def identity_to_text(identity: Identity | None) -> str | None:
    return None if identity is None else identity.spiffe_uri


def identity_from_text(text: str | None) -> Identity | None:
    """The inverse of identity_to_text. A row that does not parse gets an identity no peer can have,
    so its session is never handed to anyone (None would hand it to lab clients)."""
    if text is None:
        return None
    parts = text[len("spiffe://") :].split("/") if text.startswith("spiffe://") else []
    if len(parts) != 3:
        return Identity("unparseable", text, "")
    trust_domain, kind, ident = parts
    return Identity(kind, ident, trust_domain)


def session_to_json(record: SessionRecord) -> bytes:
    """A session record as the cluster keeps it (cluster_session_records.py): ASCII JSON."""
    body = {
        "client": record.client_id,
        "identity": record.identity,
        "expiry": record.expiry_interval,
        "disconnected_at": record.disconnected_at,
        "subscriptions": json.loads(subscriptions_to_json(record.subscriptions)),
    }
    if record.released:
        body["released"] = [[packet_id, message_id] for packet_id, message_id in record.released]
    if record.received:
        body["received"] = [list(triple) for triple in record.received]
    return json.dumps(body, separators=(",", ":")).encode()


def session_from_json(data: bytes) -> SessionRecord:
    """The inverse of session_to_json; raises ValueError (or KeyError, TypeError) on anything else."""
    body = json.loads(data)
    identity = body["identity"]
    disconnected_at = body["disconnected_at"]
    return SessionRecord(
        client_id=str(body["client"]),
        identity=None if identity is None else str(identity),
        expiry_interval=int(body["expiry"]),
        disconnected_at=None if disconnected_at is None else float(disconnected_at),
        subscriptions=subscriptions_from_json(json.dumps(body["subscriptions"])),
        released=tuple(_released(pair) for pair in body.get("released", ())),
        received=tuple(_received(triple) for triple in body.get("received", ())),
    )


def _released(pair: Any) -> tuple[int, str]:
    packet_id, message_id = pair
    if not isinstance(packet_id, int) or not 1 <= packet_id <= 65535 or not isinstance(message_id, str):
        raise ValueError(f"not a released QoS 2 message: {pair!r}")
    return packet_id, message_id


def _received(triple: Any) -> tuple[int, str, str]:
    packet_id, message_id, digest = triple
    if (
        not isinstance(packet_id, int)
        or not 1 <= packet_id <= 65535
        or not isinstance(message_id, str)
        or not isinstance(digest, str)
    ):
        raise ValueError(f"not a received QoS 2 message: {triple!r}")
    return packet_id, message_id, digest
