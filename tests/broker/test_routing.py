"""The routing core's parts on their own: index, shared groups, retained tree, timers, outbox, patching."""

from __future__ import annotations

from dataclasses import replace

from gateway.broker.actions import Close, Outbox, Send
from gateway.broker.message import Delivery, Message
from gateway.broker.outbound import with_packet_id
from gateway.broker.routing import RetainedStore, SubscriptionIndex
from gateway.broker.sessions import MqttSession, StoredSubscription
from gateway.broker.timers import TimerQueue
from gateway.mqtt.codec import encode_publish
from gateway.mqtt.packets import Properties, ProtocolVersion, Publish, Subscription
from gateway.mqtt.topics import parse_shared
from gateway.policy.peer import Peer


def stored(
    topic_filter: str, qos: int = 0, identifier: int | None = None, *, no_local: bool = False
) -> StoredSubscription:
    shared = parse_shared(topic_filter)
    options = Subscription(topic_filter, qos, no_local=no_local)
    return StoredSubscription(options, identifier, shared.group, shared.topic_filter)


def msg(topic: str, payload: bytes = b"x", qos: int = 0) -> Message:
    return Message(topic, payload, qos, True, Properties())


def test_index_merges_overlaps_and_applies_no_local() -> None:
    index = SubscriptionIndex()
    index.add("a", stored("x/#", 0, 1))
    index.add("a", stored("x/+", 2, 2))
    index.add("b", stored("x/y", 1, no_local=True))
    targets, groups = index.match("x/y", publisher="b")
    assert list(targets) == ["a"] and groups == []
    assert (targets["a"].qos, sorted(targets["a"].subscription_ids)) == (2, [1, 2])
    index.remove("a", stored("x/#"))
    targets, _ = index.match("x/y", publisher=None)
    assert sorted(targets) == ["a", "b"] and targets["a"].subscription_ids == [2]


def test_shared_group_rotation_and_membership() -> None:
    index = SubscriptionIndex()
    for member in ("m1", "m2", "m3"):
        index.add(member, stored("$share/g/jobs/#", 1))
    index.add("m1", stored("$share/other/jobs/#"))
    _, groups = index.match("jobs/1", None)
    assert sorted(g.name for g in groups) == ["g", "other"]
    group = next(g for g in groups if g.name == "g")
    picks = [group.pick(lambda c: True, lambda c: True) for _ in range(4)]
    assert [p[0] for p in picks if p] == ["m1", "m2", "m3", "m1"]
    assert group.pick(lambda c: c != "m2", lambda c: True) == ("m3", group.members["m3"])  # m2 offline
    assert group.pick(lambda c: False, lambda c: c == "m2") == ("m2", group.members["m2"])  # offline fallback
    assert group.pick(lambda c: True, lambda c: False) is None
    for member in ("m1", "m2", "m3"):
        index.remove(member, stored("$share/g/jobs/#"))
    _, groups = index.match("jobs/1", None)
    assert [g.name for g in groups] == ["other"]


def test_one_group_name_in_two_scopes_is_two_groups() -> None:
    index = SubscriptionIndex()
    for member, scope in (("a1", "identity/service/a"), ("a2", "identity/service/a"), ("b", "identity/x/b")):
        index.add(member, replace(stored("$share/g/jobs/#", 1), scope=scope))
    _, groups = index.match("jobs/1", None)
    assert sorted((g.scope, sorted(g.members)) for g in groups) == [
        ("identity/service/a", ["a1", "a2"]),
        ("identity/x/b", ["b"]),
    ]
    index.remove("b", replace(stored("$share/g/jobs/#"), scope="identity/service/a"))  # not its group
    index.remove("b", replace(stored("$share/g/jobs/#"), scope="identity/x/b"))
    _, groups = index.match("jobs/1", None)
    assert [g.scope for g in groups] == ["identity/service/a"]


def test_retained_tree() -> None:
    store = RetainedStore()
    for topic in ("a", "a/b", "a/b/c", "b/b", "$SYS/x", "/lead"):
        store.set(msg(topic, topic.encode()))

    def topics(f: str) -> list[str]:
        return sorted(m.topic for m in store.match(f))

    assert topics("a/#") == ["a", "a/b", "a/b/c"]
    assert topics("#") == ["/lead", "a", "a/b", "a/b/c", "b/b"]
    assert topics("+/b") == ["a/b", "b/b"]
    assert topics("+/+") == ["/lead", "a/b", "b/b"]
    assert topics("$SYS/#") == ["$SYS/x"]
    assert topics("a/b") == ["a/b"]
    assert store.delete("a/b") and not store.delete("a/b")
    assert topics("a/#") == ["a", "a/b/c"] and len(store) == 5
    store.delete("a/b/c")
    assert topics("a/#") == ["a"]


def test_timer_queue() -> None:
    timers: TimerQueue[str] = TimerQueue()
    timers.set("a", 10)
    timers.set("b", 5)
    timers.set("a", 3)  # rescheduled: the old entry is stale
    timers.set("c", 7)
    timers.cancel("c")
    assert timers.next_deadline() == 3
    assert timers.pop_due(6) == ["a", "b"]
    assert timers.next_deadline() is None and len(timers) == 0
    for i in range(500):
        timers.set("k", float(i))
    assert timers.pop_due(1000) == ["k"]


def test_outbox_coalesces_and_orders() -> None:
    out = Outbox()
    out.send(1, b"a")
    out.send(2, b"x")
    out.send(1, b"b")
    out.close(2, "bye")
    out.send(2, b"late")  # nothing after a Close
    out.close(3, "gone")
    assert out.actions() == [Send(1, b"ab"), Send(2, b"x"), Close(2, "bye"), Close(3, "gone")]


def test_packet_id_patching() -> None:
    for size in (10, 200, 20_000):
        for version in ProtocolVersion:
            template = encode_publish(Publish("t/" + "x" * 3, b"p" * size, 1, packet_id=1), version)
            expected = encode_publish(Publish("t/xxx", b"p" * size, 1, dup=True, packet_id=4242), version)
            assert with_packet_id(template, 4242, dup=True) == expected


def test_session_queue_accounting_and_packet_ids() -> None:
    session = MqttSession("c", None, Peer("", None))
    m = msg("t")
    q0, q1, q1b = Delivery(m, 0, False), Delivery(m, 1, False), Delivery(m, 1, False)
    for delivery in (q1, q0, q1b):
        session.push(delivery)
    size = len(m.payload)
    assert (session.queued, session.queued_bytes, session.queued_qos0) == (3, 3 * size, 1)
    assert session.evict_qos0() is q0 and session.evict_qos0() is None  # only QoS 0 is ever evicted
    assert session.pop_queued() is q1 and (session.queued, session.queued_bytes) == (1, size)
    session.clear_queue()
    assert (session.queued, session.queued_bytes, session.queued_qos0, list(session.queue)) == (0, 0, 0, [])
    session.inflight[1] = q1
    assert session.allocate_packet_id() == 2
    session.last_packet_id = 65535
    assert session.allocate_packet_id() == 2  # wraps, skipping 1 which is in flight
