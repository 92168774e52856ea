"""A tier's view gate: the tier's limits for its whole stream, and a small bucket per unit under it."""

from __future__ import annotations

from gateway.context.partner_views import TierGate
from gateway.policy.rules import Limits

TIER3 = Limits(messages_per_second=1, burst=5, max_payload=4096)


def _admitted(gate: TierGate, unit: str, at: float) -> bool:
    return gate.admits(unit, 100, at)


def test_one_chatty_unit_cannot_starve_the_tier() -> None:
    gate = TierGate.of(TIER3, 0.0, unit_share=0.1)
    chatty = [t / 20 for t in range(400)]  # 20 messages a second for twenty seconds
    quiet = [0.5 + t for t in range(20)]  # one a second, starting after the chatty one
    events = sorted([(t, "TRK-CHATTY") for t in chatty] + [(t, "TRK-QUIET") for t in quiet])
    got = {"TRK-CHATTY": 0, "TRK-QUIET": 0}
    for at, unit in events:
        got[unit] += _admitted(gate, unit, at)
    # Each unit: one message at once (burst 0.5, at least 1), then 0.1 a second: 2 in twenty seconds.
    assert got == {"TRK-CHATTY": 2, "TRK-QUIET": 2}


def test_without_a_share_the_first_unit_takes_everything() -> None:
    """What the per-unit bucket prevents (unit_share 1: the tier's bucket alone, as before)."""
    gate = TierGate.of(TIER3, 0.0, unit_share=1.0)
    got = {"TRK-CHATTY": 0, "TRK-QUIET": 0}
    for at, unit in sorted(
        [(t / 20, "TRK-CHATTY") for t in range(200)] + [(0.52 + t, "TRK-QUIET") for t in range(10)]
    ):
        got[unit] += _admitted(gate, unit, at)
    assert got["TRK-QUIET"] == 0 and got["TRK-CHATTY"] >= 10


def test_many_units_share_the_tier_rate() -> None:
    gate = TierGate.of(TIER3, 0.0, unit_share=0.1)
    admitted = sum(_admitted(gate, f"TRK-{n}", 1.0 + n * 0.01) for n in range(100))
    assert admitted == 5  # the tier's burst, all in the first 50 ms: the tier's bound still holds


def test_a_refused_message_does_not_spend_the_units_share() -> None:
    gate = TierGate.of(Limits(messages_per_second=1, burst=1), 0.0, unit_share=0.5)
    assert _admitted(gate, "TRK-A", 0.0)  # the tier's only token
    assert not _admitted(gate, "TRK-B", 0.1)  # the tier is empty: B keeps its own token
    assert _admitted(gate, "TRK-B", 1.2)


def test_max_payload_and_bytes_still_apply() -> None:
    gate = TierGate.of(Limits(bytes_per_second=1000, bytes_burst=1000, max_payload=600), 0.0, 0.1)
    assert not gate.admits("TRK-A", 601, 0.0)
    assert gate.admits("TRK-A", 600, 0.0) and not gate.admits("TRK-B", 600, 0.0)


def test_quiet_units_buckets_are_forgotten_when_there_are_many(monkeypatch: object) -> None:
    import gateway.context.partner_views as partner_views

    monkeypatch.setattr(partner_views, "_MAX_UNIT_BUCKETS", 10)  # type: ignore[attr-defined]
    gate = TierGate.of(Limits(messages_per_second=1000, burst=1000), 0.0, 0.1)
    for n in range(10):
        assert _admitted(gate, f"TRK-{n}", 0.0)
    assert _admitted(gate, "TRK-NEW", 100.0)  # by then every earlier bucket is full again: dropped
    assert len(gate._units) == 1
