"""Per-identity quotas in the broker core: retained messages per client, subscriptions per policy role."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker import BrokerLimits
from gateway.mqtt.packets import ProtocolVersion
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
