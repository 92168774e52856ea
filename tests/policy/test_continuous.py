"""ContinuousEvaluator end to end with fakes: what the broker reports in, responses and audit records out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.broker.events import (
    ClientConnected,
    ClientDisconnected,
    ConnectRefused,
    PublishDenied,
    SessionTakenOver,
    SubscribeDenied,
    WillDropped,
)
from gateway.detection.continuous import ContinuousEvaluator, Wiring, apply, wire
from gateway.policy.detector_rules import DetectorSettings, Plan
from gateway.policy.peer import Peer
from gateway.policy.responses import Response
from gateway.stores.policy_file import load_policy
from pki.names import Identity

T0 = 1_700_000_000.0
TD = "fleet.local"
TRK1 = Identity("unit", "TRK-1", TD)
TRK2 = Identity("unit", "TRK-2", TD)
ALICE = Identity("operator", "alice", TD)
PEER1 = Peer("10.0.0.7:40000", TRK1, certificate_serial=1)
GPS = "fleet/TRK-1/telemetry/gps"


@dataclass(frozen=True)
class FakeResult:
    action: str
    subject: str
    changed: bool = True
    state: str = "quarantined"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FakeOps:
    """Records what a detector asked Operations to do; `fail` makes a call raise like an OpsError."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)

    def _check(self, name: str) -> None:
        if name in self.fail:
            error = RuntimeError(f"{name} refused")
            error.code = "unknown_identity"  # type: ignore[attr-defined]
            raise error

    def quarantine(self, unit_id: str, reason: str, actor: str, now: datetime) -> FakeResult:
        self._check("quarantine")
        self.calls.append(("quarantine", unit_id, actor, now, reason))
        return FakeResult("quarantine", f"unit/{unit_id}")

    def revoke_identity(self, kind: str, ident: str, reason: str, actor: str, now: datetime) -> FakeResult:
        self._check("revoke")
        self.calls.append(("revoke", f"{kind}/{ident}", actor, now, reason))
        return FakeResult("revoke", f"{kind}/{ident}", state="revoked")

    def disconnect(self, identity: Identity, reason: str, actor: str, now: datetime) -> int:
        self._check("disconnect")
        self.calls.append(("disconnect", str(identity), actor, now, reason))
        return 1


@dataclass
class FakeAudit:
    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, **record: Any) -> None:
        json.dumps(record["details"], allow_nan=False)  # what the real log requires of details
        self.records.append(record)


@dataclass
class FakeEngine:
    throttles: list[tuple[Identity, float, float, str]] = field(default_factory=list)
    policy: Any = None

    def throttle(self, identity: Identity, factor: float, until: float, rule: str = "") -> bool:
        self.throttles.append((identity, factor, until, rule))
        return identity.kind == "unit"


class Harness:
    """The runtime's drain loop in miniature: observe, evaluate every 0.25 s, apply."""

    def __init__(self, settings: DetectorSettings | None = None, **limits: Any) -> None:
        self.evaluator = ContinuousEvaluator(settings or DetectorSettings(), **limits)
        self.ops, self.audit, self.engine = FakeOps(), FakeAudit(), FakeEngine()
        self.now = T0
        self.responses: list[Response] = []

    def tick(self, events: Sequence[object] = (), failures: Sequence[Any] = ()) -> list[Response]:
        self.evaluator.observe_events(events, self.now)
        self.evaluator.observe_handshake_failures(failures, self.now)
        responses = self.evaluator.evaluate(self.now)
        apply(responses, self.ops, self.audit, self.engine, self.now)
        self.responses += responses
        return responses

    def publish_for(self, seconds: float, per_second: float, topic: str = GPS, peer: Peer = PEER1) -> None:
        """Publish evenly for `seconds`, ticking every 0.25 s as the runtime does."""
        step = 1.0 / per_second
        end = self.now + seconds
        next_tick = self.now + 0.25
        t = self.now
        while t < end:
            self.evaluator.observe_publish(peer, topic, b"{}", t)
            t += step
            while next_tick <= t:
                self.now = next_tick
                self.tick()
                next_tick += 0.25
        self.now = end
        self.tick()

    @property
    def actions(self) -> list[tuple[str, str]]:
        return [(r.detector, r.action) for r in self.responses]

    def fired(self, detector: str) -> list[dict[str, Any]]:
        return [r for r in self.audit.records if r["details"]["detector"] == detector]


