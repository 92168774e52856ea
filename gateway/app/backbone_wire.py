"""What travels on the cluster's backbone, and how a node checks it: its fields, the HMAC, freshness,
and turning a NATS message back into a broker message (docs/cluster.md, part 2). Shared by the core
NATS path (backbone.py) and the JetStream path (backbone_durable.py); no NATS import here.

Two forms, both signed with the cluster's backbone key:
- **sealed** (`seal`, what a node sends): one line of tab-separated fields and their MAC before the
  payload, in the NATS message's body, and no NATS header but JetStream's `Nats-Msg-Id` on a stored
  one. nats-py encodes and parses every header in Python: with the eight headers of the first form a
  message cost its two nodes 48-76 us between them (nats-py and this module), sealed 18-33 us.
- **in headers** (the first form: one `Fg-*` header per field, `sign`/`authentic`): what nodes of
  earlier versions send and left in JetStream (queued, retained), what the cluster's control plane
  (cluster_link.py) uses, and what `seal` falls back to for a node name holding a tab or a line break,
  and while a node of an earlier version is up (it reads only this form: the nodes table says which
  nodes read the sealed one, gateway/stores/cluster_nodes.py), so a rolling upgrade drops nothing.
`open_message` takes either and gives the fields as the first form's headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.broker.core import RemoteMessage
from gateway.broker.message import Message
from gateway.broker.state import GroupKey
from gateway.broker.subjects import subject_to_topic
from gateway.mqtt.packets import NO_PROPERTIES, Properties
from gateway.policy.peer import Peer

H_NODE = "Fg-Node"
H_ID = "Fg-Id"
H_CLIENT = "Fg-Client"
H_IDENTITY = "Fg-Identity"
H_QOS = "Fg-Qos"
H_RETAIN = "Fg-Retain"
H_PROPS = "Fg-Props"  # JSON (ASCII): no header injection whatever a content type holds
H_TIME = "Fg-Time"  # unix milliseconds when the origin node sent it
H_MAC = "Fg-Mac"
# The share groups a member on the origin node took the message for (local first: broker/inbound.py
# `route`), as their queue names, comma-separated: no node gives it to them again.
H_SERVED = "Fg-Served"
MSG_ID = "Nats-Msg-Id"  # JetStream's dedupe id: a stored message's backbone id, signed with the rest
FRESH_S = 30.0  # older (or this far in the future: clocks disagree) is refused as a replay
SEEN_IDS = 65_536  # ids remembered for the overlapping-subscriptions dedupe


@dataclass
class BackboneCounters:
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    subjects: int = 0  # gauge: NATS subscriptions held
    connected: bool = False
    store_retries: int = 0  # JetStream stores tried again (backbone_durable.py)
    store_retries_deduplicated: int = 0  # … that found the message stored already


def queue_name(key: GroupKey) -> str:
    """A NATS queue group name for a share group (scope, name, plain filter): the same on every node,
    any characters hashed."""
    scope, group, plain = key
    digest = hashlib.sha256(f"{scope}\0{group}\0{plain}".encode()).hexdigest()[:32]
    return f"fg-share-{digest}"


def served_header(served: Sequence[GroupKey]) -> str:
    return ",".join(sorted(queue_name(key) for key in served))


def served_elsewhere(headers: dict[str, str], queue: str) -> bool:
    """True when the origin node gave the message to the share group of `queue` already."""
    served = headers.get(H_SERVED)
    return served is not None and queue in served.split(",")


def _properties_json(message: Message) -> str | None:
    """The message's properties that travel (compact JSON), or None when it has none."""
    p = message.properties
    props: dict[str, Any] = {}
    if p.payload_format_indicator is not None:
        props["pfi"] = p.payload_format_indicator
    if message.expires_at is not None and p.message_expiry_interval is not None:
        props["exp"] = p.message_expiry_interval  # the interval as received; 0 s spent on this node
    if p.content_type is not None:
        props["ct"] = p.content_type
    if p.response_topic is not None:
        props["rt"] = p.response_topic
    if p.correlation_data is not None:
        props["cd"] = base64.b64encode(p.correlation_data).decode("ascii")
    if p.user_properties:
        props["up"] = [list(pair) for pair in p.user_properties]
    return json.dumps(props, separators=(",", ":")) if props else None


