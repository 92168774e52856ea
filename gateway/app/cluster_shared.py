"""Shared subscriptions balanced across the nodes: one member of a group gets a message, cluster-wide.

docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes".

A node with members of a share group (scope, group name, filter) holds one NATS *queue* subscription
per subject of the filter, on its control connection (cluster_link.py, with echo), in a queue group
named after the share group. NATS hands each message on a subject to one subscriber of each queue
group, whichever node it is on and including the node that published it. That node gives the message
to one of its own members of the group (`Broker.route_to_group`: the local rotation, a connected
member first, the delivery decision for each), so the group gets it once.

Local first: a client's message goes to a group's *connected* member on the node it arrived at
(broker/inbound.py `route`), and the backbone names the group on the message (`Fg-Served`,
backbone_wire.py); every node's queue subscriber for that group drops such a message. Only groups with
no connected member on the publisher's node are left to NATS's choice.

For that to hold, nothing else may give a share group a client's message: while this is in place
(`groups_elsewhere`: the backbone and this connection are both up) the broker gives a group a client's
message or will only in that local-first way, and never one from another node on the ordinary
subscriptions (which no longer include shared filters). The gateway's own messages (mode commands)
still go to local groups: every node publishes its own. If either NATS connection is down, groups
are served locally again (each node's members, as on a single gateway).

The balance NATS gives: one share per *node* holding members (not per member), chosen at random per
message; nats-server prefers a queue subscriber connected to the server the message was published
on, so a node on the publisher's NATS server gets (nearly) all of that publisher's messages for the
group. Within a node, members take turns.

QoS 1/2 messages cross nodes on the JetStream stream's subjects (`<prefix>.q.…`, backbone_durable.py).
With JetStream, a group takes them from a pull consumer of its own (backbone_groups.py: held while its
nodes are away from NATS, shared evenly by the nodes pulling from it); its queue subscriptions here
are on the core subtree only. Without JetStream (`cluster.jetstream_replicas: 0`) everything crosses
on core NATS and the queue subscriptions cover both subtrees.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.app.backbone import H_ID, SEEN_IDS, message_from
from gateway.app.backbone_durable import durable_prefix
from gateway.app.backbone_groups import GroupConsumers
from gateway.app.backbone_wire import queue_name, served_elsewhere
from gateway.app.cluster_link import ClusterLink
from gateway.broker.sessions import StoredSubscription
from gateway.broker.state import GroupKey
from gateway.broker.subjects import filter_to_subjects
from gateway.edge.driver import BrokerDriver

log = logging.getLogger("fleetgate.cluster")


class ClusterShared:
    def __init__(
        self,
        link: ClusterLink,
        driver: BrokerDriver,
        prefix: str,
        backbone_up: Callable[[], bool],
        stored: GroupConsumers | None = None,
    ) -> None:
        self._link = link
        self._stored = stored  # with JetStream: the groups' QoS 1/2 messages come from its consumers
        self._driver = driver
        self._prefix = prefix
        self._backbone_up = backbone_up
        self._members: dict[GroupKey, set[str]] = {}
        self._refs: Counter[tuple[str, str]] = Counter()  # (subject, queue) → share groups holding it
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (message id, queue)
        self._received = 0
        self._served_at_origin = 0  # messages for a group here that a member on their origin node took

    @property
    def received(self) -> int:
        """Messages taken for a share group here (from NATS queues and, QoS 1/2, JetStream)."""
        return self._received + (0 if self._stored is None else self._stored.received)

    @property
    def served_at_origin(self) -> int:
        return self._served_at_origin + (0 if self._stored is None else self._stored.served_at_origin)

    def attach(self) -> None:
        self._driver.broker.cluster.groups_elsewhere = self.active

    def active(self) -> bool:
        return self._link.connected and self._backbone_up()

    def group_changed(self, added: bool, client_id: str, sub: StoredSubscription) -> None:
        """The backbone's share-group watcher (NatsBackbone.groups)."""
        assert sub.group is not None
        key: GroupKey = (sub.scope, sub.group, sub.plain_filter)
        members = self._members.get(key)
        if added:
            if members is None:
                members = self._members[key] = set()
                self._hold(key, +1)
            members.add(client_id)
            return
        if members is None or client_id not in members:
            return
        members.discard(client_id)
        if not members:
            del self._members[key]
            self._hold(key, -1)

    def _subjects(self, plain_filter: str) -> tuple[list[str], list[str]]:
        """The filter's core subjects and their stored (QoS 1/2) twins."""
        core = list(filter_to_subjects(plain_filter, self._prefix))
        stored = durable_prefix(self._prefix)
        return core, [stored + s[len(self._prefix) :] for s in core]

    def _core_subject(self, subject: str) -> str:
        stored = durable_prefix(self._prefix) + "."
        return self._prefix + "." + subject[len(stored) :] if subject.startswith(stored) else subject

    def _hold(self, key: GroupKey, delta: int) -> None:
        queue = queue_name(key)
        core, stored = self._subjects(key[2])
        for subject in core if self._stored is not None else core + stored:
            ref = (subject, queue)
            self._refs[ref] += delta
            if self._refs[ref] <= 0:
                del self._refs[ref]
                self._link.unwant(subject, queue)
            elif delta > 0 and self._refs[ref] == 1:
                self._link.want(subject, self._handler(key, queue), queue)
        if self._stored is None:
            return
        for subject in stored:  # one group per key: no count needed
            if delta > 0:
                self._stored.want(subject, queue, key)
            else:
                self._stored.unwant(subject, queue)

    def _handler(self, key: GroupKey, queue: str) -> Callable[[Any], Any]:
        async def on_message(msg: Any) -> None:
            opened = self._link.opened(msg)
            if opened is None:
                return
            headers, payload = opened
            msg_id = headers.get(H_ID)
            if msg_id is None:
                return
            if served_elsewhere(headers, queue):
                self._served_at_origin += 1  # a member on the publisher's node had it (local first)
                return
            seen = (msg_id, queue)
            if seen in self._seen:
                return
            self._seen[seen] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
            try:
                remote = message_from(self._core_subject(msg.subject), payload, headers, self._prefix)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("cluster shared: dropped a message on %s: %s", msg.subject, exc)
                return
            self._received += 1
            self._driver.route_to_group(remote, key)

        return on_message