def test_a_flood_is_throttled_then_quarantined_with_evidence_in_the_audit() -> None:
    h = Harness()
    h.publish_for(300, 4.0)  # five busy but steady minutes: the unit's baseline
    assert h.responses == []
    h.publish_for(30, 50)  # then 50/s
    assert h.actions == [
        ("publish_rate", "alert"),
        ("publish_rate", "throttle"),
        ("publish_rate", "quarantine"),
    ]
    quarantine = h.ops.calls[0]
    assert quarantine[:3] == ("quarantine", "TRK-1", "detector/publish_rate")
    assert quarantine[3] == datetime.fromtimestamp(h.responses[2].at, UTC)
    # 50/s is caught as a spike over the unit's own 4/s (a bar of 40/s) before the 60/s ceiling
    assert "publish rate spike" in quarantine[4] and "detectors/publish_rate/spike_factor" in quarantine[4]
    (throttle,) = h.engine.throttles
    assert throttle[:2] == (TRK1, 0.1) and throttle[2] == h.responses[1].at + 300
    records = h.fired("publish_rate")
    assert [(r["actor"], r["action"], r["subject"], r["outcome"]) for r in records] == [
        ("detector/publish_rate", "detector.fired", "unit/TRK-1", "alerted"),
        ("detector/publish_rate", "detector.fired", "unit/TRK-1", "throttled"),
        ("detector/publish_rate", "detector.fired", "unit/TRK-1", "quarantined"),
    ]
    last = records[-1]["details"]
    assert last["response"] == "quarantine" and last["step"] == "3/3"
    assert last["rule"] == "detectors/publish_rate/spike_factor"
    evidence = last["evidence"]
    assert evidence["per_second"] >= evidence["spike_bar_per_second"]
    assert evidence["spike_bar_per_second"] == pytest.approx(10 * evidence["baseline_per_second"], abs=0.01)
    assert 3.5 < evidence["baseline_per_second"] < 4.1
    assert last["result"] == {"changed": True, "state": "quarantined"}
    # and then it stays quiet: the same quarantine is not asked for again within the cooldown
    h.publish_for(20, 50)
    assert len(h.ops.calls) == 1


def test_rate_limited_attempts_count_as_much_as_accepted_ones() -> None:
    """The engine drops a flood above the role's limit; what was tried is still a flood."""
    h = Harness()
    denied = [PublishDenied(PEER1, "TRK-1", GPS, "rate_limited", "unit/limits/messages_per_second")] * 400
    for _ in range(3):
        h.tick(denied)
        h.now += 3
    assert h.actions == [
        ("publish_rate", "alert"),
        ("publish_rate", "throttle"),
        ("publish_rate", "quarantine"),
    ]


def test_probing_other_units_topics_is_alerted_then_disconnected() -> None:
    h = Harness()
    probes = [
        PublishDenied(PEER1, "TRK-1", f"fleet/TRK-{i}/cmd/x", "topic_outside_namespace") for i in range(2, 30)
    ]
    h.tick(probes[:9])
    assert h.responses == []  # nine: one below the threshold
    h.now += 1
    h.tick(probes[9:10])
    assert h.actions == [("denial_burst", "alert")]
    h.now += 5
    h.tick(probes[10:20])  # ten more within the cooldown (the unit reconnected to dodge the broker's cap)
    assert h.actions[-1] == ("denial_burst", "disconnect")
    assert h.ops.calls[0][:3] == ("disconnect", "unit/TRK-1", "detector/denial_burst")
    record = h.fired("denial_burst")[-1]
    assert record["outcome"] == "disconnected" and record["details"]["result"] == {"sessions_closed": 1}
    assert record["details"]["evidence"] == {"count": 10.0, "threshold": 10.0, "window": 30.0}
    assert record["details"]["context"]["seen"].startswith("fleet/TRK-12/cmd/x")