def message_headers(node: str, msg_id: str, message: Message, client_id: str, peer: Peer) -> dict[str, str]:
    headers = {
        H_NODE: node,
        H_ID: msg_id,
        H_CLIENT: json.dumps(client_id),
        H_QOS: str(message.qos),
        H_RETAIN: "1" if message.retain else "0",
    }
    if peer.identity is not None:
        headers[H_IDENTITY] = json.dumps(str(peer.identity))
    props = _properties_json(message)
    if props is not None:
        headers[H_PROPS] = props
    return headers


def sign(key: bytes, subject: str, headers: dict[str, str], payload: bytes) -> str:
    """HMAC-SHA256 over the subject, every header but the MAC (sorted) and the payload, each part
    length-prefixed so no two messages share an encoding. (One HMAC over the joined parts:
    the same MAC as feeding them one by one, for a fraction of the calls; every cross-node message
    is signed once and checked once.)"""
    encoded = subject.encode()
    parts = [len(encoded).to_bytes(4, "big"), encoded]
    for name in sorted(headers):
        if name != H_MAC:
            label = _LABELS.get(name)
            if label is None:
                label = _label(name)
            value = headers[name].encode()
            parts += (label, len(value).to_bytes(4, "big"), value)
    parts += (len(payload).to_bytes(4, "big"), payload)
    return hmac_sha256(key, b"".join(parts)).hex()


_KEYED: dict[bytes, hmac.HMAC] = {}  # a backbone key -> its HMAC, keyed once and copied per message


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """`hmac.digest(key, data, "sha256")`, from an HMAC keyed once and copied per message: ~3.1 us
    where `hmac.digest` takes ~4.4 us (it looks SHA-256 up by name in OpenSSL and keys it every
    call), on every message that crosses nodes, twice (sealed, then opened). The cluster has one
    backbone key, and a new one after a rotation."""
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) >= 8:  # keys rotated over a long run: the old ones go
            _KEYED.clear()
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(data)
    return mac.digest()


def _label(name: str) -> bytes:
    encoded = name.encode()
    return len(encoded).to_bytes(4, "big") + encoded


# The headers fleetgate nodes set, length-prefixed once (any other name is encoded when met).
_LABELS = {
    name: _label(name)
    for name in (H_NODE, H_ID, H_CLIENT, H_IDENTITY, H_QOS, H_RETAIN, H_PROPS, H_TIME, H_SERVED, MSG_ID)
}


def authentic(key: bytes, subject: str, headers: dict[str, str], payload: bytes, now: float) -> str | None:
    """None when the message was signed with `key` and is fresh, else why it is refused."""
    given = headers.get(H_MAC)
    if given is None or not hmac.compare_digest(given, sign(key, subject, headers, payload)):
        return "unauthenticated"
    try:
        sent = int(headers[H_TIME]) / 1000
    except (KeyError, ValueError):
        return "unauthenticated"
    return None if abs(now - sent) <= FRESH_S else "stale"


SEALED = b"FG2\t"  # what a sealed body starts with
_MAC_HEX = 64
_FIELDS = 9  # node, id, client, identity, qos, retain, time, properties, served


def signed_part(headers: dict[str, str]) -> dict[str, str]:
    """The headers a node signed in the first form: ours and the message id (JetStream adds its own)."""
    return {k: v for k, v in headers.items() if k.startswith("Fg-") or k == MSG_ID}


def _line_mac(key: bytes, subject: str, line: bytes, payload: bytes) -> bytes:
    encoded = subject.encode()
    signed = b"".join((len(encoded).to_bytes(4, "big"), encoded, len(line).to_bytes(4, "big"), line, payload))
    return hmac_sha256(key, signed).hex().encode()


