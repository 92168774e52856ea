"""The hot path's shortcuts say exactly what the long way says: forwarded bytes, cached routes,
per-object decision counts, the QoS 0 fast path, byte counts, and the hub's batched writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.broker import Broker, Close, Send
from gateway.broker.actions import Outbox
from gateway.broker.message import Delivery, Message
from gateway.broker.outbound import EncodeCache
from gateway.broker.routing import SubscriptionIndex
from gateway.broker.sessions import StoredSubscription
from gateway.edge.hub import ConnectionHub
from gateway.mqtt.codec import PacketReader, encode_publish
from gateway.mqtt.packets import Properties, Publish, Subscription
from gateway.mqtt.session import ServerSession
from gateway.policy.access import CertificateOnlyPolicy
from tests.broker.lab import V5, V311, VERSIONS, Lab, RecordingTransport, service_peer, unit_peer

# --- forwarding the bytes a PUBLISH arrived as ---------------------------------------------------


def _session(version: Any) -> ServerSession:
    from gateway.mqtt.client import MqttClient

    session = ServerSession(now=0.0)
    client = MqttClient("TRK-1", version=version)
    client.connect()
    session.receive_data(client.data_to_send(), 0.0)
    session.next_event()
    return session


@pytest.mark.parametrize("version", VERSIONS, ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("qos", [0, 1])
def test_a_plain_publish_is_forwardable_as_it_came(version: Any, qos: int) -> None:
    session = _session(version)
    wire = encode_publish(
        Publish("fleet/TRK-1/telemetry/gps", b"x" * 40, qos, packet_id=9 if qos else None), version
    )
    session.receive_data(wire, 0.0)
    publish = session.next_event()
    assert isinstance(publish, Publish)
    assert session.forwardable(publish) == wire
    # What the broker would have encoded for a subscriber on the same version: the same packet.
    cache = EncodeCache(Message(publish.topic, publish.payload, qos, False, publish.properties), 0.0)
    assert cache.form(version, qos, False, ()) == encode_publish(
        Publish(publish.topic, publish.payload, qos, packet_id=1 if qos else None), version
    )


@pytest.mark.parametrize("version", VERSIONS, ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_cache_seeded_with_the_bytes_as_they_came_gives_what_encoding_gives(version: Any, qos: int) -> None:
    # EncodeCache hands out the bytes a message arrived as without building its map of forms; every
    # form a recipient can get, asked twice, is what a cache without those bytes encodes.
    publish = Publish("fleet/TRK-1/telemetry/gps", b"x" * 40, qos, packet_id=9 if qos else None)
    message = Message(publish.topic, publish.payload, qos, False, publish.properties)
    seeded = EncodeCache(message, 0.0, (version, encode_publish(publish, version)))
    fresh = EncodeCache(message, 0.0)
    for to_version in VERSIONS:
        for to_qos in range(qos + 1):
            for retain in (False, True):
                for ids in ((), (7,)):
                    delivery = Delivery(message, to_qos, retain, ids, packet_id=5 if to_qos else None)
                    for _ in range(2):
                        assert seeded.publish(to_version, delivery) == fresh.publish(to_version, delivery)


@pytest.mark.parametrize(
    "publish",
    [
        Publish("a/b", b"x", 0, retain=True),
        Publish("a/b", b"x", 1, dup=True, packet_id=3),
        Publish("a/b", b"x", 0, properties=Properties(content_type="text/plain")),
    ],
    ids=["retain", "dup", "properties"],
)
def test_what_a_subscriber_would_see_differently_is_not_forwarded(publish: Publish) -> None:
    session = _session(V5)
    session.receive_data(encode_publish(publish, V5), 0.0)
    decoded = session.next_event()
    assert isinstance(decoded, Publish)
    assert session.forwardable(decoded) is None


def test_forwardable_only_until_more_bytes_arrive() -> None:
    session = _session(V311)
    first = encode_publish(Publish("a/b", b"1", 0), V311)
    session.receive_data(first + encode_publish(Publish("a/b", b"2", 0), V311), 0.0)
    one = session.next_event()
    assert isinstance(one, Publish) and session.forwardable(one) == first
    session.receive_data(b"", 0.0)
    assert session.forwardable(one) is None


def test_a_topic_alias_publish_is_re_encoded_with_its_full_topic() -> None:
    lab = Lab()
    sub = lab.connect("TRK-2", version=V5)
    sub.subscribe("fleet/#")
    pub = lab.connect("TRK-1", version=V5)
    pub.publish("fleet/x", b"1", properties=Properties(topic_alias=1))
    pub.publish("", b"2", properties=Properties(topic_alias=1))
    assert [(m.topic, m.payload) for m in sub.messages] == [("fleet/x", b"1"), ("fleet/x", b"2")]


def test_the_last_publish_frame_is_exact_across_split_reads() -> None:
    reader = PacketReader(version=V5)
    wire = encode_publish(Publish("t", b"p" * 300, 1, packet_id=7), V5)
    reader.feed(wire[:100])
    assert reader.next_packet() is None
    reader.feed(wire[100:])
    assert isinstance(reader.next_packet(), Publish)
    assert reader.last_publish_wire() == wire


# --- the routing cache --------------------------------------------------------------------------


def _sub(topic_filter: str, qos: int = 0) -> StoredSubscription:
    return StoredSubscription(Subscription(topic_filter, qos), None, None, topic_filter)


def test_cached_routes_follow_every_subscribe_and_unsubscribe() -> None:
    index = SubscriptionIndex()
    assert index.match("fleet/a/telemetry/gps", "a") == ({}, [])
    version = index.version
    index.add("analytics", _sub("fleet/+/telemetry/#"))
    assert index.version > version
    targets, _ = index.match("fleet/a/telemetry/gps", "a")
    assert list(targets) == ["analytics"]
    assert index.match("fleet/a/telemetry/gps", "a")[0] is targets  # remembered
    index.add("dispatch", _sub("fleet/a/#", 1))
    assert sorted(index.match("fleet/a/telemetry/gps", "a")[0]) == ["analytics", "dispatch"]
    index.remove("analytics", _sub("fleet/+/telemetry/#"))
    assert list(index.match("fleet/a/telemetry/gps", "a")[0]) == ["dispatch"]


def test_the_route_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.broker.routing as routing

    monkeypatch.setattr(routing, "MATCH_CACHE_SIZE", 4)
    index = SubscriptionIndex()
    index.add("s", _sub("#"))
    for n in range(10):
        assert list(index.match(f"t/{n}", None)[0]) == ["s"]
        assert 1 <= len(index._cache) <= 4


def test_alike_answers_are_one_object_and_different_ones_are_not() -> None:
    index = SubscriptionIndex()
    index.add("analytics", _sub("fleet/+/telemetry/#"))
    index.add("TRK-1", _sub("fleet/TRK-1/cmd/#", 1))
    one, two = (
        index.match("fleet/TRK-1/telemetry/gps", "TRK-1"),
        index.match("fleet/TRK-2/telemetry/gps", "TRK-2"),
    )
    # (the answer's parts: compiled by mypyc, a returned tuple is made again, its contents are not)
    assert one[0] is two[0] and one[1] is two[1] and list(one[0]) == ["analytics"]
    command = index.match("fleet/TRK-1/cmd/mode", "service/dispatch")
    assert command[0] is not one[0] and list(command[0]) == ["TRK-1"] and command[0]["TRK-1"].qos == 1
    index.add("audit", _sub("fleet/TRK-2/#", 1))  # from now on TRK-2's telemetry has another answer
    one, two = (
        index.match("fleet/TRK-1/telemetry/gps", "TRK-1"),
        index.match("fleet/TRK-2/telemetry/gps", "TRK-2"),
    )
    assert one[0] is not two[0] and sorted(two[0]) == ["analytics", "audit"] and list(one[0]) == ["analytics"]


def test_subscriptions_version_moves_with_the_broker_s_subscriptions() -> None:
    lab = Lab()
    before = lab.broker.subscriptions_version
    sub = lab.connect("TRK-1")
    assert lab.broker.subscriptions_version == before
    sub.subscribe("fleet/TRK-1/cmd/#")
    assert lab.broker.subscriptions_version > before


# --- decisions counted per object ---------------------------------------------------------------


def test_decision_counts_are_exact_after_folding() -> None:
    lab = Lab()
    sub = lab.connect("sub", peer=service_peer("sub"))
    sub.subscribe("fleet/#")
    pub = lab.connect("TRK-1", peer=unit_peer("TRK-1"))
    for _ in range(5):
        pub.publish("fleet/TRK-1/telemetry/gps", b"x")
    pub.publish("$SYS/x", b"x")  # the floor denies $-topics
    decisions = lab.broker.metrics.decisions
    assert decisions[("publish", "allow", "builtin_floor")] == 5
    assert decisions[("delivery", "allow", "builtin_floor")] == 5
    assert decisions[("publish", "deny", "reserved_topic")] == 1
    pub.publish("fleet/TRK-1/telemetry/gps", b"x")
    assert (
        lab.broker.metrics.decisions[("publish", "allow", "builtin_floor")] == 6
    )  # read twice: no double count


def test_many_distinct_decision_objects_stay_bounded_and_counted() -> None:
    from gateway.broker.state import _TALLY_LIMIT

    broker = Broker(CertificateOnlyPolicy())
    st = broker._st
    for n in range(_TALLY_LIMIT * 3):
        st.counted(
            "publish", CertificateOnlyPolicy().decide_publish(unit_peer("u"), f"t/{n}", 1, 0, False, 0)
        )
    assert all(len(t) <= _TALLY_LIMIT for t in st._tallies.values())
    assert broker.metrics.decisions[("publish", "allow", "builtin_floor")] == _TALLY_LIMIT * 3


# --- QoS 0 fast path and the outbox -------------------------------------------------------------


@pytest.mark.parametrize("sub_version", VERSIONS, ids=["sub 3.1.1", "sub 5.0"])
@pytest.mark.parametrize("pub_version", VERSIONS, ids=["pub 3.1.1", "pub 5.0"])
def test_qos0_reaches_subscribers_of_either_version_with_their_options(
    pub_version: Any, sub_version: Any
) -> None:
    lab = Lab()
    plain = lab.connect("sub-a", version=sub_version, peer=service_peer("sub-a"))
    plain.subscribe("fleet/#")
    rap = lab.connect("sub-b", version=V5, peer=service_peer("sub-b"))
    rap.subscribe(Subscription("fleet/#", 0, retain_as_published=True))
    pub = lab.connect("TRK-1", version=pub_version, peer=unit_peer("TRK-1"))
    pub.publish("fleet/TRK-1/state", b"on", retain=True)
    pub.publish("fleet/TRK-1/telemetry/gps", b"fix")
    assert [(m.topic, m.payload, m.retain) for m in plain.messages] == [
        ("fleet/TRK-1/state", b"on", False),
        ("fleet/TRK-1/telemetry/gps", b"fix", False),
    ]
    assert [m.retain for m in rap.messages] == [True, False]


def test_outbox_counts_bytes_and_keeps_order_with_closes() -> None:
    out = Outbox()
    out.send(1, b"ab")
    out.send(2, b"c")
    out.send(1, b"d")
    assert out.nbytes == 4
    assert out.actions() == [Send(1, b"abd"), Send(2, b"c")]
    out.close(2, "bye")
    out.discard_sends(1)
    out.send(1, b"zz")
    assert out.nbytes == 3
    assert out.actions() == [Send(1, b"zz"), Send(2, b"c"), Close(2, "bye")]


def test_bytes_out_matches_what_was_sent() -> None:
    lab = Lab()
    sub = lab.connect("sub", peer=service_peer("sub"))
    sub.subscribe("fleet/#")
    sent_before = sum(len(a.data) for a in lab.actions if isinstance(a, Send))
    out_before = lab.broker.metrics.bytes_out
    assert out_before == sent_before
    lab.connect("TRK-1").publish("fleet/TRK-1/telemetry/gps", b"x" * 10)
    assert lab.broker.metrics.bytes_out == sum(len(a.data) for a in lab.actions if isinstance(a, Send))


# --- the hub writes once per connection per loop iteration -------------------------------------


async def test_hub_coalesces_sends_until_the_iteration_ends_and_flushes_before_close() -> None:
    hub = ConnectionHub(Broker(CertificateOnlyPolicy()))
    a, b = RecordingTransport(), RecordingTransport()
    hub._transports.update({1: a, 2: b})  # type: ignore[dict-item]
    hub.apply([Send(1, b"x"), Send(2, b"y")])
    hub.apply([Send(1, b"z")])
    assert a.writes == [] and b.writes == []  # not yet: the iteration is not over
    hub.apply([Send(2, b"w"), Close(2, "bye")])
    assert b.writes == [b"yw"] and b.closed  # a Close flushes its connection first
    await asyncio.sleep(0)
    assert a.writes == [b"xz"]
    assert b.writes == [b"yw"]


async def test_hub_writes_a_batch_from_outside_a_read_at_once_with_what_was_pending() -> None:
    # The cluster backbone's messages and store receipts (BrokerDriver.route_remote, .stored, ...):
    # written in the same turn of the event loop, in order after what was already pending.
    hub = ConnectionHub(Broker(CertificateOnlyPolicy()))
    a, b = RecordingTransport(), RecordingTransport()
    hub._transports.update({1: a, 2: b})  # type: ignore[dict-item]
    hub.apply([Send(1, b"x")])
    hub.apply_now([Send(1, b"y"), Send(2, b"z")])
    assert a.writes == [b"xy"] and b.writes == [b"z"]
    await asyncio.sleep(0)
    assert a.writes == [b"xy"] and b.writes == [b"z"]  # the flush scheduled by the first had nothing


def test_hub_outside_a_loop_writes_at_once() -> None:
    hub = ConnectionHub(Broker(CertificateOnlyPolicy()))
    a = RecordingTransport()
    hub._transports[1] = a  # type: ignore[assignment]
    hub.apply([Send(1, b"x")])
    assert a.writes == [b"x"]
