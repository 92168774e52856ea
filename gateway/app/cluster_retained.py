"""Retained messages stored once for the cluster: a JetStream stream, one message per topic.

docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes".

The store is a KeyedStream (cluster_stream.py: `<PREFIX>_RETAINED`, subjects `<prefix>.r.>`,
`max_msgs_per_subject: 1`, signed, followed by every node), the way nats-server's own MQTT
implementation keeps retained messages: the subject of a topic is its backbone subject under
`<prefix>.r` (gateway/broker/subjects.py), so each topic holds its latest retained message and
nothing else. A clear (an empty retained payload) is stored too, as the topic's latest message: a
node that was away replays it and deletes what it held.

- Out: when a client's PUBLISH or a will sets or clears a retained message on this node (the
  broker's `retained_changed` hook, after storing it in the node's own store), it is published to the
  stream.
- In: each stored message is stored in the node's broker (`Broker.retained_elsewhere`: not routed:
  its live copy crossed on the backbone), its own included, so every node applies the same sequence
  and ends with the stream's value.
- Delivery is unchanged: a SUBSCRIBE on any node gets the retained messages from that node's store,
  through the subscriber's delivery decisions (grants, quarantine) as on a single gateway.

Authenticity: a stored message must carry a valid MAC, and its send time must be within the
freshness window of the time the stream stored it (cluster_stream.py).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.app.backbone import message_from, message_headers
from gateway.app.cluster_link import ClusterLink
from gateway.app.cluster_stream import KeyedStream, stream_name
from gateway.broker.message import Message
from gateway.broker.subjects import topic_to_subject
from gateway.edge.driver import BrokerDriver
from gateway.policy.peer import Peer

log = logging.getLogger("fleetgate.cluster")

_NOBODY = Peer("", None)


class ClusterRetained:
    def __init__(self, link: ClusterLink, driver: BrokerDriver, prefix: str) -> None:
        self._link = link
        self._driver = driver
        self.prefix = f"{prefix}.r"
        self._stream = KeyedStream(
            link, stream_name(prefix, "RETAINED"), self.prefix, "retained", self._apply
        )
        self._seq = 0

    @property
    def stream(self) -> str:
        return self._stream.name

    @property
    def ready(self) -> bool:  # the stream exists and the consumer runs
        return self._stream.ready

    @property
    def stored(self) -> int:  # retained changes from other nodes (and ours) applied from the stream
        return self._stream.applied

    @property
    def published(self) -> int:
        return self._stream.published

    def attach(self) -> None:
        self._driver.broker.cluster.retained_changed = self.changed
        self._stream.attach()

    def changed(self, message: Message, client_id: str) -> None:
        """The broker's hook (inside its call): queue it for the stream, nothing more."""
        self._seq += 1
        headers = message_headers(self._link.node, f"r:{self._seq}", message, client_id, _NOBODY)
        self._stream.put(topic_to_subject(message.topic, self.prefix), message.payload, headers)

    def _apply(self, msg: Any, headers: dict[str, str], sent: float) -> bool:
        try:
            remote = message_from(msg.subject, msg.data, headers, self.prefix)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cluster retained: dropped a stored message on %s: %s", msg.subject, exc)
            return False
        topic, payload, qos, _retain, properties, origin = remote
        interval = properties.message_expiry_interval
        expires = None if interval is None else sent + interval
        self._driver.retained_elsewhere(topic, payload, qos, properties, expires, origin or "")
        return True