def seal(
    key: bytes,
    subject: str,
    node: str,
    msg_id: str,
    message: Message,
    client_id: str,
    peer: Peer,
    sent_ms: int,
    served: str = "",
    stored: bool = False,
    sealed: bool = True,
) -> tuple[bytes, dict[str, str] | None]:
    """The NATS body and headers of an accepted message from this node: sealed (`stored`: with
    JetStream's `Nats-Msg-Id`), or in the first form if a field would break the line or not
    `sealed` (a node of an earlier version is up: it reads only the first form)."""
    identity = peer.identity
    props = _properties_json(message)
    fields = (
        node,
        msg_id,
        json.dumps(client_id),
        "" if identity is None else json.dumps(str(identity)),
        str(message.qos),
        "1" if message.retain else "0",
        str(sent_ms),
        "" if props is None else props,
        served,
    )
    line = "\t".join(fields)
    if sealed and line.count("\t") == _FIELDS - 1 and "\n" not in line:
        encoded = line.encode()
        mac = _line_mac(key, subject, encoded, message.payload)
        body = b"".join((SEALED, mac, b"\t", encoded, b"\n", message.payload))
        return body, ({MSG_ID: msg_id} if stored else None)
    headers = message_headers(node, msg_id, message, client_id, peer)  # a tab in the node's name
    headers[H_TIME] = str(sent_ms)
    if served:
        headers[H_SERVED] = served
    if stored:
        headers[MSG_ID] = msg_id
    headers[H_MAC] = sign(key, subject, headers, message.payload)
    return message.payload, headers


def open_message(
    key: bytes, subject: str, headers: dict[str, str] | None, data: bytes, now: float, stored: bool = False
) -> tuple[dict[str, str], bytes] | str:
    """A backbone message's fields (as the first form's headers) and payload, if a node of this
    cluster signed it and sent it within FRESH_S of `now` (a stored one: of when JetStream stored
    it); else why it is refused. `stored`: from JetStream, whose `Nats-Msg-Id` must be the signed id
    (a copy replayed under another id would be stored again)."""
    if headers is not None and H_MAC in headers:  # the first form (a sealed one has no Fg-Mac)
        refused = authentic(key, subject, signed_part(headers), data, now)
        return (headers, data) if refused is None else refused
    if not data.startswith(SEALED):
        return "unauthenticated"
    end = data.find(b"\n")
    start = len(SEALED) + _MAC_HEX + 1
    if end < start or data[start - 1 : start] != b"\t":
        return "unauthenticated"
    line, payload = data[start:end], data[end + 1 :]
    if not hmac.compare_digest(data[len(SEALED) : start - 1], _line_mac(key, subject, line, payload)):
        return "unauthenticated"
    fields = line.decode().split("\t")
    if len(fields) != _FIELDS:
        return "unauthenticated"  # signed by a node that writes another line: not one of ours
    node, msg_id, client, identity, qos, retain, sent, props, served = fields
    if stored and (headers or {}).get(MSG_ID) != msg_id:
        return "unauthenticated"
    try:
        fresh = abs(now - int(sent) / 1000) <= FRESH_S
    except ValueError:
        return "unauthenticated"
    if not fresh:
        return "stale"
    opened = {H_NODE: node, H_ID: msg_id, H_CLIENT: client, H_QOS: qos, H_RETAIN: retain, H_TIME: sent}
    if identity:
        opened[H_IDENTITY] = identity
    if props:
        opened[H_PROPS] = props
    if served:
        opened[H_SERVED] = served
    return opened, payload


def message_from(subject: str, data: bytes, headers: dict[str, str], prefix: str) -> RemoteMessage:
    """Raises ValueError (or KeyError) for anything a fleetgate node did not send."""
    topic = subject_to_topic(subject, prefix)
    client = json.loads(headers[H_CLIENT])
    qos, retain = int(headers[H_QOS]), headers.get(H_RETAIN) == "1"
    encoded = headers.get(H_PROPS)
    if encoded is None:  # most messages: no property to carry
        return topic, data, qos, retain, NO_PROPERTIES, str(client)
    props = json.loads(encoded)
    properties = Properties(
        payload_format_indicator=props.get("pfi"),
        message_expiry_interval=props.get("exp"),
        content_type=props.get("ct"),
        response_topic=props.get("rt"),
        correlation_data=None if "cd" not in props else base64.b64decode(props["cd"]),
        user_properties=tuple((str(k), str(v)) for k, v in props.get("up", ())),
    )
    return topic, data, qos, retain, properties, str(client)
