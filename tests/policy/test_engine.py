"""PolicyEngine decisions as tables: who, what, → verdict, reason, rule. Time is an argument."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gateway.mqtt.packets import Connect
from gateway.policy.access import AccessPolicy
from gateway.policy.decision import Decision
from gateway.policy.directory import IdentityState, InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.policy.rules import policy_from_mapping
from gateway.stores.policy_file import EMBEDDED_SOURCE, load_policy
from pki.names import Identity

T0 = 1_700_000_000.0
TD = "fleet.local"
POLICY = load_policy(None)
EMBEDDED = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"

TRK1 = Identity("unit", "TRK-1", TD)
TRK2 = Identity("unit", "TRK-2", TD)
ALICE = Identity("operator", "alice", TD)  # role ops
SAM = Identity("operator", "sam", TD)  # role security
BOB = Identity("operator", "bob", TD)  # role auditor
NOROLE = Identity("operator", "nobody", TD)  # no role in the registry
DISPATCH = Identity("service", "dispatch", TD)
BILLING = Identity("service", "billing", TD)  # a service the policy does not list
ACME = Identity("partner", "ACME", TD)  # tier 3
BIGCO = Identity("partner", "BIGCO", TD)  # tier 1
NOTIER = Identity("partner", "NOTIER", TD)
GHOST = Identity("unit", "TRK-404", TD)  # not in the registry
REVOKED = Identity("unit", "TRK-666", TD)
QUARANTINED = Identity("unit", "TRK-Q", TD)
# A registry written before ids were unique across kinds: a partner and an operator named like units.
PARTNER_TRK1 = Identity("partner", "TRK-1", TD)
OPERATOR_TRK2 = Identity("operator", "TRK-2", TD)
REVOKED_SERIAL = 0xBAD


@dataclass
class World:
    directory: InMemoryDirectory = field(default_factory=InMemoryDirectory)

    def __post_init__(self) -> None:
        d = self.directory
        for who in (TRK1, TRK2, DISPATCH, BILLING, NOTIER, NOROLE):
            d.enroll(who)
        d.enroll(ALICE, role="ops")
        d.enroll(SAM, role="security")
        d.enroll(BOB, role="auditor")
        d.enroll(ACME, tier=3)
        d.enroll(PARTNER_TRK1, tier=1)
        d.enroll(OPERATOR_TRK2)
        d.enroll(BIGCO, tier=1)
        d.enroll(REVOKED)
        d.revoke_identity(REVOKED)
        d.put(QUARANTINED, IdentityState("quarantined", quarantined=True, quarantine_reason="flood"))
        d.revoke_certificate(REVOKED_SERIAL)
        self.engine = PolicyEngine(POLICY, d)


def peer(who: Identity | None, serial: int = 0x1001, not_after: float = T0 + 86_400) -> Peer:
    return Peer("10.0.0.7:40000", who, certificate_serial=serial, certificate_not_after=not_after)


def publish(
    engine: AccessPolicy, who: Identity | None, topic: str, size: int = 10, now: float = T0
) -> Decision:
    return engine.decide_publish(peer(who), topic, size, 1, False, now)


def brief(decision: Decision) -> tuple[str, str, str]:
    return (decision.verdict.value, decision.reason, decision.rule)


@pytest.fixture
def world() -> World:
    return World()


CONNECTS = [
    (TRK1, "TRK-1", {}, ("allow", "connect_allowed", "unit")),
    (TRK1, "TRK-2", {}, ("deny", "client_id_mismatch", "builtin/client_id_binding")),
    (GHOST, "TRK-404", {}, ("deny", "unknown_identity", "registry/identity")),
    (REVOKED, "TRK-666", {}, ("deny", "identity_revoked", "registry/identity")),
    (TRK1, "TRK-1", {"serial": REVOKED_SERIAL}, ("deny", "certificate_revoked", "registry/certificate")),
    (TRK1, "TRK-1", {"not_after": T0 - 1}, ("deny", "certificate_expired", "builtin/certificate_validity")),
    (TRK1, "TRK-1", {"not_after": T0}, ("allow", "connect_allowed", "unit")),  # valid through not_after
    (NOTIER, "NOTIER", {}, ("deny", "partner_without_tier", "roles/partner")),
    (ACME, "ACME", {}, ("allow", "connect_allowed", "partner/tier3")),
    (QUARANTINED, "TRK-Q", {}, ("allow", "connect_allowed", "quarantine/unit")),
    (BILLING, "billing", {}, ("allow", "connect_allowed", "service/billing")),
    # lab clients (the plaintext lab listener): ids start with "lab-", so no certificate identity's session
    (None, "lab-suite-1", {}, ("allow", "lab_client", "builtin/lab_role")),
    (None, "TRK-1", {}, ("deny", "client_id_not_lab", "builtin/lab_role")),
    (None, "anything", {}, ("deny", "client_id_not_lab", "builtin/lab_role")),
    # Its own client id is a unit's: refused, so it can never sit on that unit's session.
    (PARTNER_TRK1, "TRK-1", {}, ("deny", "client_id_held_by_unit", "builtin/client_id_binding")),
    (OPERATOR_TRK2, "TRK-2", {}, ("deny", "client_id_held_by_unit", "builtin/client_id_binding")),
]


@pytest.mark.parametrize(("who", "client_id", "cert", "expected"), CONNECTS)
def test_connect(
    world: World, who: Identity | None, client_id: str, cert: dict[str, float], expected: tuple[str, str, str]
) -> None:
    p = peer(who, **cert)  # type: ignore[arg-type]
    assert brief(world.engine.decide_connect(p, Connect(client_id=client_id), T0)) == expected


PUBLISHES = [
    (TRK1, "fleet/TRK-1/telemetry/gps", ("allow", "publish_granted", "unit/publish/0")),
    (TRK1, "fleet/TRK-1/state", ("allow", "publish_granted", "unit/publish/2")),
    (TRK1, "fleet/TRK-2/telemetry/gps", ("deny", "topic_outside_namespace", "unit/publish")),
    (TRK1, "fleet/TRK-2/control/brake/ack", ("deny", "topic_outside_namespace", "unit/publish")),
    (TRK1, "fleet/TRK-1/cmd/reboot", ("deny", "topic_not_granted", "unit/publish")),
    (TRK1, "elsewhere/x", ("deny", "topic_not_granted", "unit/publish")),
    (TRK1, "$SYS/x", ("deny", "reserved_topic", "builtin/dollar_topics")),
    (QUARANTINED, "fleet/TRK-Q/telemetry/gps", ("deny", "quarantined", "quarantine/unit")),
    (QUARANTINED, "fleet/TRK-Q/state", ("deny", "quarantined", "quarantine/unit")),
    (QUARANTINED, "fleet/TRK-Q/diag/can", ("allow", "publish_granted", "quarantine/unit/publish/0")),
    (QUARANTINED, "fleet/TRK-Q/cmd/mode/ack", ("allow", "publish_granted", "quarantine/unit/publish/1")),
    (QUARANTINED, "fleet/TRK-Q/control/brake/ack", ("allow", "publish_granted", "unit/publish/4")),
    (QUARANTINED, "fleet/TRK-Q/control/brake", ("deny", "topic_not_granted", "unit/publish")),
    (QUARANTINED, "fleet/TRK-1/telemetry/gps", ("deny", "topic_outside_namespace", "unit/publish")),
    (DISPATCH, "fleet/TRK-1/control/brake", ("allow", "publish_granted", "service/dispatch/publish/0")),
    (DISPATCH, "fleet/TRK-1/telemetry/gps", ("deny", "topic_not_granted", "service/dispatch/publish")),
    (BILLING, "fleet/TRK-1/cmd/x", ("deny", "topic_not_granted", "service/billing/publish")),
    (ALICE, "fleet/TRK-1/cmd/reboot", ("allow", "publish_granted", "operator/ops/publish/0")),
    (SAM, "fleet/TRK-1/cmd/reboot", ("allow", "publish_granted", "operator/security/publish/0")),
    # An auditor reads and nothing else; an operator the registry gives no role gets nothing at all.
    (BOB, "fleet/TRK-1/cmd/immobilise", ("deny", "topic_not_granted", "operator/auditor/publish")),
    (BOB, "fleet/TRK-1/control/brake", ("deny", "topic_not_granted", "operator/auditor/publish")),
    (NOROLE, "fleet/TRK-1/cmd/reboot", ("deny", "topic_not_granted", "operator/none/publish")),
    (ACME, "fleet/TRK-1/telemetry/eta", ("deny", "topic_not_granted", "partner/tier3/publish")),
    (GHOST, "fleet/TRK-404/state", ("deny", "unknown_identity", "registry/identity")),
    (REVOKED, "fleet/TRK-666/state", ("deny", "identity_revoked", "registry/identity")),
    (None, "anything/at/all", ("allow", "builtin_floor", "builtin/floor")),
    (None, "$SYS/x", ("deny", "reserved_topic", "builtin/dollar_topics")),
    (None, "fleet/TRK-1/control/brake/set", ("deny", "lab_forbidden_topic", "builtin/lab_role")),
    (None, "fleet/TRK-1/control", ("deny", "lab_forbidden_topic", "builtin/lab_role")),
    (None, "fleet/TRK-1/telemetry/gps", ("allow", "builtin_floor", "builtin/floor")),
    # The mode command is the gateway's alone, whatever a grant (fleet/+/cmd/#) says, for every kind.
    (ALICE, "fleet/TRK-1/cmd/mode", ("deny", "reserved_for_gateway", "builtin/gateway_mode_command")),
    (DISPATCH, "fleet/TRK-1/cmd/mode", ("deny", "reserved_for_gateway", "builtin/gateway_mode_command")),
    (TRK1, "fleet/TRK-1/cmd/mode", ("deny", "reserved_for_gateway", "builtin/gateway_mode_command")),
    (None, "fleet/TRK-1/cmd/mode", ("deny", "reserved_for_gateway", "builtin/gateway_mode_command")),
    (DISPATCH, "fleet/TRK-1/cmd/reroute", ("allow", "publish_granted", "service/dispatch/publish/1")),
    (ALICE, "fleet/TRK-1/cmd/mode/x", ("allow", "publish_granted", "operator/ops/publish/0")),  # not it
    (TRK1, "fleet/TRK-1/cmd/mode/ack", ("allow", "publish_granted", "unit/publish/3")),
]


@pytest.mark.parametrize(("who", "topic", "expected"), PUBLISHES)
def test_publish(world: World, who: Identity | None, topic: str, expected: tuple[str, str, str]) -> None:
    assert brief(publish(world.engine, who, topic)) == expected


def test_a_topic_asked_again_gets_the_same_answer(world: World) -> None:
    """The engine remembers the checks that depend on the topic and the grants alone (`$`-topics,
    the mode command, grants, quarantine, the control lane) per identity: asked again, in another
    order, and after more topics than it remembers, every row still gets the answer of the table."""
    for round_ in range(3):
        now = T0 + 60 * round_  # a minute apart: no row is refused for its rate
        rows = PUBLISHES if round_ % 2 == 0 else PUBLISHES[::-1]
        for who, topic, expected in rows:
            assert brief(publish(world.engine, who, topic, now=now)) == expected, (who, topic)
        for n in range(300):  # more than the memo holds: it is emptied, never wrong
            assert not publish(world.engine, TRK1, f"elsewhere/{n}", now=now).allowed


SUBSCRIBES = [
    (TRK1, "fleet/TRK-1/cmd/#", ("allow", "subscribe_granted", "unit/subscribe/0")),
    (TRK1, "fleet/TRK-1/control/+", ("allow", "subscribe_granted", "unit/subscribe/1")),
    (TRK1, "$share/trucks/fleet/TRK-1/cmd/#", ("allow", "subscribe_granted", "unit/subscribe/0")),
    (TRK1, "#", ("deny", "wildcard_overreach", "unit/subscribe")),
    (TRK1, "fleet/+/cmd/#", ("deny", "wildcard_overreach", "unit/subscribe")),
    (TRK1, "fleet/+/telemetry/#", ("deny", "filter_not_granted", "unit/subscribe")),
    (TRK1, "$SYS/#", ("deny", "reserved_topic", "builtin/dollar_topics")),
    (TRK1, "$share/g/$SYS/#", ("deny", "reserved_topic", "builtin/dollar_topics")),
    (TRK1, "fleet/TRK-2/cmd/#", ("deny", "topic_outside_namespace", "unit/subscribe")),
    (TRK1, "fleet/TRK-1/telemetry/#", ("deny", "filter_not_granted", "unit/subscribe")),
    (TRK1, "fleet/#/x", ("deny", "invalid_filter", "builtin/topic_filter")),
    (QUARANTINED, "fleet/TRK-Q/cmd/#", ("allow", "subscribe_granted", "unit/subscribe/0")),
    # partners see unit data only through their tier's views, never raw unit topics
    (ACME, "views/3/fleet/+/eta", ("allow", "subscribe_granted", "partner/tier3/subscribe/0")),
    (ACME, "views/+/#", ("deny", "wildcard_overreach", "partner/tier3/subscribe")),
    (ACME, "views/1/#", ("deny", "filter_not_granted", "partner/tier3/subscribe")),
    (ACME, "fleet/+/telemetry/eta", ("deny", "filter_not_granted", "partner/tier3/subscribe")),
    (BIGCO, "views/1/#", ("allow", "subscribe_granted", "partner/tier1/subscribe/0")),
    (BIGCO, "fleet/+/telemetry/#", ("deny", "filter_not_granted", "partner/tier1/subscribe")),
    (ALICE, "$SYS/#", ("deny", "filter_not_granted", "operator/ops/subscribe")),  # operators: by grant
    (BOB, "fleet/+/telemetry/#", ("allow", "subscribe_granted", "operator/auditor/subscribe/0")),
    (BOB, "fleet/+/cmd/#", ("allow", "subscribe_granted", "operator/auditor/subscribe/3")),
    (NOROLE, "fleet/+/telemetry/#", ("deny", "filter_not_granted", "operator/none/subscribe")),
    (DISPATCH, "$share/d/fleet/+/control/#", ("allow", "subscribe_granted", "service/dispatch/subscribe/1")),
    (None, "#", ("allow", "builtin_floor", "builtin/floor")),  # granted; deliveries are filtered
    (None, "fleet/+/control/#", ("deny", "lab_forbidden_topic", "builtin/lab_role")),
    (None, "$share/g/fleet/TRK-1/cmd/mode", ("deny", "lab_forbidden_topic", "builtin/lab_role")),
    (None, "fleet/TRK-1/+", ("allow", "builtin_floor", "builtin/floor")),
]


@pytest.mark.parametrize(("who", "topic_filter", "expected"), SUBSCRIBES)
def test_subscribe(
    world: World, who: Identity | None, topic_filter: str, expected: tuple[str, str, str]
) -> None:
    assert brief(world.engine.decide_subscribe(peer(who), topic_filter, T0)) == expected


DELIVERIES = [
    (TRK1, "fleet/TRK-1/cmd/reboot", ("allow", "delivery_granted", "unit/subscribe/0")),
    (TRK1, "fleet/TRK-2/cmd/reboot", ("deny", "topic_not_granted", "unit/subscribe")),
    (TRK1, "$SYS/uptime", ("deny", "reserved_topic", "builtin/dollar_topics")),
    (QUARANTINED, "fleet/TRK-Q/cmd/mode", ("allow", "delivery_granted", "unit/subscribe/0")),
    (QUARANTINED, "fleet/TRK-Q/control/brake", ("allow", "delivery_granted", "unit/subscribe/1")),
    (ACME, "views/3/fleet/u-1/eta", ("allow", "delivery_granted", "partner/tier3/subscribe/0")),
    (ACME, "views/1/fleet/TRK-1/eta", ("deny", "topic_not_granted", "partner/tier3/subscribe")),
    (ACME, "fleet/TRK-1/telemetry/eta", ("deny", "topic_not_granted", "partner/tier3/subscribe")),
    (REVOKED, "fleet/TRK-666/cmd/x", ("deny", "identity_revoked", "registry/identity")),
    (None, "x/y", ("allow", "builtin_floor", "builtin/floor")),
    (None, "fleet/TRK-1/control/brake", ("deny", "lab_forbidden_topic", "builtin/lab_role")),
    (None, "fleet/TRK-1/cmd/mode", ("deny", "lab_forbidden_topic", "builtin/lab_role")),
]


@pytest.mark.parametrize(("who", "topic", "expected"), DELIVERIES)
def test_delivery(world: World, who: Identity | None, topic: str, expected: tuple[str, str, str]) -> None:
    assert brief(world.engine.decide_delivery(peer(who), topic, T0)) == expected


def test_a_delivery_asked_again_gets_the_same_answer(world: World) -> None:
    # The engine remembers what depends on the topic and the grants alone per identity, as for
    # publishes: asked again, in another order, after more topics than it remembers and after a
    # change it was told of, every answer is the one a fresh judgement gives.
    for rows in (DELIVERIES, DELIVERIES[::-1], DELIVERIES):
        for who, topic, expected in rows:
            assert brief(world.engine.decide_delivery(peer(who), topic, T0)) == expected, (who, topic)
    for n in range(17_000):
        assert world.engine.decide_delivery(peer(TRK1), f"fleet/TRK-1/cmd/{n}", T0).allowed
    tier1 = "views/1/fleet/TRK-1/eta"
    assert not world.engine.decide_delivery(peer(ACME), tier1, T0).allowed
    world.directory.set_tier(ACME, 1)
    world.engine.invalidate(ACME)
    assert world.engine.decide_delivery(peer(ACME), tier1, T0).rule == "partner/tier1/subscribe/0"


def test_delivery_to_a_restored_session_needs_no_certificate_facts(world: World) -> None:
    restored = Peer("", TRK1)  # what the broker rebuilds from disk, and keeps for an offline session
    assert world.engine.decide_delivery(restored, "fleet/TRK-1/cmd/x", T0).allowed


def test_a_live_peer_with_an_expired_certificate_receives_nothing() -> None:
    world = World()
    engine = PolicyEngine(POLICY, world.directory, clock_skew_tolerance=60)
    lapsed = peer(TRK1, not_after=T0 - 10)  # still inside the 60 s grace
    assert engine.decide_delivery(lapsed, "fleet/TRK-1/cmd/x", T0).allowed
    assert engine.certificate_deadline(lapsed) == T0 + 50
    assert brief(engine.decide_delivery(lapsed, "fleet/TRK-1/cmd/x", T0 + 51)) == (
        "deny",
        "certificate_expired",
        "builtin/certificate_validity",
    )
    assert engine.decide_publish(lapsed, "fleet/TRK-1/state", 1, 0, False, T0 + 51).reason == (
        "certificate_expired"
    )
    assert engine.certificate_deadline(Peer("", TRK1)) is None


class TestLimits:
    def test_message_rate_burst_then_refill(self, world: World) -> None:
        topic = "fleet/TRK-1/telemetry/gps"
        assert all(publish(world.engine, TRK1, topic).allowed for _ in range(100))  # burst 100
        assert brief(publish(world.engine, TRK1, topic)) == (
            "deny",
            "rate_limited",
            "unit/limits/messages_per_second",
        )
        assert publish(world.engine, TRK1, topic, now=T0 + 0.0625).allowed  # 20/s: a token per 50 ms
        assert not publish(world.engine, TRK1, topic, now=T0 + 0.0625).allowed
        assert sum(publish(world.engine, TRK1, topic, now=T0 + 1.0625).allowed for _ in range(30)) == 20

    def test_byte_rate_counts_payload_sizes(self, world: World) -> None:
        topic = "fleet/TRK-1/diag/dump"
        for _ in range(4):  # 4 x 64 KiB = one second of 256 KiB/s
            assert publish(world.engine, TRK1, topic, size=65536).allowed
        assert publish(world.engine, TRK1, topic, size=1).rule == "unit/limits/bytes_per_second"
        assert publish(world.engine, TRK1, topic, size=65536, now=T0 + 0.25).allowed

    def test_payload_too_large(self, world: World) -> None:
        topic = "fleet/TRK-1/diag/dump"
        assert publish(world.engine, TRK1, topic, size=65536).allowed
        assert brief(publish(world.engine, TRK1, topic, size=65537)) == (
            "deny",
            "payload_too_large",
            "unit/limits/max_payload",
        )

    def test_refused_publishes_spend_no_tokens(self, world: World) -> None:
        for _ in range(500):
            assert (
                publish(world.engine, TRK1, "fleet/TRK-2/telemetry/gps").reason == "topic_outside_namespace"
            )
        assert all(publish(world.engine, TRK1, "fleet/TRK-1/state").allowed for _ in range(100))

    def test_buckets_are_per_identity(self, world: World) -> None:
        for _ in range(100):
            publish(world.engine, TRK1, "fleet/TRK-1/state")
        assert not publish(world.engine, TRK1, "fleet/TRK-1/state").allowed
        assert publish(world.engine, TRK2, "fleet/TRK-2/state").allowed

    def test_rates_are_limits_not_violations(self, world: World) -> None:
        topic = "fleet/TRK-1/telemetry/gps"
        for _ in range(100):
            publish(world.engine, TRK1, topic)
        limited = publish(world.engine, TRK1, topic)
        assert limited.reason == "rate_limited" and not limited.violation
        assert not publish(world.engine, TRK1, "fleet/TRK-1/diag/dump", size=300_000).allowed
        world.engine.throttle(TRK1, 0.1, T0 + 300)
        decisions = [publish(world.engine, TRK1, topic, now=T0 + 100) for _ in range(3)]
        throttled = decisions[-1]  # 2/s, burst 2: the first two passed
        assert throttled.reason == "throttled" and not throttled.violation
        probe = publish(world.engine, TRK1, "fleet/TRK-2/cmd/unlock")
        assert probe.reason == "topic_outside_namespace" and probe.violation  # probing still counts
        assert publish(world.engine, TRK1, "$SYS/x").violation

    def test_control_publishes_have_their_own_budget_and_are_never_throttled(self, world: World) -> None:
        telemetry, ack = "fleet/TRK-1/telemetry/gps", "fleet/TRK-1/control/brake/ack"
        for _ in range(100):
            publish(world.engine, TRK1, telemetry)
        assert publish(world.engine, TRK1, telemetry).reason == "rate_limited"
        assert publish(world.engine, TRK1, ack).allowed  # a telemetry flood does not starve acks
        world.engine.throttle(TRK1, 0.1, T0 + 300)
        assert all(publish(world.engine, TRK1, ack, now=T0 + 10).allowed for _ in range(100))
        limited = publish(world.engine, TRK1, ack, now=T0 + 10)  # a control flood meets the role's rate
        assert brief(limited) == ("deny", "rate_limited", "unit/limits/messages_per_second")
        assert not limited.violation
        assert publish(world.engine, TRK1, ack, now=T0 + 10.1).allowed  # 20/s: a token per 50 ms

    def test_unlimited_profiles_are_not_rate_limited(self, world: World) -> None:
        assert all(publish(world.engine, ALICE, "fleet/TRK-1/cmd/x").allowed for _ in range(1000))

    def test_accessors_for_the_runtime(self, world: World) -> None:
        engine = world.engine
        assert engine.max_subscriptions_for(peer(TRK1)) == 20
        assert engine.max_subscriptions_for(peer(ACME)) == 2
        assert engine.max_subscriptions_for(peer(ALICE)) is None
        assert engine.max_subscriptions_for(peer(None)) is None
        assert engine.violation_limit() == 20


class TestWills:
    """A will is judged when it fires (decide_will): authorization now, no rate budget."""

    def will(self, world: World, who: Identity, topic: str, now: float = T0, size: int = 10) -> Decision:
        return world.engine.decide_will(peer(who), topic, size, 1, True, now)

    def test_a_will_follows_the_units_state_at_the_time_it_fires(self, world: World) -> None:
        engine, directory = world.engine, world.directory
        state = "fleet/TRK-1/state"
        assert brief(self.will(world, TRK1, state)) == ("allow", "will_granted", "unit/publish/2")
        directory.quarantine(TRK1, "impossible travel")
        engine.invalidate(TRK1)
        assert brief(self.will(world, TRK1, state)) == ("deny", "quarantined", "quarantine/unit")
        directory.release(TRK1)
        engine.invalidate(TRK1)
        assert self.will(world, TRK1, "fleet/TRK-1/state").allowed
        assert self.will(world, TRK1, "fleet/TRK-2/state").reason == "topic_outside_namespace"
        assert self.will(world, TRK1, "$SYS/x").reason == "reserved_topic"
        assert self.will(world, TRK1, "fleet/TRK-1/state", size=65537).reason == "payload_too_large"
        assert self.will(world, REVOKED, "fleet/TRK-666/state").reason == "identity_revoked"

    def test_a_will_neither_spends_nor_needs_rate_tokens(self, world: World) -> None:
        topic = "fleet/TRK-1/telemetry/gps"
        assert all(self.will(world, TRK1, "fleet/TRK-1/state").allowed for _ in range(500))
        assert all(publish(world.engine, TRK1, topic).allowed for _ in range(100))  # the whole burst is left
        assert publish(world.engine, TRK1, topic).reason == "rate_limited"
        assert self.will(world, TRK1, "fleet/TRK-1/state").allowed  # a flooder is still heard going away
        world.engine.throttle(TRK1, 0.1, T0 + 300)
        assert self.will(world, TRK1, "fleet/TRK-1/state").allowed


class TestLiveChanges:
    def test_reload_changes_a_decision_and_resets_buckets(self, world: World) -> None:
        engine = world.engine
        assert publish(engine, TRK1, "fleet/TRK-1/state").allowed
        data = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
        data["roles"]["unit"]["publish"].remove("fleet/{id}/state")
        data["violations"]["max_denied_before_disconnect"] = 5
        engine.reload(policy_from_mapping(data, "new.yaml"))
        assert engine.generation == 1
        assert engine.policy.source == "new.yaml"
        assert brief(publish(engine, TRK1, "fleet/TRK-1/state")) == (
            "deny",
            "topic_not_granted",
            "unit/publish",
        )
        assert engine.violation_limit() == 5
        engine.reload(load_policy(None))
        assert engine.policy.source == EMBEDDED_SOURCE
        assert publish(engine, TRK1, "fleet/TRK-1/state").allowed

    def test_state_is_cached_until_invalidated(self, world: World) -> None:
        engine, directory = world.engine, world.directory
        topic = "fleet/TRK-1/telemetry/gps"
        assert publish(engine, TRK1, topic).allowed
        asked = directory.lookups
        directory.quarantine(TRK1, "impossible travel")
        assert publish(engine, TRK1, topic).allowed  # the engine has not been told yet
        assert directory.lookups == asked  # ... and did not ask: the hot path is cache-only
        engine.invalidate(TRK1)
        assert brief(publish(engine, TRK1, topic)) == ("deny", "quarantined", "quarantine/unit")
        directory.release(TRK1)
        engine.invalidate(TRK1)
        assert publish(engine, TRK1, topic).allowed

    def test_revocation_after_invalidate_cuts_delivery_and_connect(self, world: World) -> None:
        engine, directory = world.engine, world.directory
        assert engine.decide_delivery(peer(TRK2), "fleet/TRK-2/cmd/x", T0).allowed
        directory.revoke_identity(TRK2)
        engine.invalidate()
        assert engine.decide_delivery(peer(TRK2), "fleet/TRK-2/cmd/x", T0).reason == "identity_revoked"
        assert engine.decide_connect(peer(TRK2), Connect("TRK-2"), T0).reason == "identity_revoked"

    def test_certificate_revocation_after_invalidate(self, world: World) -> None:
        engine, directory = world.engine, world.directory
        live = peer(TRK1, serial=0x77)
        assert engine.decide_subscribe(live, "fleet/TRK-1/cmd/#", T0).allowed
        directory.revoke_certificate(0x77)
        engine.invalidate(TRK1)
        assert engine.decide_subscribe(live, "fleet/TRK-1/cmd/#", T0).reason == "certificate_revoked"

    def test_tier_change_switches_profile_and_limits(self, world: World) -> None:
        engine, directory = world.engine, world.directory
        assert not engine.decide_subscribe(peer(ACME), "views/2/#", T0).allowed
        directory.set_tier(ACME, 2)
        engine.invalidate(ACME)
        assert engine.decide_subscribe(peer(ACME), "views/2/#", T0).rule == "partner/tier2/subscribe/0"
        assert engine.max_subscriptions_for(peer(ACME)) == 10

    def test_a_role_change_switches_an_operators_grants(self, world: World) -> None:
        engine, directory = world.engine, world.directory
        assert publish(engine, ALICE, "fleet/TRK-1/cmd/reboot").allowed
        directory.put(ALICE, IdentityState("enrolled", role="auditor"))  # the registry record changed
        engine.invalidate(ALICE)
        assert brief(publish(engine, ALICE, "fleet/TRK-1/cmd/reboot")) == (
            "deny",
            "topic_not_granted",
            "operator/auditor/publish",
        )
        assert engine.decide_subscribe(peer(ALICE), "fleet/+/state", T0).allowed


def test_a_quarantined_units_diagnostics_are_not_throttled() -> None:
    """The flood earned a throttle, then a quarantine: the diagnostics it may still send (what ops
    need to look into it) are not held to the throttle, while its telemetry stays dropped."""
    directory = InMemoryDirectory()
    directory.enroll(TRK1)
    engine = PolicyEngine(load_policy(None), directory)
    peer = Peer("10.0.0.7:1", TRK1)
    engine.throttle(TRK1, 0.1, until=1000.0, rule="detectors/publish_rate/min_per_second")
    verdicts = [
        engine.decide_publish(peer, "fleet/TRK-1/telemetry/gps", 10, 1, False, 1.0) for _ in range(50)
    ]
    assert verdicts[-1].reason == "throttled"  # the flood, slowed
    directory.quarantine(TRK1, "flood")
    engine.invalidate(TRK1)
    diag = engine.decide_publish(peer, "fleet/TRK-1/diag/report", 10, 1, False, 1.1)
    assert (diag.allowed, diag.reason) == (True, "publish_granted")
    gps = engine.decide_publish(peer, "fleet/TRK-1/telemetry/gps", 10, 1, False, 1.2)
    assert (gps.allowed, gps.reason) == (False, "quarantined")
