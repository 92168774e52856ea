"""Detectors against the real broker and policy engine, back to back (no sockets, time by hand).

The runtime's part is played here: the evaluator is the broker's publish observer, and every 0.25 s
the broker's events are drained into it and its responses applied. Operations is a small stand-in doing
what gateway/ops/operations.py does to the broker: a quarantine updates the directory, invalidates
the engine and re-decides live sessions; a disconnect closes the identity's connections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.broker import BrokerLimits, Close
from gateway.detection.continuous import ContinuousEvaluator, apply
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import T0, TRUST_DOMAIN, Lab, Link, unit_peer

UNITS = ("TRK-1", "TRK-2", "TRK-3")


@dataclass
class LabOps:
    """What gateway.ops.operations.Operations does to the broker, without a registry."""

    world: World
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def quarantine(self, unit_id: str, reason: str, actor: str, now: datetime) -> dict[str, Any]:
        identity = Identity("unit", unit_id, TRUST_DOMAIN)
        self.world.directory.quarantine(identity, reason)
        self.world.engine.invalidate(identity)
        self.world.lab.apply(self.world.lab.broker.reauthorize(now.timestamp()))
        self.calls.append(("quarantine", unit_id, actor))
        return {}

    def revoke_identity(
        self, kind: str, ident: str, reason: str, actor: str, now: datetime
    ) -> dict[str, Any]:
        raise AssertionError("no detector revokes by default")

    def disconnect(self, identity: Identity, reason: str, actor: str, now: datetime) -> int:
        actions = self.world.lab.broker.disconnect_where(
            lambda peer: peer.identity == identity, ReasonCode.ADMINISTRATIVE_ACTION, reason, now.timestamp()
        )
        self.world.lab.apply(actions)
        self.calls.append(("disconnect", str(identity), actor))
        return len({a.conn for a in actions if isinstance(a, Close)})


@dataclass
class Audit:
    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, **record: Any) -> None:
        self.records.append(record)


class World:
    def __init__(self) -> None:
        self.directory = InMemoryDirectory()
        for unit in UNITS:
            self.directory.enroll(Identity("unit", unit, TRUST_DOMAIN))
        self.engine = PolicyEngine(load_policy(None), self.directory)
        # as the runtime builds it: the policy's violation limit is the broker's
        self.lab = Lab(self.engine, BrokerLimits(max_violations=self.engine.violation_limit()))
        self.evaluator = ContinuousEvaluator(self.engine.policy.detectors)
        self.lab.broker.observe_publishes(self.evaluator.observe_publish)
        self.ops, self.audit = LabOps(self), Audit()
        self.next_tick = T0 + 0.25

    def run_until(self, now: float) -> None:
        """Move the clock, draining and evaluating every 0.25 s on the way, as the runtime does."""
        while self.next_tick <= now:
            self.lab.now = self.next_tick
            self.evaluator.observe_events(self.lab.broker.drain_events(), self.lab.now)
            apply(self.evaluator.evaluate(self.lab.now), self.ops, self.audit, self.engine, self.lab.now)
            self.next_tick += 0.25
        self.lab.now = now

    def connect(self, unit: str, address: str = "10.0.0.7:40000") -> Link:
        return self.lab.connect(unit, peer=unit_peer(unit, address=address))

    def fired(self, detector: str) -> list[dict[str, Any]]:
        return [r for r in self.audit.records if r["details"]["detector"] == detector]


def gps(lat: float, lon: float, ts: float) -> bytes:
    return json.dumps({"lat": lat, "lon": lon, "ts": ts}).encode()


def test_a_flooding_unit_is_throttled_then_quarantined() -> None:
    w = World()
    link = w.connect("TRK-1")
    for second in range(300):  # five normal minutes
        w.run_until(T0 + second)
        link.publish("fleet/TRK-1/telemetry/gps", gps(51.95, 4.14 + second * 1e-4, T0 + second))
    assert w.audit.records == []
    start = w.lab.now
    reconnects = 0
    for i in range(200 * 30):  # then 200 messages a second for half a minute, reconnecting when cut off
        w.run_until(start + i / 200)
        if link.closed:
            link, reconnects = w.connect("TRK-1", f"10.0.0.7:{40001 + reconnects}"), reconnects + 1
        link.publish("fleet/TRK-1/telemetry/engine", b"{}")
    w.run_until(w.lab.now + 1)
    assert [r["details"]["response"] for r in w.fired("publish_rate")] == ["alert", "throttle", "quarantine"]
    assert w.ops.calls[0] == ("quarantine", "TRK-1", "detector/publish_rate")
    throttle = w.fired("publish_rate")[1]
    assert throttle["outcome"] == "throttled" and throttle["details"]["result"]["factor"] == 0.1
    # what the broker now decides: telemetry is quarantined, diagnostics still flow
    decisions = w.lab.broker.metrics.decisions
    assert decisions[("publish", "deny", "throttled")] > 0
    assert decisions[("publish", "deny", "quarantined")] > 0
    if link.closed:
        link = w.connect("TRK-1", "10.0.0.7:49999")
    before = decisions[("publish", "allow", "publish_granted")]
    w.run_until(w.lab.now + 10)
    link.publish("fleet/TRK-1/diag/report", b"{}", qos=1)
    assert w.lab.broker.metrics.decisions[("publish", "allow", "publish_granted")] == before + 1
    # once quarantined, its dropped telemetry is not held against it as violations: the session, and
    # with it the unit's vehicle-control path, stays up however much it keeps sending
    for _ in range(100):
        link.publish("fleet/TRK-1/telemetry/engine", b"{}")
    w.run_until(w.lab.now + 1)
    assert not link.closed


def test_a_900_km_jump_across_a_reconnect_is_quarantined() -> None:
    w = World()
    link = w.connect("TRK-2")
    for second in range(60):
        w.run_until(T0 + second)
        link.publish("fleet/TRK-2/telemetry/gps", gps(51.95, 4.14 + second * 3e-4, T0 + second))
    link.disconnect_cleanly()
    w.run_until(T0 + 120)
    link = w.connect("TRK-2", "10.0.3.3:40000")
    link.publish("fleet/TRK-2/telemetry/gps", gps(44.43, 26.10, T0 + 120))  # Bucharest, a minute later
    w.run_until(T0 + 121)
    (record,) = w.fired("impossible_travel")
    assert record["outcome"] == "quarantined" and record["actor"] == "detector/impossible_travel"
    assert record["details"]["evidence"]["distance_km"] > 1500
    assert w.ops.calls == [("quarantine", "TRK-2", "detector/impossible_travel")]
    link.publish("fleet/TRK-2/telemetry/gps", gps(44.43, 26.10, T0 + 121))
    assert w.lab.broker.metrics.decisions[("publish", "deny", "quarantined")] == 1
    link.publish("fleet/TRK-2/control/brake/ack", b"{}")  # vehicle control is never touched
    assert not link.closed


def test_a_unit_probing_other_units_topics_is_disconnected() -> None:
    w = World()
    link = w.connect("TRK-3")
    probes = iter(f"fleet/TRK-{n}/cmd/unlock" for n in range(100, 200))
    connections = 1
    while not w.fired("denial_burst") or w.fired("denial_burst")[-1]["details"]["response"] != "disconnect":
        for _ in range(15):  # below the broker's own cap of 20 per connection, then a fresh connection
            link.publish(next(probes), b"open", qos=1)
            w.run_until(w.lab.now + 0.1)
        if link.closed is None:
            link.disconnect_cleanly()
        link, connections = w.connect("TRK-3", f"10.0.0.7:{40000 + connections}"), connections + 1
    assert [r["details"]["response"] for r in w.fired("denial_burst")] == ["alert", "disconnect"]
    disconnect = w.fired("denial_burst")[-1]
    assert disconnect["outcome"] == "disconnected" and disconnect["details"]["result"] == {
        "sessions_closed": 1
    }
    assert disconnect["details"]["evidence"]["count"] >= 10
    assert "fleet/TRK-1" in disconnect["details"]["context"]["seen"]
    assert w.ops.calls == [("disconnect", "unit/TRK-3", "detector/denial_burst")]
