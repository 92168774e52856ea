"""What a cross-node hop costs a QoS 1 message: PUBLISH→PUBACK and publish→delivery, p50/p99.

Four cases in one run, each on fresh nodes: both clients on one node (no hop), publisher on node A
and subscriber on node B over core NATS (`cluster.jetstream_replicas: 0`), and the same over
JetStream R1 and R3 (the default: PUBACK once stored on three servers). Three local nats-servers
with JetStream, a throwaway PostgreSQL, real paho clients over mTLS (an ops operator publishing
QoS 1 commands, another receiving them). Run from a checkout:

    PYTHONPATH=. .venv/bin/python scripts/bench_cluster_hop.py --rate 1000 --seconds 10

Loopback only; bounded in count and time. The machine is shared: read the numbers as indications.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.clients import V311, Paho
from tests.harness import free_port
from tests.nats import NatsServer, wait_for_jetstream
from tests.pg import PgCluster


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Sub(Paho):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.latencies: list[float] = []
        self.client.on_message = self._timed

    def _timed(self, client: Any, userdata: Any, message: Any) -> None:
        sent = int(bytes(message.payload).split(b" ")[0])
        self.latencies.append((time.time_ns() - sent) / 1e6)


def _case(
    name: str, root: Path, url: str, nats: str, replicas: str, hop: bool, rate: int, seconds: float
) -> str:
    from tests.harness import GatewayProcess

    def node(sub: str, label: str) -> GatewayProcess:
        env = {
            "FLEETGATE_DATABASE_URL": url,
            "FLEETGATE_CLUSTER_NODE_NAME": label.replace(" ", "-")
            .replace(",", "")
            .replace("(", "")
            .replace(")", ""),
            "FLEETGATE_CLUSTER_NATS": nats,
            "FLEETGATE_CLUSTER_JETSTREAM_REPLICAS": replicas,
        }
        return GatewayProcess(root / sub, env=env)

    a = node("a", f"{name}-a")
    a.init()
    b = node("b", f"{name}-b")
    shutil.copytree(a.data, b.data)
    a.start()
    b.start()
    try:
        pub_creds = a.issue("operator", "bench-pub", "--role", "ops")
        sub_creds = a.issue("operator", "bench-sub", "--role", "ops")
        sub = Sub((b if hop else a).mqtt_port, sub_creds)
        assert sub.connect()[0] == 0
        assert sub.subscribe("fleet/+/cmd/#", 1) == [1]
        pub = Paho(a.mqtt_port, pub_creds, version=V311)
        pub.client.max_inflight_messages_set(65000)
        assert pub.connect()[0] == 0
        sent_at: dict[int, float] = {}
        acked_at: dict[int, float] = {}  # no lock shared with paho's thread: matched after the run

        def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            acked_at[mid] = time.perf_counter()

        pub.client.on_publish = on_publish
        # warm up: until messages cross (the receiving node's subscription or consumer is in place)
        deadline = time.monotonic() + 30
        while not sub.latencies and time.monotonic() < deadline:
            pub.client.publish("fleet/TRK-B/cmd/bench", f"{time.time_ns()} warm".encode(), qos=1)
            time.sleep(0.2)
        time.sleep(1.0)
        sub.latencies.clear()
        acked_at.clear()
        period = 1 / rate
        count = int(rate * seconds)
        start = time.perf_counter()
        for i in range(count):
            target = start + i * period
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            before = time.perf_counter()
            info = pub.client.publish("fleet/TRK-B/cmd/bench", f"{time.time_ns()} {i}".encode(), qos=1)
            sent_at[info.mid] = before
        time.sleep(3.0)
        acked = [(acked_at[m] - t) * 1000 for m, t in sent_at.items() if m in acked_at]
        got = len(sub.latencies)
        line = (
            f"{name:<28} sent {count:>6}  acked {len(acked):>6}  delivered {got:>6}  "
            f"PUBLISH→PUBACK p50 {_pct(acked, 0.5):6.2f} ms p99 {_pct(acked, 0.99):7.2f} ms  "
            f"publish→delivery p50 {_pct(sub.latencies, 0.5):6.2f} ms p99 {_pct(sub.latencies, 0.99):7.2f} ms"
            f"  (mean delivery {statistics.fmean(sub.latencies) if sub.latencies else float('nan'):.2f} ms)"
        )
        pub.disconnect()
        sub.disconnect()
        return line
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="QoS 1 messages per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-hop-"))
    routes = [free_port() for _ in range(3)]
    servers = [
        NatsServer(root / "nats", cluster=(r, routes), jetstream=True, name=f"n{i}")
        for i, r in enumerate(routes)
    ]
    pg = PgCluster(root / "pg")
    pg.start()
    try:
        wait_for_jetstream(servers)
        nats = servers[0].url + "," + servers[1].url
        cases = [
            ("one node (no hop)", "0", False),
            ("cross-node, core NATS", "0", True),
            ("cross-node, JetStream R1", "1", True),
            ("cross-node, JetStream R3", "3", True),
        ]
        for i, (name, replicas, hop) in enumerate(cases):
            print(
                _case(
                    name, root / f"case{i}", pg.new_database(), nats, replicas, hop, args.rate, args.seconds
                ),
                flush=True,
            )
    finally:
        pg.stop()
        for s in servers:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