def test_denials_that_are_not_probing_do_not_count() -> None:
    h = Harness()
    quarantined = [PublishDenied(PEER1, "TRK-1", GPS, "quarantined", "quarantine/unit")] * 50
    dropped = [SubscribeDenied(PEER1, "TRK-1", "fleet/TRK-1/cmd/#", "topic_not_granted", revoked=True)] * 50
    h.tick([*quarantined, *dropped])
    assert h.responses == []


def test_dropped_wills_on_other_units_topics_are_probes_and_quarantined_ones_are_not() -> None:
    h = Harness()
    h.tick([WillDropped(PEER1, "TRK-1", "fleet/TRK-1/state", "quarantined", "quarantine/unit")] * 20)
    assert h.responses == []
    h.tick([WillDropped(PEER1, "TRK-1", "fleet/TRK-2/state", "topic_outside_namespace")] * 10)
    assert h.actions == [("denial_burst", "alert")]


def test_a_900_km_jump_quarantines() -> None:
    h = Harness()
    for i, (lat, lon) in enumerate([(51.95, 4.14), (51.9502, 4.1405), (44.43, 26.10)]):
        t = T0 + 30 * i
        payload = json.dumps({"lat": lat, "lon": lon, "ts": t}).encode()
        h.evaluator.observe_publish(PEER1, GPS, payload, t)
        h.evaluator.observe_publish(PEER1, "fleet/TRK-1/telemetry/engine", b"{}", t)  # not GPS: not parsed
    h.now = T0 + 60
    h.tick()
    assert h.actions == [("impossible_travel", "quarantine")]
    evidence = h.fired("impossible_travel")[0]["details"]["evidence"]
    assert evidence["distance_km"] > 1500 and evidence["seconds"] == 30 and evidence["speed_kmh"] > 180_000


def test_ping_pong_takeovers_are_cloning() -> None:
    h = Harness()
    a, b = replace(PEER1, address="10.0.0.7:1000"), replace(PEER1, address="10.9.9.9:2000")
    h.tick([SessionTakenOver("TRK-1", a, b)])
    h.now += 20
    h.tick([SessionTakenOver("TRK-1", b, a)])
    h.now += 20
    h.tick([SessionTakenOver("TRK-1", a, b)])
    assert h.actions == [("cloning", "alert"), ("cloning", "quarantine")]
    assert h.fired("cloning")[0]["details"]["context"]["hosts"] == "10.0.0.7, 10.9.9.9"


def test_a_takeover_across_identities_is_no_evidence_of_cloning() -> None:
    # A partner named like the unit fighting it over the client id: an attack on the unit, not a
    # clone of it. The broker refuses such takeovers; the detector would not blame the unit either.
    h = Harness()
    unit = replace(PEER1, address="10.0.0.7:1000")
    impostor = Peer("10.9.9.9:2000", Identity("partner", "TRK-1", TD), certificate_serial=9)
    for _ in range(3):
        h.tick([SessionTakenOver("TRK-1", unit, impostor)])
        h.now += 20
        h.tick([SessionTakenOver("TRK-1", impostor, unit)])
        h.now += 20
    assert h.actions == []


def test_subscription_overreach_on_wildcards_only() -> None:
    h = Harness()
    h.tick([SubscribeDenied(PEER1, "TRK-1", "fleet/TRK-1/cmd/x/y", "filter_not_granted")])
    assert h.responses == []
    h.tick([SubscribeDenied(PEER1, "TRK-1", "#", "wildcard_overreach")])
    h.now += 10
    h.tick([SubscribeDenied(PEER1, "TRK-1", "fleet/+/telemetry/#", "wildcard_overreach")])
    assert h.actions == [("subscription_overreach", "alert"), ("subscription_overreach", "disconnect")]


