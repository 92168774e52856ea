"""When a device renews: the plan as arithmetic (time and randomness are arguments)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from pki.renewal import (
    MAX_JITTER,
    Validity,
    due,
    next_renewal,
    retry_after,
    should_renew,
    too_eager,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MONTH = Validity(T0, T0 + timedelta(days=30))


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_due_at_two_thirds_of_the_life_or_expires_in_before_the_end() -> None:
    assert due(MONTH, None) == T0 + timedelta(days=20)
    assert due(MONTH, timedelta(days=7)) == T0 + timedelta(days=23)


@pytest.mark.parametrize(
    ("now", "expires_in", "renew"),
    [
        (T0 + timedelta(days=1), None, True),  # no --expires-in: renew now
        (T0 + timedelta(days=1), timedelta(days=10), False),  # 29 days left
        (T0 + timedelta(days=20), timedelta(days=10), True),  # exactly 10 left
        (T0 + timedelta(days=31), timedelta(days=10), True),  # expired: certainly
    ],
)
def test_renewing_once_with_and_without_expires_in(
    now: datetime, expires_in: timedelta | None, renew: bool
) -> None:
    assert should_renew(MONTH, now, expires_in) is renew


def test_jitter_only_ever_moves_the_renewal_earlier_within_its_window() -> None:
    now = T0 + timedelta(hours=1)
    assert next_renewal(MONTH, now, None, None, Fixed(0.0)) == T0 + timedelta(days=20)
    window = min(MONTH.lifetime / 20, MAX_JITTER)  # 1.5 days, capped at 6 h
    assert next_renewal(MONTH, now, None, None, Fixed(0.999999)) > T0 + timedelta(days=20) - window
    assert next_renewal(MONTH, now, None, timedelta(hours=2), Fixed(0.5)) == T0 + timedelta(days=20, hours=-1)
    spread = {next_renewal(MONTH, now, None, None, random.Random(seed)) for seed in range(200)}
    assert len(spread) == 200 and min(spread) >= T0 + timedelta(days=20) - window  # a fleet spreads out


def test_a_renewal_already_due_is_now_and_never_before_the_start() -> None:
    late = T0 + timedelta(days=25)
    assert next_renewal(MONTH, late, None, None, Fixed(0.3)) == late
    short = Validity(T0, T0 + timedelta(minutes=30))
    assert next_renewal(short, T0, None, timedelta(days=1), Fixed(0.9)) == T0


def test_retries_back_off_with_jitter_up_to_an_hour_and_never_past_expiry() -> None:
    now = T0 + timedelta(days=20)
    pauses = [retry_after(n, MONTH, now, Fixed(1.0)) - now for n in (1, 2, 3, 8, 20)]
    assert (
        pauses
        == [timedelta(seconds=30), timedelta(minutes=1), timedelta(minutes=2)] + [timedelta(hours=1)] * 2
    )
    assert retry_after(1, MONTH, now, Fixed(0.0)) - now == timedelta(seconds=15)
    end = MONTH.not_after - timedelta(seconds=5)
    assert retry_after(10, MONTH, end, Fixed(1.0)) == MONTH.not_after


def test_an_expires_in_as_long_as_the_life_is_refused() -> None:
    assert too_eager(MONTH, timedelta(days=30)) and too_eager(MONTH, timedelta(days=31))
    assert not too_eager(MONTH, timedelta(days=29)) and not too_eager(MONTH, None)
