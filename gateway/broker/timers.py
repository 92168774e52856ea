"""A deadline per key, popped when due: the broker's only notion of time passing.

One heap for every kind of timer (connect timeout, keep-alive, will delay, session expiry, retained
message expiry). Setting a key again just records the new deadline; the old heap entry becomes stale
and is skipped when it surfaces, so rescheduling is O(log n) with no search. The heap is rebuilt when
stale entries dominate, which bounds its size by a small multiple of the live timers.

Keep-alive does not reschedule on every packet (that would be a heap push per PUBLISH): its timer
holds the deadline computed when it was armed, and when it fires the broker compares with the real
deadline and re-arms if the client was heard from meanwhile.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimerQueue(Generic[K]):
    __slots__ = ("_deadlines", "_heap", "_seq")

    def __init__(self) -> None:
        self._deadlines: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0  # tie-breaker: keys need not be orderable

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def set(self, key: K, deadline: float) -> None:
        if self._deadlines.get(key) == deadline:
            return
        self._deadlines[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))
        if len(self._heap) > 64 and len(self._heap) > 3 * len(self._deadlines):
            self._compact()

    def cancel(self, key: K) -> None:
        self._deadlines.pop(key, None)

    def deadline(self, key: K) -> float | None:
        return self._deadlines.get(key)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, key = heap[0]
            if self._deadlines.get(key) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: cancelled or rescheduled
        return None

    def pop_due(self, now: float) -> list[K]:
        """Keys whose deadline is <= now, earliest first; they are removed."""
        due: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if self._deadlines.get(key) == deadline:
                del self._deadlines[key]
                due.append(key)
        return due

    def _compact(self) -> None:
        self._heap = [(d, i, k) for i, (k, d) in enumerate(self._deadlines.items())]
        heapq.heapify(self._heap)
        self._seq = len(self._heap)
