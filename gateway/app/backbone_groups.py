"""Share groups' QoS 1/2 messages across nodes, held by JetStream until a node of the group takes them.

docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes". QoS 0
messages reach a share group through a NATS queue subscription per node (cluster_shared.py): at most
once, as QoS 0 is. A QoS 1/2 message is in the cluster's stream (backbone_durable.py) once its
publisher has its PUBACK, so a group takes it from there: one durable *pull* consumer per group and
subject, pulled from by every node that holds members of the group, each with one request for up to
BATCH messages outstanding at a time. JetStream gives each message to one of the waiting requests,
taking them in turn (so the nodes share the group's messages evenly, whichever NATS server each is
on: a push consumer with a deliver group would favour the node on its leader's server), gives it
again after `ack_wait` if that node does not acknowledge it, and holds it while no node pulls: a
node away from NATS for a moment, or dead, loses the group nothing it had not acknowledged.

On the node it reaches, a message goes to one member (`Broker.route_to_group`, the local rotation),
then is acknowledged. As with the queue subscriptions, a message the publisher's node gave to a member
of its own (local first: its `Fg-Served` header names the group) is acknowledged and dropped, and a
redelivery is routed once per node (ids remembered). Authenticity and freshness are checked as for
any stored message (against the time JetStream stored it).

A consumer nobody has pulled from for GROUP_IDLE_S is deleted by JetStream. So a group with no member
on any node keeps what arrives for that long, and a member that joins within it gets those messages;
after it, the group starts from new messages, as a group with no members gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.app import backbone_wire as wire
from gateway.app.backbone_durable import REBIND_S, RETRY_S, DurableLane, consumer_name
from gateway.broker.core import RemoteMessage
from gateway.broker.state import GroupKey

log = logging.getLogger("fleetgate.cluster")

GROUP_IDLE_S = 60.0  # a share group's consumer that no node has pulled from for this long is deleted
BATCH = 64  # messages one pull request asks for
EXPIRES_S = 5.0  # how long a pull request waits for messages before it is made again


def group_consumer(queue: str, subject: str) -> str:
    """The durable name of a share group's consumer of one stored subject (the same on every node)."""
    return consumer_name(f"g-{queue}", subject)


