"""Micro-benchmark of the MQTT codec's hot path (not a test): decode and encode_publish rates.

    .venv/bin/python scripts/bench_codec.py [--packets N] [--repeat R]

The message is a QoS 0 PUBLISH with a 100-byte payload. "decode, burst" feeds N packets in one call
and drains them (what one large read does); "decode, one per feed" feeds and reads one packet at a time
(small reads). Prints the best of R runs, in packets per second, for both protocol versions. Machines
here are noisy and shared: compare ratios between runs on the same machine, not absolute numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from gateway.mqtt.codec import PacketReader, encode_publish
from gateway.mqtt.packets import ProtocolVersion, Publish


def _best_rate(run: Callable[[], None], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n: int = args.packets

    publish = Publish("fleet/truck-0042/telemetry/gps", bytes(range(100)), qos=0)
    for version in (ProtocolVersion.MQTT_3_1_1, ProtocolVersion.MQTT_5):
        wire = encode_publish(publish, version)
        burst = wire * n

        def decode_burst(burst: bytes = burst, version: ProtocolVersion = version) -> None:
            reader = PacketReader(version=version)
            reader.feed(burst)
            next_packet = reader.next_packet
            while next_packet() is not None:
                pass

        def decode_each(wire: bytes = wire, version: ProtocolVersion = version) -> None:
            reader = PacketReader(version=version)
            feed, next_packet = reader.feed, reader.next_packet
            for _ in range(n):
                feed(wire)
                next_packet()

        def encode_many(version: ProtocolVersion = version) -> None:
            for _ in range(n):
                encode_publish(publish, version)

        print(f"MQTT {'5.0' if version == ProtocolVersion.MQTT_5 else '3.1.1'} ({len(wire)}-byte packet):")
        print(f"  decode, burst        {_best_rate(decode_burst, n, args.repeat):>12,.0f} packets/s")
        print(f"  decode, one per feed {_best_rate(decode_each, n, args.repeat):>12,.0f} packets/s")
        print(f"  encode_publish       {_best_rate(encode_many, n, args.repeat):>12,.0f} packets/s")


if __name__ == "__main__":
    main()
