"""Micro-benchmark of outbound topic aliases (not a test): bytes and CPU per delivered message.

    PYTHONPATH=. .venv/bin/python scripts/bench_aliases.py [--repeat R] [--messages N]

The broker core alone (the built-in policy floor, no registry, no sockets, no TLS), so what differs
between two rows is the alias rewrite and nothing else. Each case runs twice: the subscriber's CONNECT
says Topic Alias Maximum 32 ("aliases") or says nothing ("plain"). A case feeds N PUBLISHes, one per
receive() call (the realistic fan-in shape), and reports the bytes sent per delivered message and the
broker's wall time per PUBLISH (best of R runs; the machines here are shared, so compare rows of one
run, not runs).

- `1 topic`: one unit's GPS stream (`fleet/TRK-00042/telemetry/gps`, 60-byte JSON) to one subscriber.
- `fan-out 50`: the same stream to 50 subscribers (each gets its own alias rewrite).
- `100 topics`: 100 units' GPS streams in turn to one subscriber: more topics than its 32 aliases,
  the case where naive LRU aliasing would evict on every message.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

from gateway.broker import Broker, BrokerLimits, Send
from gateway.mqtt.client import MqttClient
from gateway.mqtt.codec import encode_publish, with_topic_alias
from gateway.mqtt.packets import Properties, ProtocolVersion, Publish
from gateway.policy.access import CertificateOnlyPolicy
from gateway.policy.peer import Peer
from pki.names import Identity

V5 = ProtocolVersion.MQTT_5
PAYLOAD = b'{"ts":1765000000,"lat":52.123456,"lon":4.654321,"speed":81.5}'


def _peer(kind: str, ident: str) -> Peer:
    return Peer("127.0.0.1:1", Identity(kind, ident, "fleet.local"))


def _connect(broker: Broker, kind: str, ident: str, aliases: int | None, sub: str | None = None) -> int:
    client = MqttClient(ident, version=V5, properties=Properties(topic_alias_maximum=aliases))
    client.connect()
    conn = broker.open(_peer(kind, ident), 0.0)
    broker.receive(conn, client.data_to_send(), 0.0)
    if sub is not None:
        client.subscribe(sub, qos=0)
        broker.receive(conn, client.data_to_send(), 0.0)
    return conn


def run(units: int, subscribers: int, qos: int, aliases: int | None, messages: int) -> tuple[float, float]:
    """(bytes out per delivered message, microseconds per PUBLISH handled)."""
    broker = Broker(CertificateOnlyPolicy(), BrokerLimits(max_inflight=65535))
    subs = {_connect(broker, "service", f"s{i}", aliases, "fleet/+/telemetry/#") for i in range(subscribers)}
    feeds: list[tuple[int, bytes]] = []
    for u in range(units):
        ident = f"TRK-{u:05d}"
        conn = _connect(broker, "unit", ident, None)
        client = MqttClient(ident, version=V5)
        client.publish(f"fleet/{ident}/telemetry/gps", PAYLOAD, qos=qos)
        feeds.append((conn, client.data_to_send()))
    sent = 0
    started = time.perf_counter()
    for i in range(messages):
        conn, data = feeds[i % units]
        for action in broker.receive(conn, data, float(i)):
            if isinstance(action, Send) and action.conn in subs:
                sent += len(action.data)
    elapsed = time.perf_counter() - started
    return sent / (messages * subscribers), elapsed / messages * 1e6


CASES: dict[str, Callable[[int, int | None, int], tuple[float, float]]] = {
    "1 topic, QoS 0": lambda q, a, n: run(1, 1, 0, a, n),
    "1 topic, QoS 1": lambda q, a, n: run(1, 1, 1, a, n),
    "fan-out 50, QoS 0": lambda q, a, n: run(1, 50, 0, a, n // 10),
    "100 topics, QoS 0": lambda q, a, n: run(100, 1, 0, a, n),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{'case':20} {'mode':8} {'bytes/msg':>10} {'µs/PUBLISH':>11}")
    for name, case in CASES.items():
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "aliases": []}
        for _ in range(args.repeat):  # the two modes alternate, so a busy minute hits both alike
            for mode, aliases in (("plain", None), ("aliases", 32)):
                results[mode].append(case(0, aliases, args.messages))
        for mode, runs in results.items():
            print(f"{name:20} {mode:8} {runs[0][0]:>10.1f} {min(us for _, us in runs):>11.2f}")
    data = encode_publish(Publish("fleet/TRK-00042/telemetry/gps", PAYLOAD), V5)
    calls = 200_000
    best = min(
        timeit.timeit(lambda: with_topic_alias(data, 1, send_topic=False), number=calls) for _ in range(5)
    )
    print(f"the rewrite alone (codec.with_topic_alias, alias in use): {best / calls * 1e6:.2f} µs per call")


if __name__ == "__main__":
    main()
