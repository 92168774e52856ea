"""The broker's hooks for the cluster's backbone (docs/cluster.md, part 2): what is forwarded, what
comes back in, and what the subscription watcher is told."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.broker.message import Message
from gateway.broker.sessions import StoredSubscription
from gateway.broker.state import GroupKey
from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Properties, ProtocolVersion, Publish
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import TRUST_DOMAIN, Lab, lab_peer

V5 = ProtocolVersion.MQTT_5


def _lab() -> tuple[Lab, list[tuple[str, str, int, tuple[GroupKey, ...]]], list[tuple[bool, str, str]]]:
    directory = InMemoryDirectory()
    for unit in ("TRK-1", "TRK-2"):
        directory.enroll(Identity("unit", unit, TRUST_DOMAIN))
    lab = Lab(PolicyEngine(load_policy(None), directory))
    forwarded: list[tuple[str, str, int, tuple[GroupKey, ...]]] = []
    watched: list[tuple[bool, str, str]] = []

    def sink(
        message: Message,
        client_id: str,
        peer: Peer,
        receipt: int | None,
        served: Sequence[GroupKey],
        message_id: str | None,
    ) -> bool:
        forwarded.append((message.topic, client_id, message.qos, tuple(served)))
        return False

    def watcher(added: bool, client_id: str, sub: StoredSubscription) -> None:
        watched.append((added, client_id, sub.plain_filter))

    lab.broker.forward_accepted(sink)
    lab.broker.watch_subscriptions(watcher)
    return lab, forwarded, watched


def test_accepted_client_publishes_are_forwarded_once_denied_and_internal_ones_not() -> None:
    lab, forwarded, _ = _lab()
    truck = lab.connect("TRK-1")
    truck.publish("fleet/TRK-1/telemetry/gps", b"ok", qos=1)
    truck.publish("fleet/TRK-2/telemetry/gps", b"forged", qos=1)  # outside its grants: denied
    lab.apply(lab.broker.publish_internal(Publish("fleet/TRK-1/cmd/mode", b"m", qos=1, retain=True), lab.now))
    assert forwarded == [("fleet/TRK-1/telemetry/gps", "TRK-1", 1, ())]


def test_remote_messages_reach_local_subscribers_through_delivery_decisions_and_go_no_further() -> None:
    lab, forwarded, watched = _lab()
    other = lab.connect("TRK-2")
    other.subscribe("fleet/TRK-2/cmd/#", qos=1)
    assert watched == [(True, "TRK-2", "fleet/TRK-2/cmd/#")]
    props = Properties(content_type="text/plain", user_properties=(("k", "v"),), message_expiry_interval=60)
    lab.apply(
        lab.broker.route_remote(
            [
                ("fleet/TRK-2/cmd/reboot", b"now", 1, False, props, "ops-1"),
                ("fleet/TRK-2/cmd/bad/#", b"x", 1, False, Properties(), "ops-1"),  # not a topic name
            ],
            lab.now,
        )
    )
    lab.pump()
    got = other.messages
    assert [(m.topic, m.payload, m.qos) for m in got] == [("fleet/TRK-2/cmd/reboot", b"now", 1)]
    assert got[0].properties.content_type == "text/plain"
    assert got[0].properties.user_properties == (("k", "v"),)
    assert forwarded == []  # never back out to the backbone
    assert lab.broker.metrics.remote_in == 1
    other.unsubscribe("fleet/TRK-2/cmd/#")
    assert watched[-1] == (False, "TRK-2", "fleet/TRK-2/cmd/#")


def test_a_share_group_with_a_connected_member_here_gets_a_local_message_here_and_is_named_on_it() -> None:
    # While the backbone balances share groups across nodes (NATS queue groups), a message a client
    # sent to this node goes to a member here when one is connected (local first, no crossing), and
    # the backbone is told which groups had it, so that no other node gives it to them again.
    lab, forwarded, _ = _lab()
    lab.broker._st.cluster.groups_elsewhere = lambda: True
    keep = Properties(session_expiry_interval=3600)
    members = [
        lab.connect(f"lab-etl-{i}", peer=lab_peer(), clean_start=False, properties=keep) for i in range(2)
    ]
    for member in members:
        assert member.subscribe("$share/etl/fleet/+/telemetry/#", qos=1).reason_codes == (1,)
    group: GroupKey = ("lab", "etl", "fleet/+/telemetry/#")
    truck = lab.connect("TRK-1")
    for i in range(4):
        truck.publish("fleet/TRK-1/telemetry/gps", str(i).encode(), qos=1)
    assert sorted(p for m in members for p in m.payloads) == [b"0", b"1", b"2", b"3"]  # each once, here
    assert [f[3] for f in forwarded] == [(group,)] * 4
    # No member connected here (both offline, their sessions kept): the node NATS picks delivers it.
    for member in members:
        member.lose()
    forwarded.clear()
    truck.publish("fleet/TRK-1/telemetry/gps", b"later", qos=1)
    assert forwarded == [("fleet/TRK-1/telemetry/gps", "TRK-1", 1, ())]
    # A message from another node reaches a group here only through NATS's queue (route_to_group).
    back = lab.connect("lab-etl-0", peer=lab_peer(), clean_start=False, properties=keep)
    back.messages.clear()
    lab.apply(
        lab.broker.route_remote(
            [("fleet/TRK-2/telemetry/gps", b"remote", 1, False, Properties(), "TRK-2")], lab.now
        )
    )
    lab.pump()
    assert back.payloads == []


def test_without_a_backbone_nothing_is_forwarded_and_the_watcher_sees_existing_subscriptions() -> None:
    lab, forwarded, _ = _lab()
    lab.broker.forward_accepted(None)
    truck = lab.connect("TRK-1")
    truck.subscribe("fleet/TRK-1/cmd/#", qos=1)
    truck.publish("fleet/TRK-1/telemetry/gps", b"ok", qos=1)
    assert forwarded == []
    replayed: list[str] = []
    lab.broker.watch_subscriptions(lambda on, cid, sub: replayed.append(f"{on} {cid} {sub.plain_filter}"))
    assert replayed == ["True TRK-1 fleet/TRK-1/cmd/#"]


def _deferring_lab() -> tuple[Lab, list[int | None]]:
    """A node whose backbone (like JetStream's) acknowledges QoS 1/2 only once the cluster stored them."""
    directory = InMemoryDirectory()
    for unit in ("TRK-1", "TRK-2", "TRK-3"):
        directory.enroll(Identity("unit", unit, TRUST_DOMAIN))
    lab = Lab(PolicyEngine(load_policy(None), directory))
    taken: list[int | None] = []

    def sink(
        message: Message,
        client_id: str,
        peer: Peer,
        receipt: int | None,
        served: Sequence[GroupKey],
        message_id: str | None,
    ) -> bool:
        taken.append(receipt)
        return receipt is not None

    lab.broker.forward_accepted(sink)
    return lab, taken


def test_a_qos1_puback_waits_for_the_cluster_store_and_a_failed_store_is_refused_not_acknowledged() -> None:
    lab, taken = _deferring_lab()
    truck = lab.connect("TRK-1")
    truck.publish("fleet/TRK-1/telemetry/gps", b"one", qos=1)
    truck.publish("fleet/TRK-1/telemetry/gps", b"two", qos=1)
    truck.publish("fleet/TRK-1/telemetry/gps", b"zero", qos=0)
    assert taken == [1, 2, None]
    assert truck.done == []  # routed here, but no PUBACK before the store said yes
    lab.apply(lab.broker.stored([2], [], lab.now))
    lab.pump()
    assert [d.packet_id for d in truck.done] == [2]
    lab.apply(lab.broker.stored([1, 1], [], lab.now))  # a repeated confirmation is ignored
    lab.pump()
    assert sorted(d.packet_id for d in truck.done) == [1, 2]
    truck.publish("fleet/TRK-1/telemetry/gps", b"three", qos=1)
    lab.apply(lab.broker.stored([], [3], lab.now))  # one no store can take (over NATS's max_payload)
    lab.pump()
    assert truck.closed is None  # a 5.0 client is told, and keeps its connection and control channel
    assert [(d.packet_id, d.reason_code) for d in truck.done][-1] == (3, ReasonCode.QUOTA_EXCEEDED)
    # A 3.1.1 client cannot be told: its connection is closed unacknowledged.
    old = lab.connect("TRK-3", version=ProtocolVersion.MQTT_3_1_1)
    old.publish("fleet/TRK-3/telemetry/gps", b"four", qos=1)
    lab.apply(lab.broker.stored([], [4], lab.now))
    lab.pump()
    assert old.closed == "not_stored" and old.done == []  # it resends on its next connection


def test_a_qos2_pubrec_waits_for_the_store_and_a_retransmission_meanwhile_is_not_routed_twice() -> None:
    lab, taken = _deferring_lab()
    sender = lab.connect("TRK-2")
    sender.publish("fleet/TRK-2/telemetry/x", b"m", qos=2)
    assert taken == [1]
    assert sender.done == []
    raw = Publish("fleet/TRK-2/telemetry/x", b"m", qos=2, packet_id=1, dup=True)
    sender.send_raw(encode(raw, V5))  # the client's DUP while the store has not answered
    assert taken == [1]  # not routed (nor forwarded) again
    lab.apply(lab.broker.stored([1], [], lab.now))  # PUBREC now; the client's PUBREL is lost
    sender.drop_output()
    assert b"\x50" in bytes(sender.received)[-4:]  # a PUBREC (type 5) was the last thing sent
    sender.send_raw(encode(raw, V5))  # its DUP after PUBREC: acknowledged again, not routed again
    assert taken == [1]
    assert sender.closed is None


def test_a_stored_message_for_a_session_is_reported_delivered_only_when_the_subscriber_acknowledges() -> None:
    lab, _ = _deferring_lab()
    done: list[int] = []
    lab.broker.watch_deliveries(done.extend)
    lab.broker.deliver_durably({"TRK-2"})
    other = lab.connect("TRK-2", auto_ack=False)
    other.subscribe("fleet/TRK-2/cmd/#", qos=1)
    remote = ("fleet/TRK-2/cmd/reboot", b"now", 1, False, Properties(), "ops-1")
    lab.apply(lab.broker.deliver_stored("TRK-2", [(remote, 7, "id-7", 0)], lab.now))
    assert [m.payload for m in other.messages] == [b"now"]
    nobody = ("fleet/TRK-1/cmd/reboot", b"x", 1, False, Properties(), "ops-1")
    lab.apply(lab.broker.deliver_stored("TRK-2", [(nobody, 8, "id-8", 0)], lab.now))  # not its subscription
    assert done == [8]  # nothing to deliver: the store may forget it at once
    lab.pump()
    assert done == [8]  # received, not acknowledged yet
    other.client.ack(other.messages[0])
    lab.pump()  # the client's PUBACK
    assert done == [8, 7]
    truck = lab.connect("TRK-1")
    truck.publish("fleet/TRK-1/telemetry/gps", b"t", qos=1)  # no one here reads it; nothing reported
    assert done == [8, 7]
