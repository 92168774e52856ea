"""The policy seam: every connect, subscribe, publish and delivery is asked, and asked again on change."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.broker import BrokerLimits, DeliveryDenied, PublishDenied, SubscribeDenied
from gateway.mqtt.packets import Connect, Properties, ProtocolVersion, Publish, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.access import CertificateOnlyPolicy
from gateway.policy.decision import Decision, allow, deny
from gateway.policy.peer import Peer
from tests.broker.lab import V5, V311, VERSIONS, Lab

Rule = Callable[[str, str], bool]  # (client identity id, topic or filter) -> denied?


class ScriptedPolicy(CertificateOnlyPolicy):
    """The certificate floor plus denials a test switches on and off."""

    def __init__(self) -> None:
        self.connect_denied: set[str] = set()
        self.publish_denied: Rule = lambda who, topic: False
        self.subscribe_denied: Rule = lambda who, topic: False
        self.delivery_denied: Rule = lambda who, topic: False

    @staticmethod
    def _who(peer: Peer) -> str:
        return peer.identity.id if peer.identity else "lab"

    def decide_connect(self, peer: Peer, connect: Connect, now: float) -> Decision:
        if self._who(peer) in self.connect_denied:
            return deny("identity_quarantined", "test/connect")
        return super().decide_connect(peer, connect, now)

    def decide_publish(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        if self.publish_denied(self._who(peer), topic):
            return deny("topic_outside_namespace", "test/publish")
        return allow("granted", "test/publish")

    def decide_subscribe(self, peer: Peer, topic_filter: str, now: float) -> Decision:
        if self.subscribe_denied(self._who(peer), topic_filter):
            return deny("filter_not_granted", "test/subscribe")
        return allow("granted", "test/subscribe")

    def decide_delivery(self, peer: Peer, topic: str, now: float) -> Decision:
        if self.delivery_denied(self._who(peer), topic):
            return deny("quarantined_data", "test/delivery")
        return allow("granted", "test/delivery")


def only_own_namespace(who: str, topic: str) -> bool:
    return not topic.startswith(f"fleet/{who}/")


@pytest.mark.parametrize("version", VERSIONS)
def test_denied_publish_is_acked_and_dropped_and_counted(version: ProtocolVersion) -> None:
    policy = ScriptedPolicy()
    policy.publish_denied = only_own_namespace
    lab = Lab(policy)
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    unit = lab.connect("TRK-1", version=version)
    unit.publish("fleet/TRK-2/telemetry/gps", b"spoof", qos=1)
    unit.publish("fleet/TRK-2/telemetry/gps", b"spoof2", qos=2)
    unit.publish("fleet/TRK-2/telemetry/gps", b"spoof0", qos=0)
    unit.publish("fleet/TRK-1/telemetry/gps", b"ok", qos=1)
    assert ops.payloads == [b"ok"]
    expected = ReasonCode.NOT_AUTHORIZED if version == V5 else 0  # 3.1.1 cannot say no
    assert [d.reason_code for d in unit.done] == [expected, expected, 0]
    assert unit.closed is None and not unit.client.pending
    metrics = lab.broker.metrics
    assert metrics.drops["publish_denied"] == 3
    assert metrics.decisions[("publish", "deny", "topic_outside_namespace")] == 3
    denied = [e for e in lab.broker.drain_events() if isinstance(e, PublishDenied)]
    assert (denied[0].topic, denied[0].rule) == ("fleet/TRK-2/telemetry/gps", "test/publish")


@pytest.mark.parametrize("version", VERSIONS)
def test_too_many_violations_disconnect(version: ProtocolVersion) -> None:
    policy = ScriptedPolicy()
    policy.publish_denied = only_own_namespace
    lab = Lab(policy, BrokerLimits(max_violations=3))
    unit = lab.connect("TRK-1", version=version)
    for _ in range(2):
        unit.publish("fleet/TRK-9/x", b"", qos=1)
    assert unit.closed is None
    unit.publish("fleet/TRK-9/x", b"", qos=1)
    assert unit.closed == "too_many_violations"
    if version == V5:
        assert unit.disconnect is not None
        assert unit.disconnect.reason_code == ReasonCode.NOT_AUTHORIZED
        assert unit.disconnect.properties.reason_string


@pytest.mark.parametrize("version", VERSIONS)
def test_disconnect_where_cuts_live_sessions(version: ProtocolVersion) -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/+/state")
    revoked = lab.connect("TRK-1", version=version, will=Will("fleet/TRK-1/state", b"gone"))
    bystander = lab.connect("TRK-2", version=version)
    actions = lab.broker.disconnect_where(
        lambda peer: peer.identity is not None and peer.identity.id == "TRK-1",
        ReasonCode.NOT_AUTHORIZED,
        "certificate revoked",
        lab.now,
    )
    lab.apply(actions)
    assert revoked.closed == "certificate_revoked" and bystander.closed is None
    if version == V5:
        assert revoked.disconnect is not None
        assert revoked.disconnect.reason_code == ReasonCode.NOT_AUTHORIZED
        assert revoked.disconnect.properties.reason_string == "certificate revoked"
    else:
        assert revoked.disconnect is None
    assert ops.payloads == [b"gone"]  # an ended connection's will, still subject to decide_publish


def test_reauthorize_drops_subscriptions_the_policy_now_denies() -> None:
    policy = ScriptedPolicy()
    lab = Lab(policy)
    partner = lab.connect("acme")
    partner.subscribe("fleet/+/telemetry/gps", "fleet/+/diag/#")
    pub = lab.connect("TRK-1")
    pub.publish("fleet/TRK-1/diag/x", b"1")
    policy.subscribe_denied = lambda who, f: who == "acme" and "/diag/" in f
    lab.apply(lab.broker.reauthorize(lab.now))
    pub.publish("fleet/TRK-1/diag/x", b"2")
    pub.publish("fleet/TRK-1/telemetry/gps", b"3")
    assert partner.payloads == [b"1", b"3"]
    revoked = [e for e in lab.broker.drain_events() if isinstance(e, SubscribeDenied)]
    assert [(e.topic_filter, e.revoked) for e in revoked] == [("fleet/+/diag/#", True)]
    assert lab.broker.metrics.subscriptions_revoked == 1
    assert {s.client_id: s for s in lab.broker.sessions()}["acme"].subscriptions == ("fleet/+/telemetry/gps",)


def test_reauthorize_disconnects_a_session_that_may_no_longer_connect() -> None:
    policy = ScriptedPolicy()
    lab = Lab(policy)
    unit = lab.connect("TRK-1")
    other = lab.connect("TRK-2", version=V311)
    policy.connect_denied = {"TRK-1", "TRK-2"}
    lab.apply(lab.broker.reauthorize(lab.now))
    assert unit.closed == "not_authorized" and other.closed == "not_authorized"
    assert unit.disconnect is not None and unit.disconnect.reason_code == ReasonCode.NOT_AUTHORIZED
    assert unit.disconnect.properties.reason_string == "identity_quarantined"


def test_publish_internal_is_retained_and_delivered_to_later_subscribers() -> None:
    lab = Lab()
    live = lab.connect("TRK-1")
    live.subscribe("fleet/TRK-1/cmd/#", qos=1)
    mode = Publish("fleet/TRK-1/cmd/mode", b'{"mode":"diagnostic"}', qos=1, retain=True, packet_id=1)
    lab.apply(lab.broker.publish_internal(mode, lab.now))
    lab.pump()
    assert live.payloads == [b'{"mode":"diagnostic"}']
    live.lose()
    later = lab.connect("TRK-1")
    later.subscribe("fleet/TRK-1/cmd/#", qos=1)
    (msg,) = later.messages
    assert (msg.payload, msg.retain, msg.qos) == (b'{"mode":"diagnostic"}', True, 1)


def test_publish_internal_still_goes_through_decide_delivery() -> None:
    policy = ScriptedPolicy()
    policy.delivery_denied = lambda who, topic: who == "acme"
    lab = Lab(policy)
    acme = lab.connect("acme")
    acme.subscribe("fleet/#")
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    lab.apply(lab.broker.publish_internal(Publish("fleet/TRK-1/cmd/mode", b"m"), lab.now))
    assert ops.payloads == [b"m"] and acme.messages == []


def test_delivery_denial_stops_a_retained_message_on_subscribe() -> None:
    policy = ScriptedPolicy()
    policy.delivery_denied = lambda who, topic: who == "acme" and topic.endswith("/diag/dtc")
    lab = Lab(policy)
    unit = lab.connect("TRK-1")
    unit.publish("fleet/TRK-1/diag/dtc", b"P0420", retain=True)
    unit.publish("fleet/TRK-1/telemetry/gps", b"fix", retain=True)
    acme = lab.connect("acme")
    acme.subscribe("fleet/#")
    assert acme.payloads == [b"fix"]
    denied = [e for e in lab.broker.drain_events() if isinstance(e, DeliveryDenied)]
    assert [(e.client_id, e.topic) for e in denied] == [("acme", "fleet/TRK-1/diag/dtc")]
    assert lab.broker.metrics.drops["delivery_denied"] == 1


def test_queued_messages_are_rechecked_when_the_session_resumes() -> None:
    policy = ScriptedPolicy()
    lab = Lab(policy)
    keep = Properties(session_expiry_interval=600)
    acme = lab.connect("acme", clean_start=False, properties=keep)
    acme.subscribe("fleet/#", qos=1)
    acme.lose()
    unit = lab.connect("TRK-1")
    unit.publish("fleet/TRK-1/telemetry/gps", b"queued", qos=1)
    policy.delivery_denied = lambda who, topic: who == "acme"  # quarantine happened meanwhile
    back = lab.connect("acme", clean_start=False, properties=keep)
    assert back.connack.session_present and back.messages == []


def test_resumed_session_subscriptions_are_rechecked() -> None:
    policy = ScriptedPolicy()
    lab = Lab(policy)
    keep = Properties(session_expiry_interval=600)
    acme = lab.connect("acme", clean_start=False, properties=keep)
    acme.subscribe("fleet/#")
    acme.lose()
    policy.subscribe_denied = lambda who, f: who == "acme"
    back = lab.connect("acme", clean_start=False, properties=keep)
    lab.connect("TRK-1").publish("fleet/TRK-1/x", b"x")
    assert back.connack.session_present and back.messages == []


def test_a_will_is_decided_again_when_it_fires() -> None:
    policy = ScriptedPolicy()
    lab = Lab(policy)
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    unit = lab.connect("TRK-1", will=Will("fleet/TRK-1/state", b"offline"))
    policy.publish_denied = lambda who, topic: who == "TRK-1"  # quarantined since it connected
    unit.lose()
    assert ops.messages == []
    assert lab.broker.metrics.drops["will_denied"] == 1


def test_subscribe_denials_count_as_violations() -> None:
    policy = ScriptedPolicy()
    policy.subscribe_denied = lambda who, f: f == "#"
    lab = Lab(policy, BrokerLimits(max_violations=2))
    link = lab.connect("acme")
    assert link.subscribe("#", "fleet/+/telemetry/gps").reason_codes == (0x87, 0)
    link.subscribe("#")
    assert link.closed == "too_many_violations"
