"""fleetgate_gc_pause_seconds: every collection of the cycle collector, by generation, while installed."""

from __future__ import annotations

import gc
import re

from gateway.app.gc_pauses import GcPauses
from tests.harness import GatewayProcess
from tests.ops.helpers import metrics_text


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


def test_a_served_gateway_leaves_its_start_up_objects_out_of_full_collections(
    gateway: GatewayProcess,
) -> None:
    # `fleetgate serve` freezes what start-up built (modules, policy, CA, registry) before it
    # listens: a full collection then walks only what serving made (app/gc_pauses.py).
    text = metrics_text(gateway)
    (frozen,) = re.findall(r"^fleetgate_gc_frozen_objects ([0-9.e+]+)$", text, re.M)
    assert float(frozen) > 20_000
    assert re.search(r'^fleetgate_gc_pause_seconds_count\{generation="0"\} [1-9]', text, re.M)