class GroupConsumers:
    def __init__(self, lane: DurableLane, route: Callable[[RemoteMessage, GroupKey], None]) -> None:
        self._lane = lane
        self._route = route
        self._wanted: dict[tuple[str, str], GroupKey] = {}  # (stored subject, queue) → its share group
        self._pulling: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (message id, consumer)
        self._said = -math.inf
        self._asking: set[asyncio.Event] = set()  # one per pull: set, it asks again at once
        self.received = 0
        self.served_at_origin = 0

    def want(self, subject: str, queue: str, key: GroupKey) -> None:
        """Take the group's messages on `subject` (a stored subject) here, from now on."""
        self._wanted[(subject, queue)] = key
        self._changed.set()

    def unwant(self, subject: str, queue: str) -> None:
        if self._wanted.pop((subject, queue), None) is not None:
            self._changed.set()

    def reconnected(self) -> None:
        """NATS is back: requests outstanding on the old connection are gone, so ask again now
        (instead of when they would have expired)."""
        for asked in self._asking:
            asked.set()

    def pulling(self) -> list[tuple[str, str]]:
        """(subject, consumer) of the group consumers this node pulls from now (tests, status)."""
        return sorted((subject, group_consumer(queue, subject)) for subject, queue in self._pulling)

    async def run(self) -> None:
        """Pull from the wanted consumers (and stop pulling from the others), once the stream exists."""
        await self._lane.wait_ready()
        self._changed.set()
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            self._changed.clear()
            for key in [k for k in self._pulling if k not in self._wanted]:
                self._pulling.pop(key).cancel()  # the consumer stays: other nodes may hold members
            for key in [k for k in self._wanted if k not in self._pulling]:
                self._pulling[key] = loop.create_task(self._pull(*key))

    async def _pull(self, subject: str, queue: str) -> None:
        """Keep one request for up to BATCH of the consumer's messages outstanding, for as long as
        the group has members here; each message is taken as it arrives."""
        name = group_consumer(queue, subject)
        nc = self._lane.nc
        asked: asyncio.Event = asyncio.Event()  # the request outstanding is over: ask again
        left = 0  # messages the outstanding request may still bring
        refused: str | None = None  # why JetStream ended a request other than by its expiry

        async def on_reply(msg: Any) -> None:
            nonlocal left, refused
            status = (msg.headers or {}).get("Status")
            if status is not None:
                if status != "100":  # not a heartbeat: 408 expired; 404, 409: see below
                    if status != "408":
                        refused = f"{status} {(msg.headers or {}).get('Description', '')}".strip()
                    asked.set()
                return
            left -= 1
            if left <= 0:
                asked.set()
            if not self._take(subject, queue, name, msg):
                with contextlib.suppress(Exception):
                    await msg.nak()  # for another node of the group, at once

        inbox = nc.new_inbox()
        sub = None
        self._asking.add(asked)
        try:
            while sub is None:
                try:
                    next_subject = await self._lane.make_pull_consumer(subject, name, GROUP_IDLE_S)
                    sub = await nc.subscribe(inbox, cb=on_reply)
                except Exception as exc:  # JetStream away: the group's messages wait in the stream
                    self._say("making the share group consumer of %s failed (%s); tried again", subject, exc)
                    await asyncio.sleep(REBIND_S)
            request = json.dumps({"batch": BATCH, "expires": int(EXPIRES_S * 1e9)}).encode()
            while True:
                if refused:  # the consumer deleted (nobody pulled for a while), too many waiting…
                    self._say("JetStream refused a pull on %s (%s); made again", subject, refused)
                    refused = None
                    await asyncio.sleep(RETRY_S)
                    with contextlib.suppress(Exception):
                        next_subject = await self._lane.make_pull_consumer(subject, name, GROUP_IDLE_S)
                asked.clear()
                left = BATCH
                try:
                    await nc.publish(next_subject, request, reply=inbox)
                except Exception as exc:  # NATS reconnecting: asked again in a moment
                    self._say("asking for share group messages on %s failed (%s)", subject, exc)
                # A request lost with a connection ends by the clock: one second after it expired.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asked.wait(), EXPIRES_S + 1.0)
        finally:
            self._asking.discard(asked)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def _say(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._said >= 60:
            self._said = now
            log.warning("cluster shared: " + message + "; said once a minute", *args)

    def _take(self, subject: str, queue: str, name: str, msg: Any) -> bool:
        """Route one of the group's messages here; False when this node has no member of the group
        any more (they left a moment ago): the caller gives it back to JetStream for another node."""
        lane = self._lane
        opened = lane.verified(msg)
        if opened is None:
            return True  # refused: counted, acknowledged
        headers, payload = opened
        key = self._wanted.get((subject, queue))
        if key is None:
            return False
        msg_id = headers.get(wire.H_ID)
        if msg_id is None:
            lane.ack_later(msg)
            return True
        if wire.served_elsewhere(headers, queue):
            self.served_at_origin += 1  # a member on the publisher's node had it (local first)
            lane.ack_later(msg)
            return True
        seen = (msg_id, name)
        if seen in self._seen:
            lane.ack_later(msg)  # a redelivery of one routed here already
            return True
        try:
            remote = wire.message_from(msg.subject, payload, headers, lane.prefix)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster shared: dropped a stored message on %s: %s", msg.subject, exc)
            lane.ack_later(msg)
            return True
        self._seen[seen] = None
        if len(self._seen) > wire.SEEN_IDS:
            self._seen.popitem(last=False)
        self.received += 1
        self._route(remote, key)  # in a member's session (and store) when it returns
        lane.ack_later(msg)
        return True

    async def close(self) -> None:
        for task in self._pulling.values():
            task.cancel()
        for task in self._pulling.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pulling.clear()
