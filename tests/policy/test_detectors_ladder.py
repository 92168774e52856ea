"""The response ladder: escalation within the cooldown, back to the first step after calm, no repeats."""

from __future__ import annotations

import pytest

from gateway.policy.detector_rules import Plan
from gateway.policy.detectors import Firing
from gateway.policy.responses import LadderState, Response, climb
from pki.names import Identity

T0 = 1_700_000_000.0
TRK1 = Identity("unit", "TRK-1", "fleet.local")
PLAN = Plan(("alert", "throttle", "quarantine"), cooldown=60.0, throttle_factor=0.1, throttle_seconds=300.0)


def firing(subject: Identity | str = TRK1, at: float = T0) -> Firing:
    return Firing(
        "publish_rate",
        subject,
        "publish_rate_ceiling",
        "detectors/publish_rate/ceiling_per_second",
        {"messages": 400.0},
        at=at,
    )


def run(offsets: list[float], plan: Plan = PLAN, subject: Identity | str = TRK1) -> list[str | None]:
    state = LadderState()
    out: list[str | None] = []
    for offset in offsets:
        response = climb(firing(subject, T0 + offset), plan, state, T0 + offset)
        out.append(response.action if response else None)
    return out


# firing times → the response each gets (None: suppressed)
LADDERS = [
    ("one firing", [0], ["alert"]),
    ("a flood firing every 10 s", [0, 10, 20, 30, 40], ["alert", "throttle", "quarantine", None, None]),
    (
        "top step repeated after its cooldown",
        [0, 10, 20, 30, 81],
        ["alert", "throttle", "quarantine", None, "quarantine"],
    ),
    ("calm resets", [0, 10, 200], ["alert", "throttle", "alert"]),
    ("slow prober: only alerts", [0, 61, 122, 183], ["alert", "alert", "alert", "alert"]),
]


@pytest.mark.parametrize(("case", "offsets", "expected"), LADDERS, ids=[c[0] for c in LADDERS])
def test_ladder_table(case: str, offsets: list[float], expected: list[str | None]) -> None:
    assert run(offsets) == expected


def test_single_step_ladder_repeats_once_per_cooldown() -> None:
    plan = Plan(("alert",), cooldown=60.0)
    assert run([0, 5, 30, 59, 61, 62, 120, 121], plan) == [
        "alert",
        None,
        None,
        None,
        "alert",
        None,
        None,
        "alert",
    ]


def test_suppressed_firings_are_reported_with_the_next_response() -> None:
    state = LadderState()
    plan = Plan(("alert", "disconnect"), cooldown=60.0)
    actions = []
    for offset in (0, 5, 10, 15, 70):
        response = climb(firing(at=T0 + offset), plan, state, T0 + offset)
        actions.append(response)
    assert [r.action if r else None for r in actions] == ["alert", "disconnect", None, None, "disconnect"]
    last = actions[-1]
    assert isinstance(last, Response) and last.evidence["suppressed"] == 2
    assert (last.step, last.steps, last.actor) == (2, 2, "detector/publish_rate")


def test_throttle_response_carries_factor_and_until() -> None:
    state = LadderState()
    climb(firing(), PLAN, state, T0)
    response = climb(firing(at=T0 + 10), PLAN, state, T0 + 10)
    assert response is not None and response.action == "throttle"
    assert (response.throttle_factor, response.throttle_until) == (0.1, T0 + 310)
    assert response.subject == "unit/TRK-1" and response.identity == TRK1
    assert "ceiling" in response.sentence() and "messages=400" in response.sentence()


def test_an_address_is_only_ever_alerted_on() -> None:
    assert run([0, 10, 20], PLAN, subject="address/203.0.113.9") == ["alert", None, None]
