"""One broker publish-observer slot, many observers: detectors, partner views, posture, flows.

The broker calls its single observer for every client PUBLISH the policy accepted, in the middle of
routing that message. Observers here must therefore be cheap and must not route anything themselves
(`broker.publish_internal` would re-enter the broker mid-routing): whoever produces messages buffers
them and publishes from a `loop.call_soon` (see gateway/context/partner_views.py).

An observer that raises is logged and counted, never allowed to break routing of the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.policy.peer import Peer

log = logging.getLogger("fleetgate.observers")

PublishObserver = Callable[[Peer, str, bytes, float], None]


class PublishFanout:
    """Calls each observer in the order added; the broker holds only this."""

    __slots__ = ("_observers", "errors")

    def __init__(self, *observers: PublishObserver) -> None:
        self._observers: tuple[PublishObserver, ...] = observers
        self.errors = 0

    def add(self, observer: PublishObserver) -> None:
        self._observers = (*self._observers, observer)

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        """Give an accepted PUBLISH to every observer. The broker is handed this bound method, not the
        fan-out itself: CPython 3.11 calls a bound method inline, but an object's __call__ through C,
        which cost ~0.2 µs more per message (docs/benchmarks.md, issue 18, fifth round)."""
        for observer in self._observers:
            try:
                observer(peer, topic, payload, now)
            except Exception:
                self.errors += 1
                if self.errors <= 10 or self.errors % 1000 == 0:  # an observer bug must not flood the log
                    log.exception("publish observer %r failed (%d so far)", observer, self.errors)
