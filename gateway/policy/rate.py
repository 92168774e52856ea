"""Rate limits and event counters advanced only by the `now` their caller passes in.

Both classes run on the hot path (a bucket is consulted for every PUBLISH of a throttled session) and
in detectors, so they are tiny slotted objects with no clock, no locks and no allocation per call.
Time is whatever monotonic seconds the transport reads once per event; tests drive them with plain
numbers. A `now` that goes backwards (it should not, but a caller may mix sources) never adds
capacity: the bucket simply waits until time passes its last refill again.
"""

from __future__ import annotations

import math

__all__ = ["SlidingWindowCounter", "TokenBucket"]

_INF = math.inf


class TokenBucket:
    """A token bucket: `burst` tokens at most, refilled continuously at `rate` tokens per second.

    A cost is usually 1 (messages per second) but may be a size (bytes per second). The bucket starts
    full. Unlimited is spelled `rate=math.inf` so that a zero rate can keep its literal meaning: a
    one-off budget of `burst` that never refills (e.g. "three failed handshakes, then nothing").
    A cost above `burst` can never be paid; such a take is refused rather than waiting forever.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if math.isnan(rate) or rate < 0:
            raise ValueError(f"rate must be >= 0 (math.inf for unlimited), not {rate!r}")
        if not (0 < burst < math.inf):
            raise ValueError(f"burst must be a finite number > 0, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    @property
    def unlimited(self) -> bool:
        return self.rate == math.inf

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if the bucket holds them now; return whether it did."""
        rate = self.rate
        if rate == _INF:  # checked first: inf * 0 elapsed would be NaN
            return True
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0:
            # Refill, capped before storing so the bucket never holds more than one burst, however
            # long the session was idle (min(), without the call: two of these run per message).
            tokens += elapsed * rate
            if tokens > self.burst:
                tokens = self.burst
            self._last = now
        if tokens >= cost:
            self._tokens = tokens - cost
            return True
        self._tokens = tokens
        return False

    def available(self, now: float) -> float:
        """Tokens that could be spent at `now` (a query: the bucket itself is not changed)."""
        rate = self.rate
        if rate == _INF:
            return _INF
        elapsed = now - self._last
        if elapsed <= 0:
            return self._tokens
        tokens = self._tokens + elapsed * rate
        return self.burst if tokens > self.burst else tokens

    def wait_time(self, now: float, cost: float = 1.0) -> float:
        """Seconds from `now` until `cost` could be taken; `math.inf` if it never can.

        For throttling (pause reading from a socket) instead of dropping.
        """
        missing = cost - self.available(now)
        if missing <= 0:
            return 0.0
        if cost > self.burst or self.rate == 0:
            return math.inf
        return missing / self.rate

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst!r}, tokens={self._tokens!r})"


class SlidingWindowCounter:
    """How many events happened in (about) the last `window` seconds, in bounded memory.

    The window is cut into `buckets` fixed slots of `window / buckets` seconds each, kept in a ring; a
    slot remembers which absolute slot number it currently counts so stale slots are recognised and
    reset lazily, without a sweep. The count covers the current slot and the `buckets - 1` before it,
    so it is exact up to one slot width at the old edge:

    - an event older than `window` is never counted;
    - an event younger than `window - window / buckets` is always counted.

    More buckets narrow that band at the cost of a longer sum in `count` (both are O(buckets)).
    Events reported with a time older than what the ring still holds are dropped, not misfiled.
    """

    __slots__ = ("_counts", "_slots", "_width", "buckets", "window")

    def __init__(self, window: float, buckets: int = 10) -> None:
        if not (0 < window < math.inf):
            raise ValueError(f"window must be a finite number of seconds > 0, not {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, not {buckets!r}")
        self.window = window
        self.buckets = buckets
        self._width = window / buckets
        self._counts = [0] * buckets
        # A slot number far below any real one: every slot starts stale and is reset on first use.
        self._slots = [-(2**62)] * buckets

    def add(self, now: float, n: int = 1) -> None:
        slot = math.floor(now / self._width)
        i = slot % self.buckets
        held = self._slots[i]
        if held == slot:
            self._counts[i] += n
        elif held < slot:
            self._slots[i] = slot
            self._counts[i] = n
        # else: the ring already moved past this slot; the event is too old to matter.

    def count(self, now: float) -> int:
        oldest = math.floor(now / self._width) - self.buckets + 1
        newest = oldest + self.buckets - 1
        total = 0
        for held, counted in zip(self._slots, self._counts, strict=True):
            if oldest <= held <= newest:
                total += counted
        return total

    def __repr__(self) -> str:
        return f"SlidingWindowCounter(window={self.window!r}, buckets={self.buckets!r})"
