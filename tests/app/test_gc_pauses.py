"""fleetgate_gc_pause_seconds: every collection of the cycle collector, by generation, while installed."""

from __future__ import annotations

import gc

from gateway.app.gc_pauses import GcPauses


def test_each_collection_is_timed_under_its_generation_and_only_while_installed() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # a second install does not count twice
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        pauses.uninstall()
    full, young = pauses.by_generation["2"], pauses.by_generation["0"]
    assert full.count == 1 and full.total > 0
    assert young.count >= 1
    gc.collect(2)
    assert full.count == 1
    assert pauses._observe not in gc.callbacks
