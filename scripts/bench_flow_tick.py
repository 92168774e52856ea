"""The flow map's feed per event tick (not a test): 1,000 units, 5 PUBLISHes each per tick (20k msg/s at
four ticks a second), binary and JSON payloads, one service (`analytics`) receiving them all; the
publish observer's cost per message and the tick's per 5,000 messages, in this process, no sockets.

    .venv/bin/python scripts/bench_flow_tick.py
    cd OTHER_TREE && PYTHONPATH=. VENV/bin/python CHECKOUT/scripts/bench_flow_tick.py   # another tree
"""

from __future__ import annotations

import time
from importlib import resources

import yaml

from gateway.broker.limits import SessionInfo
from gateway.context.flow_feed import FlowFeed
from gateway.policy.data_classes import parse_data_classes
from gateway.policy.peer import Peer
from pki.names import Identity

UNITS, PER_TICK, ROUNDS, WARMUP = 1000, 5, 40, 5
JSON_FIX = (
    b'{"lat": 51.92231, "lon": 4.47917, "speed_kmh": 63.5, "heading": 270, "pad": "xxxxxxxxxxxxxxxxxxxx"}'
)


def main() -> None:
    policy = yaml.safe_load((resources.files("gateway") / "defaults" / "policy.yaml").read_text())
    classes = parse_data_classes(policy.get("data_classes"), "policy.yaml")
    peers = [Peer("10.0.0.1:5000", Identity("unit", f"TRK-{i:05d}", "fleet.local")) for i in range(UNITS)]
    topics = [f"fleet/TRK-{i:05d}/telemetry/gps" for i in range(UNITS)]
    analytics = Peer("10.0.0.2:5000", Identity("service", "analytics", "fleet.local"))
    subscriber = SessionInfo("analytics", analytics, True, ("fleet/+/telemetry/#",), 0, 0, 0.0, 0)
    for name, payload in (("binary", bytes(100)), ("JSON fix", JSON_FIX)):
        feed, now = FlowFeed(classes), 1000.0
        feed.tick([], now, [subscriber])
        observing = ticking = 0.0
        for r in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(PER_TICK):
                for peer, topic in zip(peers, topics, strict=True):
                    feed.observe(peer, topic, payload, now)
            observed = time.perf_counter()
            now += 0.25
            feed.tick([], now)
            if r >= WARMUP:
                observing += observed - started
                ticking += time.perf_counter() - observed
        measured, messages = ROUNDS - WARMUP, UNITS * PER_TICK
        print(
            f"{name}: observe {observing / measured / messages * 1e6:.2f} µs/message, "
            f"tick {ticking / measured * 1000:.2f} ms per {messages:,} messages"
        )


if __name__ == "__main__":
    main()
