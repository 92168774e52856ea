"""What a node does with a share group's stored message from the group's pull consumer
(gateway/app/backbone_groups.py), without NATS: routed to the group once, acknowledged after; dropped
(acknowledged) when the publisher's node gave it to a member of its own; given back to JetStream for
another node when this node's members left a moment ago. The pull itself, the even split across nodes
and a node away from NATS are in tests/cluster/test_cluster_sessions.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.app.backbone_groups import GroupConsumers
from gateway.app.backbone_wire import H_SERVED, message_headers, queue_name
from gateway.broker.core import RemoteMessage
from gateway.broker.message import Message
from gateway.broker.state import GroupKey
from gateway.mqtt.packets import Properties
from tests.broker.lab import unit_peer

KEY: GroupKey = (None, "ops-watch", "fleet/+/telemetry/#")
QUEUE = queue_name(KEY)
SUBJECT = "fleetgate.q.m.fleet.*.telemetry.>"


@dataclass
class Msg:
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass
class Lane:
    """The durable lane's side: verification passes, acknowledgements are counted."""

    prefix: str = "fleetgate.q"
    acked: list[Any] = field(default_factory=list)

    def verified(self, msg: Msg) -> tuple[dict[str, str], bytes]:
        return msg.headers, msg.data

    def ack_later(self, msg: Msg) -> None:
        self.acked.append(msg)


def _stored(msg_id: str, served: str | None = None) -> Msg:
    message = Message("fleet/TRK-1/telemetry/gps", b"fix", 1, False, Properties())
    headers = message_headers("node-a", msg_id, message, "TRK-1", unit_peer("TRK-1"))
    if served is not None:
        headers[H_SERVED] = served
    return Msg("fleetgate.q.m.fleet.TRK-1.telemetry.gps", b"fix", headers)


def _groups() -> tuple[GroupConsumers, Lane, list[tuple[RemoteMessage, GroupKey]]]:
    lane = Lane()
    routed: list[tuple[RemoteMessage, GroupKey]] = []
    groups = GroupConsumers(lane, lambda message, key: routed.append((message, key)))  # type: ignore[arg-type]
    groups.want(SUBJECT, QUEUE, KEY)
    return groups, lane, routed


def test_a_message_goes_to_the_group_once_and_is_acknowledged_after() -> None:
    groups, lane, routed = _groups()
    first = _stored("node-a:1:1")
    assert groups._take(SUBJECT, QUEUE, "fg_g-x", first)
    assert [(m[0], m[1], m[5], key) for m, key in routed] == [
        ("fleet/TRK-1/telemetry/gps", b"fix", "TRK-1", KEY)
    ]
    assert lane.acked == [first]
    again = _stored("node-a:1:1")  # redelivered (its ack was lost): acknowledged, not routed again
    assert groups._take(SUBJECT, QUEUE, "fg_g-x", again)
    assert len(routed) == 1 and lane.acked == [first, again]
    assert groups.received == 1


def test_a_message_a_member_on_its_origin_node_took_is_dropped() -> None:
    groups, lane, routed = _groups()
    taken = _stored("node-a:1:2", served=f"fg-share-other,{QUEUE}")
    assert groups._take(SUBJECT, QUEUE, "fg_g-x", taken)
    assert routed == [] and lane.acked == [taken] and groups.served_at_origin == 1


def test_a_message_for_members_that_left_a_moment_ago_goes_back_for_another_node() -> None:
    groups, lane, routed = _groups()
    groups.unwant(SUBJECT, QUEUE)
    assert not groups._take(SUBJECT, QUEUE, "fg_g-x", _stored("node-a:1:3"))  # the caller NAKs it
    assert routed == [] and lane.acked == []
