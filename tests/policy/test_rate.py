"""Token bucket and sliding window, driven by injected time: every assertion is arithmetic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.rate import SlidingWindowCounter, TokenBucket

T0 = 1_000.0


class TestTokenBucket:
    def test_burst_then_refuse(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=5.0, now=T0)
        assert [bucket.take(T0) for _ in range(6)] == [True] * 5 + [False]

    def test_refills_at_rate(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=5.0, now=T0)
        for _ in range(5):
            assert bucket.take(T0)
        assert not bucket.take(T0 + 0.4)  # 0.8 tokens
        assert bucket.take(T0 + 0.5)  # 1.0 token (0.4 s of refill was kept, not lost)
        assert not bucket.take(T0 + 0.5)
        assert bucket.available(T0 + 1.5) == pytest.approx(2.0)

    def test_never_above_burst(self) -> None:
        bucket = TokenBucket(rate=100.0, burst=3.0, now=T0)
        assert bucket.available(T0 + 3600) == 3.0
        assert [bucket.take(T0 + 3600) for _ in range(4)] == [True, True, True, False]

    def test_cost_in_bytes(self) -> None:
        bucket = TokenBucket(rate=1000.0, burst=4096.0, now=T0)  # 1 kB/s, 4 kB burst
        assert bucket.take(T0, cost=4000)
        assert not bucket.take(T0, cost=200)  # 96 left
        assert bucket.take(T0 + 0.104, cost=200)  # 96 + 104 = 200
        assert bucket.wait_time(T0 + 0.104, cost=500) == pytest.approx(0.5)

    def test_cost_above_burst_never_passes(self) -> None:
        bucket = TokenBucket(rate=10.0, burst=100.0, now=T0)
        assert not bucket.take(T0 + 1e6, cost=101)
        assert bucket.wait_time(T0, cost=101) == math.inf
        assert bucket.take(T0, cost=100)  # the refused take spent nothing

    def test_refused_take_spends_nothing(self) -> None:
        bucket = TokenBucket(rate=1.0, burst=2.0, now=T0)
        assert bucket.take(T0, cost=2)
        for _ in range(10):
            assert not bucket.take(T0 + 0.5)
        assert bucket.take(T0 + 1.0)

    def test_zero_rate_is_a_one_off_budget(self) -> None:
        bucket = TokenBucket(rate=0.0, burst=3.0, now=T0)
        assert [bucket.take(T0 + i * 1e6) for i in range(4)] == [True, True, True, False]
        assert bucket.wait_time(T0 + 1e9) == math.inf

    def test_unlimited_is_explicit(self) -> None:
        bucket = TokenBucket(rate=math.inf, burst=1.0, now=T0)
        assert bucket.unlimited
        assert all(bucket.take(T0, cost=1e12) for _ in range(1000))
        assert bucket.available(T0) == math.inf
        assert bucket.wait_time(T0, cost=1e12) == 0.0

    def test_time_going_backwards_adds_nothing(self) -> None:
        bucket = TokenBucket(rate=1.0, burst=2.0, now=T0)
        assert bucket.take(T0, cost=2)
        assert not bucket.take(T0 - 100)
        assert bucket.available(T0 - 100) == 0.0
        assert bucket.take(T0 + 1)

    def test_available_is_a_query(self) -> None:
        bucket = TokenBucket(rate=1.0, burst=10.0, now=T0)
        assert bucket.take(T0, cost=10)
        assert bucket.available(T0 + 3) == pytest.approx(3.0)
        assert bucket.available(T0 + 3) == pytest.approx(3.0)
        assert bucket.take(T0 + 5, cost=5)

    @pytest.mark.parametrize(
        ("rate", "burst"), [(-1.0, 1.0), (math.nan, 1.0), (1.0, 0.0), (1.0, -2.0), (1.0, math.inf)]
    )
    def test_rejects_bad_parameters(self, rate: float, burst: float) -> None:
        with pytest.raises(ValueError):
            TokenBucket(rate=rate, burst=burst, now=T0)

    @given(
        rate=st.floats(0.1, 100.0),
        burst=st.floats(1.0, 50.0),
        steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 10.0)), max_size=60),
    )
    def test_never_grants_more_than_burst_plus_refill(
        self, rate: float, burst: float, steps: list[tuple[float, float]]
    ) -> None:
        bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
        now = granted = 0.0
        for dt, cost in steps:
            now += dt
            if bucket.take(now, cost):
                granted += cost
            assert 0.0 <= bucket.available(now) <= burst
        assert granted <= burst + rate * now + 1e-6

    @given(
        rate=st.floats(0.0, 1e5),
        burst=st.floats(1.0, 1e5),
        steps=st.lists(st.tuples(st.floats(-1.0, 5.0), st.floats(0.0, 2e3)), max_size=60),
    )
    def test_takes_exactly_what_the_textbook_bucket_takes(
        self, rate: float, burst: float, steps: list[tuple[float, float]]
    ) -> None:
        # The bucket refills without min() (it runs twice per message); to the last bit, it keeps the
        # tokens and answers of the plain formula: refill = min(burst, tokens + elapsed * rate).
        bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
        tokens, last, now = burst, 0.0, 0.0
        for dt, cost in steps:
            now += dt
            expected = min(burst, tokens + (now - last) * rate) if now > last else tokens
            assert bucket.available(now) == expected
            if now > last:
                tokens, last = expected, now
            took = tokens >= cost
            if took:
                tokens -= cost
            assert bucket.take(now, cost) is took
            assert bucket.available(now) == tokens


class TestSlidingWindowCounter:
    def test_counts_within_window(self) -> None:
        counter = SlidingWindowCounter(window=10.0, buckets=10)
        for i in range(5):
            counter.add(T0 + i)
        assert counter.count(T0 + 4) == 5
        counter.add(T0 + 4, n=3)
        assert counter.count(T0 + 4.5) == 8

    def test_window_expiry(self) -> None:
        counter = SlidingWindowCounter(window=10.0, buckets=10)
        counter.add(T0 + 0.5, n=7)
        counter.add(T0 + 5.5, n=2)
        assert counter.count(T0 + 9.9) == 9
        assert counter.count(T0 + 10.5) == 2  # the first bucket left the window
        assert counter.count(T0 + 15.5) == 0
        assert counter.count(T0 + 1e6) == 0

    def test_ring_reuses_slots_after_expiry(self) -> None:
        counter = SlidingWindowCounter(window=1.0, buckets=4)
        counter.add(T0, n=100)
        counter.add(T0 + 1.0, n=1)  # same ring slot, one lap later: must reset, not accumulate
        assert counter.count(T0 + 1.0) == 1

    def test_late_event_older_than_ring_is_dropped(self) -> None:
        counter = SlidingWindowCounter(window=1.0, buckets=4)
        counter.add(T0 + 1.0)
        counter.add(T0, n=50)  # same ring slot as T0 + 1.0, but one lap older
        assert counter.count(T0 + 1.0) == 1

    def test_memory_is_bounded(self) -> None:
        counter = SlidingWindowCounter(window=60.0, buckets=12)
        for i in range(10_000):
            counter.add(T0 + i * 0.37)
        assert len(counter._counts) == 12 and len(counter._slots) == 12

    @pytest.mark.parametrize(("window", "buckets"), [(0.0, 1), (-1.0, 4), (math.inf, 4), (1.0, 0)])
    def test_rejects_bad_parameters(self, window: float, buckets: int) -> None:
        with pytest.raises(ValueError):
            SlidingWindowCounter(window=window, buckets=buckets)

    @given(
        buckets=st.integers(1, 12),
        times=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=80),
        probe=st.floats(0.0, 120.0),
    )
    def test_error_band_is_one_bucket(self, buckets: int, times: list[float], probe: float) -> None:
        window = 10.0
        counter = SlidingWindowCounter(window=window, buckets=buckets)
        times.sort()
        for t in times:
            if t <= probe:
                counter.add(t)
        width = window / buckets
        seen = [t for t in times if t <= probe]
        # Exact bounds up to float rounding at slot edges, hence the small slack.
        surely_in = sum(1 for t in seen if probe - t < window - width - 1e-9)
        maybe_in = sum(1 for t in seen if probe - t < window + 1e-9)
        assert surely_in <= counter.count(probe) <= maybe_in
