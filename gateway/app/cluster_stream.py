"""A JetStream stream that keeps one message per subject, written by every node and followed by all.

The shape both cluster-wide stores share (docs/cluster.md, "Sessions, retained messages, shared
subscriptions and wills across nodes"): the retained messages (cluster_retained.py, one subject per
topic) and the persistent sessions' records (cluster_session_records.py, one subject per client id).

- The stream (`name`, subjects `<prefix>.>`, file storage, three replicas where the NATS cluster has
  them, else one) has `max_msgs_per_subject: 1`: each subject holds its latest message and nothing
  else, the way nats-server's own MQTT implementation keeps retained messages and sessions.
- Out: `put` queues a message (safe inside a broker call: nothing is awaited); one sender task
  publishes them in order, signed like a backbone message (ClusterLink.signed), each waiting for the
  stream's acknowledgement. Of messages for one subject still waiting only the latest is sent (the
  stream would keep only it), so the wait for JetStream costs memory per subject, not per change.
  A store that fails is tried again every RETRY_S (unless a newer message for its subject came
  meanwhile), said once a minute. `put(..., stored=f)` calls `f()` once the stream holds that
  message or a later one for its subject (which replaces it: a caller's later message says at least
  as much).
- In: an ordered consumer that starts with the last message of every subject and then follows new
  ones hands each message to `apply(msg, headers, sent)` (True: applied, counted), this node's own
  included, so every node applies the same sequence and ends with the stream's value. Only
  messages whose MAC verifies and whose send time (`Fg-Time`) is within the freshness window of the
  time the stream stored them: a signed message captured and written to the stream again later is
  refused (counted `replayed`); it is not refused for being old, as a stored value is as old as it is.

Until JetStream answers (a core-only NATS), the stream is retried every RETRY_S and logged once. The
follower's consumer sits on one NATS server; if that server dies, the follower is made again after two
missed heartbeats (HEARTBEAT_S), from the message after the last it applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from gateway.app.backbone import FRESH_S, H_TIME
from gateway.app.cluster_link import ClusterLink

log = logging.getLogger("fleetgate.cluster")

RETRY_S = 2.0
# The follower's heartbeat: nats-py remakes an ordered consumer that missed two. Its consumer lives on
# one NATS server; when that server dies the follower hears nothing until then, so a node would not
# see records written meanwhile (nats-py's default, 5 s, left a node deaf for 10 to 15 s).
HEARTBEAT_S = 1.0
Apply = Callable[[Any, dict[str, str], float], bool]  # (nats-py Msg, verified headers, send time) → applied


def stream_name(prefix: str, suffix: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in prefix.upper()) + "_" + suffix


class KeyedStream:
    def __init__(self, link: ClusterLink, name: str, prefix: str, what: str, apply: Apply) -> None:
        self._link = link
        self.name = name
        self.prefix = prefix
        self._what = what  # for the logs: "retained", "session records"
        self._apply = apply
        # subject → (payload, headers) to store: only the latest per subject counts, so what waits
        # for JetStream (a core-only NATS, a stream being made) is bounded by the subjects, not the rate
        self._out: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._when_stored: dict[str, list[Callable[[], None]]] = {}  # subject → callbacks of put()
        self._out_ready = asyncio.Event()
        self._failure_said = -math.inf
        self._js: Any = None
        self.ready = False  # the stream exists and the consumer runs
        self.published = 0
        self.applied = 0

    def attach(self) -> None:
        self._link.when_connected(self._start)

    def put(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        stored: Callable[[], None] | None = None,
    ) -> None:
        self._out.pop(subject, None)  # a newer value goes after the others, as it was put
        self._out[subject] = (payload, headers)
        if stored is not None:
            self._when_stored.setdefault(subject, []).append(stored)
        self._out_ready.set()

    def waiting(self, subject: str) -> bool:
        """A message put for `subject` with a `stored` callback is not stored yet."""
        return subject in self._when_stored

    async def _start(self) -> None:
        """Make the stream (retrying while JetStream is unavailable), follow it, then send."""
        from nats.js.api import DeliverPolicy

        js = self._link.nc.jetstream()
        announced = False
        while True:
            try:
                await self._ensure_stream(js)
                await js.subscribe(
                    f"{self.prefix}.>",
                    cb=self._on_message,
                    ordered_consumer=True,
                    idle_heartbeat=HEARTBEAT_S,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                    stream=self.name,
                )
                break
            except Exception as exc:
                if not announced:
                    log.warning(
                        "cluster %s: JetStream unavailable (%s); kept on this node only until it is, "
                        "retrying",
                        self._what,
                        exc,
                    )
                    announced = True
                await asyncio.sleep(RETRY_S)
        self._js = js
        self.ready = True
        log.info("cluster %s: following stream %s", self._what, self.name)
        await self._send()

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.api import StorageType, StreamConfig

        with contextlib.suppress(Exception):
            await js.stream_info(self.name)
            return
        last: Exception | None = None
        for replicas in (3, 1):  # three where the NATS cluster has them; one on a single server
            config = StreamConfig(
                name=self.name,
                subjects=[f"{self.prefix}.>"],
                max_msgs_per_subject=1,
                num_replicas=replicas,
                storage=StorageType.FILE,
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
            batch, self._out = self._out, {}
            failed = False
            for subject, (payload, headers) in batch.items():
                signed = self._link.signed(subject, payload, headers)
                try:
                    await self._js.publish(subject, payload, headers=signed)
                except Exception as exc:
                    failed = True
                    if subject not in self._out:  # nothing newer came meanwhile: this one again
                        self._out[subject] = (payload, headers)
                    self._say_failed(subject, exc)
                    continue
                self.published += 1
                if subject not in self._out:  # the callbacks of a newer message wait for that one
                    for callback in self._when_stored.pop(subject, ()):
                        try:
                            callback()
                        except Exception:  # never the end of the sender
                            log.exception("cluster %s: after storing on %s", self._what, subject)
            if failed:
                self._out_ready.set()
                await asyncio.sleep(RETRY_S)

    def _say_failed(self, subject: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._failure_said >= 60:
            self._failure_said = now
            log.warning(
                "cluster %s: storing on %s failed (%s); tried again every %.0f s, said once a minute",
                self._what,
                subject,
                exc,
                RETRY_S,
            )

    async def _on_message(self, msg: Any) -> None:
        headers = self._link.verified(msg, fresh=False)
        if headers is None:
            return
        try:
            stored_at = msg.metadata.timestamp.timestamp()
            sent = int(headers[H_TIME]) / 1000
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cluster %s: dropped a stored message on %s: %s", self._what, msg.subject, exc)
            return
        if abs(stored_at - sent) > FRESH_S:
            self._link.counters.refused["replayed"] += 1
            return
        if self._apply(msg, headers, sent):
            self.applied += 1
