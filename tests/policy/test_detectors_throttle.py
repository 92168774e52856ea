"""PolicyEngine.throttle: a detector's temporary cut of one identity's rate, and nothing else changes."""

from __future__ import annotations

import pytest

from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.stores.policy_file import load_policy
from pki.names import Identity

T0 = 1_700_000_000.0
TD = "fleet.local"
TRK1 = Identity("unit", "TRK-1", TD)
TRK2 = Identity("unit", "TRK-2", TD)
ALICE = Identity("operator", "alice", TD)
GHOST = Identity("unit", "TRK-404", TD)
RULE = "detectors/publish_rate/ceiling_per_second"


@pytest.fixture
def engine() -> PolicyEngine:
    directory = InMemoryDirectory()
    for who in (TRK1, TRK2, ALICE):
        directory.enroll(who)
    return PolicyEngine(load_policy(None), directory)


def publish(engine: PolicyEngine, who: Identity, now: float, topic: str = "") -> tuple[str, str]:
    peer = Peer("10.0.0.7:40000", who, certificate_serial=1, certificate_not_after=T0 + 86_400)
    decision = engine.decide_publish(peer, topic or f"fleet/{who.id}/telemetry/gps", 50, 1, False, now)
    return decision.reason, decision.rule


def allowed_in(engine: PolicyEngine, who: Identity, start: float, seconds: int, per_second: int) -> int:
    ok = 0
    for i in range(seconds * per_second):
        ok += publish(engine, who, start + i / per_second)[0] == "publish_granted"
    return ok


def test_without_a_throttle_nothing_changes(engine: PolicyEngine) -> None:
    # The unit role: 20/s with a burst of 100. Ten seconds at 50/s: 100 + 20 * 10, minus rounding.
    assert allowed_in(engine, TRK1, T0, 10, 50) == pytest.approx(300, abs=2)


def test_a_throttle_keeps_its_factor_of_the_role_rate_until_it_ends(engine: PolicyEngine) -> None:
    assert engine.throttle(TRK1, 0.1, T0 + 10, RULE)
    assert engine.throttled_until(TRK1, T0) == T0 + 10
    # a burst of one second's worth (2), then refusals naming the detector's rule
    assert publish(engine, TRK1, T0) == ("publish_granted", "unit/publish/0")
    assert publish(engine, TRK1, T0 + 0.01) == ("publish_granted", "unit/publish/0")
    assert publish(engine, TRK1, T0 + 0.02) == ("throttled", RULE)
    # 2/s (10 % of 20/s) for ten seconds...
    assert allowed_in(engine, TRK1, T0 + 0.5, 9, 50) == pytest.approx(18, abs=2)
    # ...then the throttle is over by itself
    assert engine.throttled_until(TRK1, T0 + 10) is None
    assert allowed_in(engine, TRK1, T0 + 10, 1, 20) == 20


def test_a_throttle_is_per_identity_and_keeps_authorization_first(engine: PolicyEngine) -> None:
    engine.throttle(TRK1, 0.1, T0 + 60, RULE)
    assert allowed_in(engine, TRK2, T0, 1, 20) == 20
    # a topic the unit may not use is refused for that, and costs no throttle token
    assert publish(engine, TRK1, T0, "fleet/TRK-2/telemetry/gps")[0] == "topic_outside_namespace"
    assert publish(engine, TRK1, T0)[0] == "publish_granted"


def test_a_throttle_outlives_invalidation_and_reload_and_can_be_lifted(engine: PolicyEngine) -> None:
    engine.throttle(TRK1, 0.1, T0 + 60, RULE)
    publish(engine, TRK1, T0)
    publish(engine, TRK1, T0)
    engine.invalidate(TRK1)
    engine.reload(load_policy(None))
    assert publish(engine, TRK1, T0 + 0.01)[0] == "throttled"
    assert engine.unthrottle(TRK1) and not engine.unthrottle(TRK1)
    assert publish(engine, TRK1, T0 + 0.02)[0] == "publish_granted"


def test_nothing_to_throttle(engine: PolicyEngine) -> None:
    assert not engine.throttle(ALICE, 0.1, T0 + 60)  # operators have no rate limit to take a share of
    assert not engine.throttle(GHOST, 0.1, T0 + 60)  # unknown
    with pytest.raises(ValueError, match="0 < factor < 1"):
        engine.throttle(TRK1, 1.5, T0 + 60)
