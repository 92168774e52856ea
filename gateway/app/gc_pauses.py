"""How long CPython's cycle collector stops the event loop, by generation: `fleetgate_gc_pause_seconds`.

The whole gateway is one thread, so a collection is a pause of every connection at once. The young
generations are collected in microseconds; a full (generation 2) collection walks every tracked object
of every session, which at 10,000 units took ~400 ms, and when objects that outlive a few young
collections were made at thousands a second, one ran every few seconds (docs/benchmarks.md, "Third
round"). That shows as a p99 in the hundreds of milliseconds with nothing else to explain it; this
histogram says so directly, and an alert (deploy/prometheus/fleetgate-rules.yml) says when full
collections take more than a small share of the time.

Measured by `gc.callbacks` ("start" and "stop" of every collection): two calls per collection, a few
hundred young collections a second under load, each a clock read and a bucket count.

`freeze_startup_heap`: `fleetgate serve` moves what start-up built (modules, the policy, the CA, the
registry's caches: ~80,000 objects) to the permanent generation before its listeners open, so a full
collection walks only what serving made. With 1,000 units connected that was 33,000-46,000 objects
instead of 100,000-135,000: a full collection took 12-15 ms instead of 55-65 ms (a probe during the
fan-in bench, docs/benchmarks.md "Fourth round"), and one follows every connect burst. What it
costs: start-up objects a policy reload replaces are freed by their reference counts as before, but
any among them that form a cycle are never collected (a few kilobytes per reload). Nothing
connected is frozen: no client can have connected yet. `fleetgate_gc_frozen_objects` says how many.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from gateway.broker.histogram import Histogram

GENERATIONS = ("0", "1", "2")


class GcPauses:
    def __init__(self) -> None:
        self.by_generation = {generation: Histogram() for generation in GENERATIONS}
        self.frozen = 0  # objects in the permanent generation (freeze_startup_heap)
        self._started = 0.0
        self._installed = False

    def freeze_startup_heap(self) -> int:
        """Collect start-up's garbage, then freeze every object alive now (see the module doc). Call
        it once, before any client can connect; returns how many objects were frozen."""
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        return self.frozen

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._observe)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._observe)
            self._installed = False

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        histogram = self.by_generation.get(str(info.get("generation")))
        if histogram is not None:
            histogram.observe(time.perf_counter() - self._started)
