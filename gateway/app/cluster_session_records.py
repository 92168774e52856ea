"""Persistent sessions' records, kept for the cluster: a JetStream stream, one message per client id.

docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes".

The store is a KeyedStream (cluster_stream.py: `<PREFIX>_SESSIONS`, subjects `<prefix>.s.>`,
`max_msgs_per_subject: 1`, signed, followed by every node), the way nats-server's own MQTT
implementation keeps its sessions in a stream. A client id's subject is its name mapped as a topic
under `<prefix>.s` (gateway/broker/subjects.py: every character NATS reserves escaped, reversible).

- Out: whenever a persistent session is created or changed on this node (its subscriptions, its
  connection's start or end: the broker's `session_recorded` hook) its record goes to the stream
  (gateway/broker/records.py, session_to_json: client id, owner identity, expiry interval, when its
  client left, its subscriptions with their options and identifiers); when it ends (expired, clean
  start, unsubscribed to nothing does not end it) an empty message: gone. A record also names the
  session's QoS 2 messages released and awaiting PUBCOMP (packet id, backbone id); the PUBRELs of
  those wait until JetStream stored the record (`Broker.releases_due`), so that whichever node
  resumes the session after this one died sends them and never delivers those messages again. The
  wait is bounded by RELEASE_WAIT_S: past it the PUBRELs go anyway (said once a minute), because a
  unit's in-flight window full of releases would hold back its control messages too; exactly once
  across a node's death then holds again from the next record JetStream stores. Likewise a record
  names the client's QoS 2 PUBLISHes from before their store until their PUBREL (packet id, backbone
  id, digest), and their stores wait until JetStream stored it (`written`, the same bound), so that
  a node resuming the session stores the client's resend under the same backbone id.
- In: every node keeps the stream's latest record per client id in memory (its own included) and
  answers the broker's `session_elsewhere(client_id)` from it: a CONNECT with clean start 0 on this
  node for a session another node held resumes it (gateway/broker/resume_elsewhere.py, which trusts
  the record only for the identity that owns it and only as far as the policy allows now).

Authenticity: a record must carry a valid MAC under the backbone key and a send time within the
freshness window of the time the stream stored it (cluster_stream.py); one that does not is ignored,
so a process on the NATS network that is not a node cannot give a client id's session to anyone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any

from gateway.app.cluster_link import ClusterLink
from gateway.app.cluster_stream import KeyedStream, stream_name
from gateway.broker.records import SessionRecord, session_from_json, session_to_json
from gateway.broker.subjects import subject_to_topic, topic_to_subject
from gateway.edge.driver import BrokerDriver

log = logging.getLogger("fleetgate.cluster")

RELEASE_WAIT_S = 10.0  # how long a QoS 2 PUBREL waits at most for the record naming its release


class ClusterSessionRecords:
    def __init__(
        self, link: ClusterLink, driver: BrokerDriver, prefix: str, release_wait: float = RELEASE_WAIT_S
    ) -> None:
        self._driver = driver
        self.release_wait = release_wait
        self._gave_up_said = -math.inf
        self.prefix = f"{prefix}.s"
        self._stream = KeyedStream(
            link, stream_name(prefix, "SESSIONS"), self.prefix, "session records", self._apply
        )
        self.records: dict[str, SessionRecord] = {}  # client id → the cluster's latest record
        self._writers: dict[str, list[asyncio.Future[None]]] = {}  # client id → `written` waiters

    @property
    def ready(self) -> bool:
        return self._stream.ready

    @property
    def published(self) -> int:
        return self._stream.published

    @property
    def applied(self) -> int:
        return self._stream.applied

    def attach(self) -> None:
        hooks = self._driver.broker.cluster
        hooks.session_recorded = self.recorded
        hooks.session_elsewhere = self.records.get
        self._stream.attach()

    def detach(self) -> None:
        hooks = self._driver.broker.cluster
        hooks.session_recorded = hooks.session_elsewhere = None

    def recorded(self, client_id: str, record: SessionRecord | None) -> None:
        """The broker's hook (inside its call): queue the record (None: gone) for the stream. The
        node's copy changes at once too, so a CONNECT here right after sees it."""
        if record is None:
            self.records.pop(client_id, None)
        else:
            self.records[client_id] = record
        payload = b"" if record is None else session_to_json(record)
        stored = None
        # The PUBRELs of its releases wait for this record (outbound.py), and so do the stores of the
        # QoS 2 messages it names as received (`written`).
        if record is not None and (record.released or record.received):
            released = [packet_id for packet_id, _ in record.released]
            stored = functools.partial(self._stored, client_id, released)
            asyncio.get_running_loop().call_later(self.release_wait, self._gave_up, client_id, released)
        self._stream.put(topic_to_subject(client_id, self.prefix), payload, {}, stored)

    def written(self, client_id: str) -> asyncio.Future[None]:
        """Done once the record last put for `client_id` (or a later one) is stored, or at once if
        none waits; at most `release_wait` later in any case (the wait is then said, as for PUBRELs)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._stream.waiting(topic_to_subject(client_id, self.prefix)):
            self._writers.setdefault(client_id, []).append(done)
        else:
            done.set_result(None)
        return done

    def _stored(self, client_id: str, released: list[int]) -> None:
        if released:
            self._driver.releases_due(client_id, released)
        self._wake_writers(client_id)

    def _wake_writers(self, client_id: str) -> None:
        for done in self._writers.pop(client_id, ()):
            if not done.done():
                done.set_result(None)

    def _gave_up(self, client_id: str, released: list[int]) -> None:
        """The wait for a record naming releases or received messages is over: send whichever
        PUBRELs still wait, and let the stores waiting for it go on."""
        if self._stream.waiting(topic_to_subject(client_id, self.prefix)):
            now = time.monotonic()
            if now - self._gave_up_said >= 60:
                self._gave_up_said = now
                log.warning(
                    "cluster session records: JetStream has not stored %r's record for %.0f s; its "
                    "QoS 2 PUBRELs and stores go without it (a node dying now could deliver those "
                    "messages twice); said once a minute",
                    client_id,
                    self.release_wait,
                )
        if released:
            self._driver.releases_due(client_id, released)
        self._wake_writers(client_id)

    def _apply(self, msg: Any, headers: dict[str, str], sent: float) -> bool:
        try:
            client_id = subject_to_topic(msg.subject, self.prefix)
            record = session_from_json(msg.data) if msg.data else None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster session records: dropped a record on %s: %s", msg.subject, exc)
            return False
        if record is not None and record.client_id != client_id:
            log.warning("cluster session records: a record on %s names %s", msg.subject, record.client_id)
            return False
        if record is None:
            self.records.pop(client_id, None)
        else:
            self.records[client_id] = record
        return True
