"""When a device renews its certificate: the plan `fleetgate renew` and `renew --daemon` follow. Pure.

A unit renews at 2/3 of its certificate's life (PRODUCT: the default lifetime is 30 days, so after
20), or, with `--expires-in D`, once less than D is left. A fleet enrolled in one afternoon would
otherwise renew in one afternoon too, every 20 days, all at the EST endpoint at once: each renewal
is moved earlier by a random share of the `jitter` window, so renewals spread out and never come
later than planned. A failed attempt is tried again after a growing, jittered pause, never later
than the certificate's expiry.

Time is an argument everywhere (`now`), and randomness is a `random.Random` the caller owns, so a
test states the plan as arithmetic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

RENEW_AT = 2 / 3  # of the certificate's life
DEFAULT_JITTER = 1 / 20  # of the certificate's life, at most
MAX_JITTER = timedelta(hours=6)
FIRST_RETRY, MAX_RETRY = timedelta(seconds=30), timedelta(hours=1)


@dataclass(frozen=True)
class Validity:
    not_before: datetime
    not_after: datetime

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def left(self, now: datetime) -> timedelta:
        return self.not_after - now


def due(validity: Validity, expires_in: timedelta | None) -> datetime:
    """When renewal is due, before any jitter: 2/3 of the life, or `expires_in` before the end."""
    if expires_in is not None:
        return validity.not_after - expires_in
    return validity.not_before + validity.lifetime * RENEW_AT


def should_renew(validity: Validity, now: datetime, expires_in: timedelta | None) -> bool:
    """`fleetgate renew` once: with --expires-in only when that little is left; without, always."""
    return expires_in is None or validity.left(now) <= expires_in


def jitter_window(validity: Validity, jitter: timedelta | None) -> timedelta:
    return jitter if jitter is not None else min(validity.lifetime * DEFAULT_JITTER, MAX_JITTER)


def next_renewal(
    validity: Validity,
    now: datetime,
    expires_in: timedelta | None,
    jitter: timedelta | None,
    rng: random.Random,
) -> datetime:
    """When the daemon renews next: the due time moved earlier by a random part of the jitter window,
    but not before the certificate's start, and `now` when it is already past."""
    window = jitter_window(validity, jitter)
    planned = due(validity, expires_in) - window * rng.random()
    return max(planned, validity.not_before, now)


def retry_after(attempt: int, validity: Validity, now: datetime, rng: random.Random) -> datetime:
    """After the `attempt`-th failure in a row (from 1): 30 s, 1 min, 2 min, ... at most an hour, each
    between half and all of that (so failed devices do not come back in step), never past expiry."""
    pause: timedelta = min(FIRST_RETRY * 2 ** (attempt - 1), MAX_RETRY) * (0.5 + rng.random() / 2)
    later: datetime = now + pause
    return min(later, validity.not_after)


def too_eager(validity: Validity, expires_in: timedelta | None) -> bool:
    """A new certificate would be due at once: --expires-in is at least its whole life."""
    return expires_in is not None and expires_in >= validity.lifetime
