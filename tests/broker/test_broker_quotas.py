"""Per-identity quotas in the broker core: retained messages per client, subscriptions per policy role."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker import BrokerLimits, SubscribeDenied
from gateway.mqtt.packets import ProtocolVersion, Subscription
from gateway.policy.access import CertificateOnlyPolicy
from gateway.policy.decision import Decision, deny
from gateway.policy.peer import Peer
from gateway.stores.broker_store import SqliteBrokerStore
from pki.sqlite import open_database
from tests.broker.lab import Lab

V5, V311 = ProtocolVersion.MQTT_5, ProtocolVersion.MQTT_3_1_1


def test_retained_per_client_quota_answers_0x97_in_5_0_and_frees_on_delete() -> None:
    lab = Lab(limits=BrokerLimits(max_retained_per_client=3))
    greedy = lab.connect("TRK-1")
    for i in range(3):
        greedy.publish(f"fleet/TRK-1/telemetry/r{i}", b"x", qos=1, retain=True)
    greedy.publish("fleet/TRK-1/telemetry/r3", b"x", qos=1, retain=True)
    assert [d.reason_code for d in greedy.done][-4:] == [0, 0, 0, 0x97]
    assert lab.broker.metrics.retained_messages == 3
    greedy.publish("fleet/TRK-1/telemetry/r0", b"newer", qos=1, retain=True)  # replacing is free
    greedy.publish("fleet/TRK-1/telemetry/r1", b"", qos=1, retain=True)  # deleting frees a slot
    greedy.publish("fleet/TRK-1/telemetry/r3", b"x", qos=1, retain=True)
    assert [d.reason_code for d in greedy.done][-3:] == [0, 0, 0]
    other = lab.connect("TRK-2")  # another identity has its own share
    other.publish("fleet/TRK-2/telemetry/r0", b"x", qos=1, retain=True)
    assert other.done[-1].reason_code == 0


def test_the_retained_quota_survives_a_restart(tmp_path: Path) -> None:
    def restarted() -> Lab:
        store = SqliteBrokerStore(open_database(tmp_path / "gateway.db"))
        return Lab(limits=BrokerLimits(max_retained_per_client=2), store=store)

    lab = restarted()
    greedy = lab.connect("TRK-1")
    greedy.publish("fleet/TRK-1/telemetry/r0", b"x", qos=1, retain=True)
    greedy.publish("fleet/TRK-1/telemetry/r1", b"x", qos=1, retain=True)
    lab.broker.shutdown(lab.now)
    lab = restarted()
    greedy = lab.connect("TRK-1")
    greedy.publish("fleet/TRK-1/telemetry/r2", b"x", qos=1, retain=True)  # still two held: refused
    greedy.publish("fleet/TRK-1/telemetry/r0", b"newer", qos=1, retain=True)  # its own: replaced
    assert [d.reason_code for d in greedy.done][-2:] == [0x97, 0]
    greedy.publish("fleet/TRK-1/telemetry/r1", b"", qos=1, retain=True)  # a delete frees a loaded slot
    greedy.publish("fleet/TRK-1/telemetry/r2", b"x", qos=1, retain=True)
    assert [d.reason_code for d in greedy.done][-2:] == [0, 0]


def test_retained_quota_in_3_1_1_routes_without_retaining() -> None:
    lab = Lab(limits=BrokerLimits(max_retained_per_client=1))
    watcher = lab.connect("ops-1")
    watcher.subscribe("fleet/#")
    greedy = lab.connect("TRK-1", version=V311)
    greedy.publish("fleet/TRK-1/telemetry/a", b"1", qos=1, retain=True)
    greedy.publish("fleet/TRK-1/telemetry/b", b"2", qos=1, retain=True)
    assert [m.payload for m in watcher.messages] == [b"1", b"2"]  # 3.1.1 cannot be told no: still routed
    assert lab.broker.metrics.retained_messages == 1
    assert lab.broker.metrics.drops["retained_quota"] == 1


@pytest.mark.parametrize("cap", [2, None])
def test_the_policy_subscription_cap_lowers_the_broker_limit(cap: int | None) -> None:
    from gateway.policy.access import CertificateOnlyPolicy

    class Capped(CertificateOnlyPolicy):
        def max_subscriptions_for(self, peer: object) -> int | None:
            return cap

    lab = Lab(Capped(), BrokerLimits(max_subscriptions=4))
    link = lab.connect("ops-1")
    suback = link.subscribe(*[f"fleet/TRK-{i}/state" for i in range(6)], qos=0)
    expected = [0] * (cap or 4) + [0x97] * (6 - (cap or 4))
    assert list(suback.reason_codes) == expected


class CountingPolicy(CertificateOnlyPolicy):
    """The built-in floor, counting how many subscribe decisions the broker asked for."""

    def __init__(self) -> None:
        self.subscribe_decisions = 0

    def decide_subscribe(self, peer: Peer, topic_filter: str, now: float) -> Decision:
        self.subscribe_decisions += 1
        if topic_filter.startswith("x/"):
            return deny("filter_not_granted", "test/deny_x")
        return super().decide_subscribe(peer, topic_filter, now)


@pytest.mark.parametrize("version", [V311, V5])
def test_a_huge_subscribe_is_judged_only_up_to_the_cap(version: ProtocolVersion) -> None:
    policy = CountingPolicy()
    lab = Lab(policy, BrokerLimits(max_subscriptions=50, max_violations=1000))
    link = lab.connect("ops-1", version=version)
    suback = link.subscribe(*(Subscription(f"o/{i}") for i in range(26_000)))
    assert policy.subscribe_decisions == 50
    assert len(suback.reason_codes) == 26_000  # §3.8.4: one code per filter, whatever happens
    assert suback.reason_codes[:50] == (0,) * 50
    assert set(suback.reason_codes[50:]) == {0x97 if version == V5 else 0x80}
    assert link.closed is None


@pytest.mark.parametrize("version", [V311, V5])
def test_judging_stops_at_the_violation_limit_and_the_connection_is_cut(version: ProtocolVersion) -> None:
    policy = CountingPolicy()
    lab = Lab(policy, BrokerLimits(max_subscriptions=100, max_violations=20))
    link = lab.connect("ops-1", version=version)
    link.publish("x/denied-by-grants-too", b"")  # the floor allows it; just a live connection
    link.client.subscribe(*(Subscription(f"x/{i}") for i in range(26_000)))
    lab.pump()
    assert policy.subscribe_decisions == 20
    assert link.subacks == []  # a connection being closed gets no 26,000-code SUBACK
    assert link.closed == "too_many_violations"
    if version == V5:
        assert link.disconnect is not None and link.disconnect.reason_code == 0x87
    events = [e for e in lab.broker.drain_events() if isinstance(e, SubscribeDenied)]
    assert len(events) == 20


@pytest.mark.parametrize("version", [V311, V5])
def test_the_violation_limit_counts_earlier_denials_on_the_connection(version: ProtocolVersion) -> None:
    policy = CountingPolicy()
    lab = Lab(policy, BrokerLimits(max_subscriptions=100, max_violations=5))
    link = lab.connect("ops-1", version=version)
    suback = link.subscribe(Subscription("x/1"), Subscription("x/2"), Subscription("ok/1"))
    assert suback.reason_codes[2] == 0 and link.closed is None
    link.client.subscribe(*(Subscription(f"x/{i}") for i in range(100)))
    lab.pump()
    assert policy.subscribe_decisions == 3 + 3  # two earlier denials: three more reach the limit of 5
    assert link.closed == "too_many_violations"


def test_an_unsubscribe_validates_at_most_the_cap_and_answers_every_filter() -> None:
    lab = Lab(limits=BrokerLimits(max_subscriptions=3))
    link = lab.connect("ops-1")
    link.subscribe(Subscription("keep/1"), Subscription("drop/1"))
    filters = ["a/#b", "bad/#/x", "fine/+", "also#bad", "drop/1", *(f"n/{i}" for i in range(1000)), "#b"]
    unsuback = link.unsubscribe(*filters)
    assert len(unsuback.reason_codes) == len(filters)
    # The first three filters without a subscription are validated; past that an absent filter is
    # only looked up (0x11, true whatever its syntax); a present one is removed wherever it stands.
    assert unsuback.reason_codes[:5] == (0x8F, 0x8F, 0x11, 0x11, 0x00)
    assert set(unsuback.reason_codes[5:]) == {0x11}
    assert link.subscribe(Subscription("keep/2")).reason_codes == (0,)  # drop/1 freed its slot