def test_handshake_failures_per_address_and_per_identity() -> None:
    @dataclass(frozen=True)
    class Failure:  # gateway.edge.reports.HandshakeFailure's shape
        address: str
        reason: str
        at: float

    h = Harness()
    h.tick(failures=[Failure(f"203.0.113.9:{4000 + i}", "unknown_ca", T0) for i in range(19)])
    h.tick(failures=[Failure("listener", "accept_failed_24", T0)] * 50)  # nobody to blame
    assert h.responses == []
    h.tick(failures=[Failure("203.0.113.9:5000", "unknown_ca", T0)])
    refused = [ConnectRefused(PEER1, "TRK-1", 0x87, "certificate_expired")] * 5
    h.tick(refused)
    assert [(r.subject, r.action, r.reason) for r in h.responses] == [
        ("address/203.0.113.9", "alert", "handshake_failures_address"),
        ("unit/TRK-1", "alert", "handshake_failures_identity"),
    ]


def test_connect_flapping_and_source_network() -> None:
    h = Harness()
    connects = [
        ClientConnected(replace(PEER1, address=f"10.0.0.7:{4000 + i}"), "TRK-1", False, 5) for i in range(9)
    ]
    h.tick(connects)
    assert h.responses == []
    h.tick([ClientDisconnected(PEER1, "TRK-1", "connection_lost"), ClientConnected(PEER1, "TRK-1", False, 5)])
    assert h.actions == [("connect_flapping", "alert")]
    h.now += 1000
    h.tick([ClientConnected(replace(PEER1, address="203.0.113.9:4000"), "TRK-1", False, 5)])
    assert h.actions[-1] == ("source_network", "alert")
    assert h.fired("source_network")[0]["details"]["context"] == {"address": "203.0.113.9:4000"}


def test_one_failing_response_does_not_stop_the_others() -> None:
    h = Harness()
    h.ops.fail.add("quarantine")
    responses = [
        Response("quarantine", TRK1, "cloning", "session_contested", {"returns": 1.0}, "r", "unit/TRK-1"),
        Response("disconnect", TRK2, "denial_burst", "denial_burst", {"count": 10.0}, "r", "unit/TRK-2"),
        Response(
            "throttle",
            ALICE,
            "publish_rate",
            "x",
            {},
            "r",
            "operator/alice",
            throttle_factor=0.1,
            throttle_until=T0 + 1,
        ),
        Response("revoke", TRK2, "cloning", "session_contested", {}, "r", "unit/TRK-2"),
    ]
    outcomes = apply(responses, h.ops, h.audit, h.engine, T0)
    assert outcomes == ["failed", "disconnected", "not_applicable", "revoked"]
    failed = h.audit.records[0]
    assert failed["outcome"] == "failed"
    assert failed["details"]["result"] == {"error": "quarantine refused", "code": "unknown_identity"}
    assert [c[0] for c in h.ops.calls] == ["disconnect", "revoke"]


def test_memory_stays_bounded() -> None:
    h = Harness(max_subjects=100, idle_seconds=600)
    for i in range(1000):
        peer = Peer(f"10.0.{i // 250}.{i % 250}:4000", Identity("unit", f"TRK-{i}", TD))
        h.evaluator.observe_publish(peer, f"fleet/TRK-{i}/telemetry/gps", b"not json", T0 + i * 0.01)
        h.evaluator.observe_handshake_failures(
            [type("F", (), {"address": f"[2001:db8::{i:x}]:1", "reason": "x"})], T0 + i * 0.01
        )
    h.tick()
    stats = h.evaluator.snapshot()
    assert (stats.subjects, stats.addresses) == (100, 100)
    assert stats.evicted == 1800 and stats.malformed_fixes == 100
    h.now = T0 + 1000
    h.tick()
    assert (h.evaluator.snapshot().subjects, h.evaluator.snapshot().addresses) == (0, 0)  # all idle now


def test_disabled_detectors_and_kinds_they_do_not_watch() -> None:
    settings = DetectorSettings()
    settings = replace(settings, denial_burst=replace(settings.denial_burst, enabled=False))
    h = Harness(settings)
    h.tick([PublishDenied(PEER1, "TRK-1", "fleet/TRK-2/x", "topic_outside_namespace")] * 50)
    alice = Peer("10.0.0.9:1", ALICE)
    h.publish_for(20, 100, topic="fleet/TRK-1/cmd/mode", peer=alice)  # operators are not rate-watched
    assert h.responses == []


