"""Publish/subscribe end to end: QoS flows, retained messages, subscription options, shared groups."""

from __future__ import annotations

import pytest

from gateway.broker import BrokerLimits
from gateway.mqtt.packets import Properties, ProtocolVersion, Publish, RetainHandling, Subscription
from gateway.mqtt.reason_codes import ReasonCode
from tests.broker.lab import V5, V311, VERSIONS, Lab, lab_peer

TOPIC = "fleet/TRK-1/telemetry/gps"


@pytest.mark.parametrize("sub_version", VERSIONS)
@pytest.mark.parametrize("pub_version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_end_to_end_at_each_qos(pub_version: ProtocolVersion, sub_version: ProtocolVersion, qos: int) -> None:
    lab = Lab()
    sub = lab.connect("ops-1", version=sub_version)
    pub = lab.connect("TRK-1", version=pub_version)
    assert sub.subscribe("fleet/+/telemetry/#", qos=2).reason_codes == (2,)
    packet_id = pub.publish(TOPIC, b"52.1,4.3", qos=qos)
    (msg,) = sub.messages
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (TOPIC, b"52.1,4.3", qos, False)
    if qos:
        assert [(d.packet_id, d.reason_code) for d in pub.done] == [(packet_id, 0)]
        assert not pub.client.pending and not sub.client.inbound_qos2  # every flow completed
    session = {s.client_id: s for s in lab.broker.sessions()}["ops-1"]
    assert session.inflight == 0 and session.queued == 0
    assert lab.broker.metrics.publishes_in == 1 and lab.broker.metrics.publishes_out == 1


def test_outbound_qos_is_the_minimum_of_publish_and_subscription() -> None:
    lab = Lab()
    sub = lab.connect("ops-1")
    pub = lab.connect("TRK-1")
    sub.subscribe(Subscription("fleet/#", qos=1))
    pub.publish(TOPIC, b"a", qos=2)
    pub.publish(TOPIC, b"b", qos=0)
    assert [m.qos for m in sub.messages] == [1, 0]


def test_qos2_retransmission_is_not_routed_twice() -> None:
    lab = Lab()
    sub = lab.connect("ops-1")
    pub = lab.connect("TRK-1")
    sub.subscribe("fleet/#", qos=2)
    packet_id = pub.client.publish(TOPIC, b"once", qos=2)
    # As if the PUBREC were lost: the same PUBLISH again, with DUP, before the client hears back.
    pub.client.resend_pending()
    lab.pump()
    assert sub.payloads == [b"once"]
    assert packet_id is not None and not pub.client.pending  # PUBREC, PUBREL, PUBCOMP all done


def test_pubrel_for_an_unknown_id_gets_pubcomp_0x92() -> None:
    from gateway.mqtt.packets import Pubrel

    lab = Lab()
    link = lab.connect("TRK-1")
    link.client.send_packet(Pubrel(77))
    lab.pump()
    assert link.received.endswith(bytes((0x70, 3, 0, 77, 0x92)))
    assert link.closed is None


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_delivered_on_subscribe_and_cleared(version: ProtocolVersion) -> None:
    lab = Lab()
    pub = lab.connect("TRK-1")
    pub.publish("fleet/TRK-1/state", b"online", qos=1, retain=True)
    assert lab.broker.metrics.retained_messages == 1
    first = lab.connect("ops-1", version=version)
    first.subscribe("fleet/+/state", qos=1)
    (msg,) = first.messages
    assert (msg.payload, msg.retain, msg.qos) == (b"online", True, 1)
    pub.publish("fleet/TRK-1/state", b"", retain=True)  # an empty retained message deletes
    assert lab.broker.metrics.retained_messages == 0
    assert first.messages[-1].payload == b""  # and is still forwarded to current subscribers
    late = lab.connect("ops-2", version=version)
    late.subscribe("fleet/#")
    assert late.messages == []


def test_live_delivery_clears_retain_unless_retain_as_published() -> None:
    lab = Lab()
    plain = lab.connect("ops-1")
    rap = lab.connect("ops-2")
    plain.subscribe("fleet/#")
    rap.subscribe(Subscription("fleet/#", retain_as_published=True))
    lab.connect("TRK-1").publish("fleet/TRK-1/state", b"on", retain=True)
    assert plain.messages[-1].retain is False
    assert rap.messages[-1].retain is True


def test_retain_handling_options() -> None:
    lab = Lab()
    lab.connect("TRK-1").publish("fleet/TRK-1/state", b"on", retain=True)
    never = lab.connect("ops-1")
    never.subscribe(Subscription("fleet/#", retain_handling=RetainHandling.DO_NOT_SEND))
    assert never.messages == []
    if_new = lab.connect("ops-2")
    if_new.subscribe(Subscription("fleet/#", retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION))
    if_new.subscribe(Subscription("fleet/#", retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION))
    assert if_new.payloads == [b"on"]  # not again for the existing subscription
    always = lab.connect("ops-3")
    always.subscribe("fleet/#")
    always.subscribe("fleet/#")
    assert always.payloads == [b"on", b"on"]


def test_retained_wildcards_and_dollar_topics() -> None:
    lab = Lab()
    lab.broker.publish_internal(_publish("$fleet/config", b"c"), lab.now)
    pub = lab.connect("TRK-1")
    for topic in ("a", "a/b", "a/b/c", "x/b"):
        pub.publish(topic, topic.encode(), retain=True)
    sub = lab.connect("ops-1", peer=None)
    sub.subscribe("a/#")
    assert sorted(sub.payloads) == [b"a", b"a/b", b"a/b/c"]
    sub2 = lab.connect("ops-2")
    sub2.subscribe("+/b")
    assert sorted(sub2.payloads) == [b"a/b", b"x/b"]
    sub3 = lab.connect("ops-3")
    sub3.subscribe("#")
    assert b"c" not in sub3.payloads  # §4.7.2: '#' does not reach $-topics


def _publish(topic: str, payload: bytes, qos: int = 0, retain: bool = True) -> Publish:
    return Publish(topic, payload, qos, retain, packet_id=1 if qos else None)


def test_no_local() -> None:
    lab = Lab()
    me = lab.connect("svc-1")
    me.subscribe(Subscription("chat/#", no_local=True))
    other = lab.connect("svc-2")
    other.subscribe("chat/#")
    me.publish("chat/x", b"hi")
    assert me.messages == [] and other.payloads == [b"hi"]
    other.publish("chat/y", b"yo")
    assert me.payloads == [b"yo"]


def test_overlapping_subscriptions_deliver_once_with_max_qos_and_all_ids() -> None:
    lab = Lab()
    sub = lab.connect("ops-1")
    sub.subscribe(
        Subscription("fleet/+/telemetry/#", qos=0), properties=Properties(subscription_identifiers=(7,))
    )
    sub.subscribe(Subscription("fleet/TRK-1/#", qos=2), properties=Properties(subscription_identifiers=(9,)))
    lab.connect("TRK-1").publish(TOPIC, b"x", qos=2)
    (msg,) = sub.messages
    assert msg.qos == 2
    assert sorted(msg.properties.subscription_identifiers) == [7, 9]


def test_3_1_1_overlap_is_one_delivery_too() -> None:
    lab = Lab()
    sub = lab.connect("ops-1", version=V311)
    sub.subscribe("fleet/#", qos=0)
    sub.subscribe("fleet/TRK-1/#", qos=1)
    lab.connect("TRK-1").publish(TOPIC, b"x", qos=1)
    assert [m.qos for m in sub.messages] == [1]


def test_shared_subscription_round_robin_prefers_connected_members() -> None:
    lab = Lab()
    # Lab clients: one share scope ("lab"); certificate identities each have their own (test_share_scope.py).
    members = [lab.connect(f"lab-worker-{i}", peer=lab_peer()) for i in range(3)]
    for m in members:
        assert m.subscribe("$share/etl/fleet/+/telemetry/#", qos=1).reason_codes == (1,)
    pub = lab.connect("TRK-1")
    for i in range(6):
        pub.publish(TOPIC, str(i).encode(), qos=1)
    assert [len(m.messages) for m in members] == [2, 2, 2]
    assert sorted(p for m in members for p in m.payloads) == [str(i).encode() for i in range(6)]
    members[1].disconnect_cleanly()  # clean session: leaves the group
    for _ in range(4):
        pub.publish(TOPIC, b"more", qos=1)
    assert len(members[0].messages) + len(members[2].messages) == 8


def test_shared_subscription_queues_to_offline_persistent_member_only_when_none_connected() -> None:
    lab = Lab()
    keep = Properties(session_expiry_interval=600)
    a = lab.connect("lab-worker-a", clean_start=False, properties=keep, peer=lab_peer())
    b = lab.connect("lab-worker-b", clean_start=False, properties=keep, peer=lab_peer())
    a.subscribe("$share/g/jobs/#", qos=1)
    b.subscribe("$share/g/jobs/#", qos=1)
    a.lose()
    pub = lab.connect("TRK-1")
    pub.publish("jobs/1", b"1", qos=1)
    pub.publish("jobs/2", b"2", qos=1)
    assert b.payloads == [b"1", b"2"]  # the connected member takes everything
    b.lose()
    pub.publish("jobs/3", b"3", qos=1)
    back = lab.connect("lab-worker-a", clean_start=False, properties=keep, peer=lab_peer())
    back2 = lab.connect("lab-worker-b", clean_start=False, properties=keep, peer=lab_peer())
    assert sorted(back.payloads + back2.payloads) == [b"3"]


def test_shared_subscription_gets_no_retained_messages_and_rejects_no_local() -> None:
    lab = Lab()
    lab.connect("TRK-1").publish("jobs/1", b"r", retain=True)
    w = lab.connect("worker-1")
    w.subscribe("$share/g/jobs/#")
    assert w.messages == []
    w.subscribe(Subscription("$share/g/jobs/#", no_local=True))
    assert w.closed == "protocol_error"
    assert w.disconnect is not None and w.disconnect.reason_code == ReasonCode.PROTOCOL_ERROR


@pytest.mark.parametrize(("version", "invalid_code"), [(V5, 0x8F), (V311, 0x80)])
def test_subscribe_codes(version: ProtocolVersion, invalid_code: int) -> None:
    lab = Lab(limits=BrokerLimits(max_subscriptions=3))
    link = lab.connect("ops-1", version=version)
    link.subscribe(Subscription("z", 0))
    quota = 0x97 if version == V5 else 0x80
    denied = 0x87 if version == V5 else 0x80
    # A packet may carry no more filters than the session may hold (3): the rest are not judged.
    suback = link.subscribe(
        Subscription("a/#", 1),
        Subscription("a/#b", 1),
        Subscription("$SYS/#", 0),
        Subscription("c", 0),
        Subscription("b", 2),
    )
    assert suback.reason_codes == (1, invalid_code, denied, quota, quota)
    # The session's own quota: two held, one more fits.
    assert link.subscribe(Subscription("b", 2), Subscription("d", 0)).reason_codes == (2, quota)
    assert link.closed is None


def test_unsubscribe_codes_in_5_0() -> None:
    lab = Lab()
    link = lab.connect("ops-1")
    link.subscribe("a/#")
    assert link.unsubscribe("a/#", "never", "bad/#/x").reason_codes == (0, 0x11, 0x8F)
    lab.connect("TRK-1").publish("a/1", b"x")
    assert link.messages == []


def test_unsubscribe_in_3_1_1() -> None:
    lab = Lab()
    link = lab.connect("ops-1", version=V311)
    link.subscribe("a/#")
    assert link.unsubscribe("a/#").reason_codes == ()


def test_message_expiry_is_forwarded_reduced_and_expired_messages_are_dropped() -> None:
    lab = Lab()
    keep = Properties(session_expiry_interval=3600)
    sub = lab.connect("ops-1", clean_start=False, properties=keep)
    sub.subscribe("cmd/#", qos=1)
    sub.lose()
    pub = lab.connect("TRK-1")
    pub.publish("cmd/a", b"short", qos=1, properties=Properties(message_expiry_interval=10))
    pub.publish("cmd/b", b"long", qos=1, properties=Properties(message_expiry_interval=100))
    lab.advance(30)
    back = lab.connect("ops-1", clean_start=False, properties=keep)
    (msg,) = back.messages
    assert msg.payload == b"long" and msg.properties.message_expiry_interval == 70
    assert lab.broker.metrics.drops["message_expired"] == 1


def test_inbound_topic_alias() -> None:
    lab = Lab()
    sub = lab.connect("ops-1")
    sub.subscribe("fleet/#")
    pub = lab.connect("TRK-1")
    pub.publish(TOPIC, b"1", properties=Properties(topic_alias=3))
    pub.publish("", b"2", properties=Properties(topic_alias=3))
    assert [(m.topic, m.payload) for m in sub.messages] == [(TOPIC, b"1"), (TOPIC, b"2")]
    assert all(m.properties.topic_alias is None for m in sub.messages)
    pub.publish("", b"3", properties=Properties(topic_alias=40))  # above our maximum of 32
    assert pub.closed == "topic_alias_invalid"
    assert pub.disconnect is not None and pub.disconnect.reason_code == ReasonCode.TOPIC_ALIAS_INVALID


def test_unknown_topic_alias_is_a_protocol_error() -> None:
    lab = Lab()
    pub = lab.connect("TRK-1")
    pub.publish("", b"x", properties=Properties(topic_alias=1))
    assert pub.closed == "protocol_error"


@pytest.mark.parametrize("qos", [1, 0])  # QoS 0 to a connected client takes its own short path
def test_never_send_more_than_the_clients_maximum_packet_size(qos: int) -> None:
    lab = Lab()
    small = lab.connect("ops-1", properties=Properties(maximum_packet_size=64))
    small.subscribe("big/#", qos=qos)
    pub = lab.connect("TRK-1")
    pub.publish("big/1", b"x" * 100, qos=qos)
    pub.publish("big/2", b"ok", qos=qos)
    assert small.payloads == [b"ok"]
    assert lab.broker.metrics.drops["packet_too_large"] == 1
    assert {s.client_id: s for s in lab.broker.sessions()}["ops-1"].inflight == 0  # nothing stuck


def test_a_fan_out_is_encoded_once() -> None:
    from gateway.broker import Send

    lab = Lab()
    subs = [lab.connect(f"ops-{i}") for i in range(5)]
    for s in subs:
        s.subscribe("fleet/#")
    lab.actions.clear()
    lab.connect("TRK-1").publish(TOPIC, b"payload")
    sends = [a for a in lab.actions if isinstance(a, Send) and a.conn in {s.conn for s in subs}]
    assert len(sends) == 5 and len({id(a.data) for a in sends}) == 1  # the very same bytes object


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_5_0_subscriber_that_accepts_topic_aliases_gets_them(qos: int) -> None:
    lab = Lab()
    sub = lab.connect("ops-1", properties=Properties(topic_alias_maximum=4))
    sub.subscribe(Subscription("fleet/+/telemetry/#", qos=qos))
    plain = lab.connect("ops-2")
    plain.subscribe(Subscription("fleet/+/telemetry/#", qos=qos))
    unit = lab.connect("TRK-1")
    sub.clear()
    plain.clear()
    for i in range(3):
        unit.publish("fleet/TRK-1/telemetry/gps", f"fix-{i}".encode(), qos=qos)
    # The client core resolves the aliases: the application sees every topic in full.
    assert [(m.topic, m.payload) for m in sub.messages] == [
        ("fleet/TRK-1/telemetry/gps", f"fix-{i}".encode()) for i in range(3)
    ]
    assert sub.received.count(b"fleet/TRK-1/telemetry/gps") == 1  # named once, then alias 1
    assert plain.received.count(b"fleet/TRK-1/telemetry/gps") == 3  # no Topic Alias Maximum: no aliases
    assert len(sub.received) < len(plain.received)


def test_topic_aliases_are_per_connection_and_never_for_3_1_1() -> None:
    lab = Lab()
    keep = Properties(topic_alias_maximum=4, session_expiry_interval=600)
    sub = lab.connect("ops-1", clean_start=False, properties=keep)
    sub.subscribe(Subscription("fleet/+/telemetry/#", qos=1))
    old = lab.connect("ops-3", version=V311)
    old.subscribe(Subscription("fleet/+/telemetry/#", qos=1))
    unit = lab.connect("TRK-1")
    unit.publish("fleet/TRK-1/telemetry/gps", b"1", qos=1)
    sub.lose()
    unit.publish("fleet/TRK-1/telemetry/gps", b"2", qos=1)
    back = lab.connect("ops-1", clean_start=False, properties=keep)
    unit.publish("fleet/TRK-1/telemetry/gps", b"3", qos=1)
    # The new connection names the topic again before using its alias ([MQTT-3.3.2-7]).
    assert [(m.topic, m.payload) for m in back.messages] == [
        ("fleet/TRK-1/telemetry/gps", b"2"),
        ("fleet/TRK-1/telemetry/gps", b"3"),
    ]
    assert back.received.count(b"fleet/TRK-1/telemetry/gps") == 1
    assert old.received.count(b"fleet/TRK-1/telemetry/gps") == 3


def test_a_fan_out_to_alias_subscribers_with_different_alias_numbers_resolves_for_each() -> None:
    lab = Lab()
    aliasing = Properties(topic_alias_maximum=4)
    first = lab.connect("ops-1", properties=aliasing)
    first.subscribe("fleet/#")
    lab.connect("TRK-2").publish("fleet/TRK-2/state", b"up")  # ops-1 spends alias 1 on this topic
    second = lab.connect("ops-2", properties=aliasing)
    second.subscribe("fleet/#")
    third = lab.connect("ops-3")
    third.subscribe("fleet/#")
    unit = lab.connect("TRK-1")
    for payload in (b"a", b"b"):
        unit.publish("fleet/TRK-1/telemetry/gps", payload)
    for link in (first, second, third):
        got = [(m.topic, m.payload) for m in link.messages if m.topic.startswith("fleet/TRK-1")]
        assert got == [("fleet/TRK-1/telemetry/gps", b"a"), ("fleet/TRK-1/telemetry/gps", b"b")]
