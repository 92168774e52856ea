"""Retained messages stored once for the cluster: a JetStream stream, one message per topic.

docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes".

The store is a JetStream stream (`<PREFIX>_RETAINED`, subjects `<prefix>.r.>`, three replicas when
the NATS cluster has them, file storage) with `max_msgs_per_subject: 1`, the way nats-server's own
MQTT implementation keeps retained messages: the subject of a topic is its backbone subject under
`<prefix>.r` (gateway/broker/subjects.py), so each topic holds its latest retained message and
nothing else. A clear (an empty retained payload) is stored too, as the topic's latest message: a
node that was away replays it and deletes what it held.

- Out: when a client's PUBLISH or a will sets or clears a retained message on this node (the
  broker's `retained_changed` hook, after storing it in the node's own store), it is published to the
  stream, signed like a backbone message, in order, by one sender task (`js.publish` waits for the
  stream's acknowledgement).
- In: every node holds an ordered JetStream consumer on the stream that starts with the last
  message of every subject and then follows new ones; each is stored in the node's broker
  (`Broker.retained_elsewhere`: not routed: its live copy crossed on the backbone), its own
  included, so every node applies the same sequence and ends with the stream's value.
- Delivery is unchanged: a SUBSCRIBE on any node gets the retained messages from that node's store,
  through the subscriber's delivery decisions (grants, quarantine) as on a single gateway.

Authenticity: a stored message must carry a valid MAC, and its send time (`Fg-Time`) must be within
the freshness window of the time the stream stored it, so a signed message captured and written to
the stream again later is refused (it is not refused for being old: a retained message is as old as
it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway.app.backbone import FRESH_S, H_TIME, message_from, message_headers
from gateway.app.cluster_link import ClusterLink
from gateway.broker.sessions import Message
from gateway.broker.subjects import topic_to_subject
from gateway.edge.driver import BrokerDriver
from gateway.policy.access import Peer

log = logging.getLogger("fleetgate.cluster")

RETRY_S = 2.0
_NOBODY = Peer("", None)


class ClusterRetained:
    def __init__(self, link: ClusterLink, driver: BrokerDriver, prefix: str) -> None:
        self._link = link
        self._driver = driver
        self.prefix = f"{prefix}.r"
        self.stream = "".join(c if c.isalnum() else "_" for c in prefix.upper()) + "_RETAINED"
        self._out: list[tuple[str, bytes, dict[str, str]]] = []
        self._out_ready = asyncio.Event()
        self._seq = 0
        self.ready = False  # the stream exists and the consumer runs
        self.stored = 0  # retained changes from other nodes (and ours) applied from the stream
        self.published = 0
        self._js: Any = None

    def attach(self) -> None:
        self._driver.broker.cluster.retained_changed = self.changed
        self._link.when_connected(self._start)

    def changed(self, message: Message, client_id: str) -> None:
        """The broker's hook (inside its call): queue it for the stream, nothing more."""
        self._seq += 1
        headers = message_headers(self._link.node, f"r:{self._seq}", message, client_id, _NOBODY)
        self._out.append((topic_to_subject(message.topic, self.prefix), message.payload, headers))
        self._out_ready.set()

    async def _start(self) -> None:
        """Make the stream (retrying while JetStream is unavailable), follow it, then send."""
        from nats.js.api import DeliverPolicy, StorageType, StreamConfig

        js = self._link.nc.jetstream()
        announced = False
        while True:
            try:
                await self._ensure_stream(js, StreamConfig, StorageType)
                await js.subscribe(
                    f"{self.prefix}.>",
                    cb=self._on_message,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                    stream=self.stream,
                )
                break
            except Exception as exc:
                if not announced:
                    log.warning(
                        "cluster retained: JetStream unavailable (%s); retained messages stay on this "
                        "node until it is, retrying",
                        exc,
                    )
                    announced = True
                await asyncio.sleep(RETRY_S)
        self._js = js
        self.ready = True
        log.info("cluster retained: following stream %s", self.stream)
        await self._send()

    async def _ensure_stream(self, js: Any, stream_config: Any, storage: Any) -> None:
        with contextlib.suppress(Exception):
            await js.stream_info(self.stream)
            return
        last: Exception | None = None
        for replicas in (3, 1):  # three where the NATS cluster has them; one on a single server
            config = stream_config(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                max_msgs_per_subject=1,
                num_replicas=replicas,
                storage=storage.FILE,
            )
            try:
                await js.add_stream(config)
                return
            except Exception as exc:
                last = exc
        assert last is not None
        raise last

    async def _send(self) -> None:
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            batch, self._out = self._out, []
            for subject, payload, headers in batch:
                signed = self._link.signed(subject, payload, headers)
                try:
                    await self._js.publish(subject, payload, headers=signed)
                    self.published += 1
                except Exception as exc:
                    log.warning("cluster retained: storing the message on %s failed: %s", subject, exc)

    async def _on_message(self, msg: Any) -> None:
        headers = self._link.verified(msg, fresh=False)
        if headers is None:
            return
        try:
            stored_at = msg.metadata.timestamp.timestamp()
            sent = int(headers[H_TIME]) / 1000
            if abs(stored_at - sent) > FRESH_S:
                self._link.counters.refused["replayed"] += 1
                return
            remote = message_from(msg.subject, msg.data, headers, self.prefix)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cluster retained: dropped a stored message on %s: %s", msg.subject, exc)
            return
        topic, payload, qos, _retain, properties, origin = remote
        interval = properties.message_expiry_interval
        expires = None if interval is None else sent + interval
        self._driver.retained_elsewhere(topic, payload, qos, properties, expires, origin or "")
        self.stored += 1