def test_wiring_follows_a_policy_reload_and_the_broker_observer() -> None:
    @dataclass
    class FakeBroker:
        observer: Any = None

        def observe_publishes(self, observer: Any) -> None:
            self.observer = observer

    @dataclass
    class FakeGateway:
        broker: FakeBroker
        engine: FakeEngine
        audit: FakeAudit

    engine = FakeEngine(policy=load_policy(None))
    gateway = FakeGateway(FakeBroker(), engine, FakeAudit())
    wiring = wire(gateway, FakeOps())
    assert isinstance(wiring, Wiring) and gateway.broker.observer == wiring.evaluator.observe_publish
    probes = [PublishDenied(PEER1, "TRK-1", "fleet/TRK-2/x", "topic_outside_namespace")] * 10
    assert [r.action for r in wiring.tick(probes, [], T0)] == ["alert"]
    # a reload with the same detectors keeps state (the ladder climbs); other thresholds start afresh
    engine.policy = load_policy(None)
    assert [r.action for r in wiring.tick(probes, [], T0 + 1)] == ["disconnect"]
    looser = replace(DetectorSettings(), denial_burst=replace(DetectorSettings().denial_burst, threshold=11))
    engine.policy = type("P", (), {"detectors": looser})()
    assert wiring.tick(probes, [], T0 + 2) == []
    assert wiring.evaluator.settings is looser


@pytest.mark.parametrize("action", ["alert", "throttle", "quarantine", "disconnect", "revoke"])
def test_every_action_is_one_audit_record_naming_the_detector(action: str) -> None:
    h = Harness()
    plan = Plan((action,))
    settings = replace(
        DetectorSettings(),
        denial_burst=replace(DetectorSettings().denial_burst, plan=plan, kinds=frozenset({"unit"})),
    )
    h.evaluator.reconfigure(settings)
    h.tick([PublishDenied(PEER1, "TRK-1", "fleet/TRK-2/x", "topic_outside_namespace")] * 10)
    (record,) = h.audit.records
    assert record["actor"] == "detector/denial_burst" and record["details"]["response"] == action


def _jump(evaluator: ContinuousEvaluator, n: int) -> None:
    """Unit TRK-n reports two fixes 1,500 km apart, 30 s apart."""
    peer = Peer(f"10.0.{n // 250}.{n % 250}:40000", Identity("unit", f"TRK-{n}", TD))
    for t, (lat, lon) in ((T0, (51.95, 4.14)), (T0 + 30, (44.43, 26.10))):
        payload = json.dumps({"lat": lat, "lon": lon, "ts": t}).encode()
        evaluator.observe_publish(peer, f"fleet/TRK-{n}/telemetry/gps", payload, t)


def test_a_stepped_evaluation_pauses_between_slices_and_judges_every_subject_once() -> None:
    # The running gateway lets the event loop serve reads at each pause (Gateway.event_tick).
    stepped, whole = ContinuousEvaluator(DetectorSettings()), ContinuousEvaluator(DetectorSettings())
    for n in range(600):
        _jump(stepped, n)
        _jump(whole, n)
    steps = stepped.evaluate_steps(T0 + 60, size=256)
    pauses = 0
    late = 600
    while True:
        try:
            next(steps)
        except StopIteration as done:
            responses: list[Response] = done.value
            break
        pauses += 1
        _jump(stepped, late)  # a unit whose fixes arrive while the evaluation is paused
        late += 1
    assert pauses == 2  # after subjects 256 and 512
    expected = whole.evaluate(T0 + 60)
    assert [(r.subject, r.action) for r in responses] == [(r.subject, r.action) for r in expected]
    assert len(responses) == 600
    # what arrived during the pauses is judged by the next evaluation, not lost
    assert sorted(r.subject for r in stepped.evaluate(T0 + 60)) == sorted(
        f"unit/TRK-{n}" for n in range(600, late)
    )
