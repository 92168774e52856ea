"""Micro-benchmark of the gateway's routing core (not a test): PUBLISH bytes in → Send actions out.

    .venv/bin/python scripts/bench_core.py [--repeat R]
    PYTHONPATH=/path/to/other/checkout .venv/bin/python scripts/bench_core.py   # the same on another tree

A real Gateway (policy engine, registry, broker) on a fresh data directory, driven in-process without
sockets or TLS, so a change to decode → decide → route → encode shows up without the noise of the
network path. "1→1" feeds bursts of 100 QoS 0 PUBLISHes from `dispatch` to one subscribed unit (one
receive() call per burst); "fan-in" feeds one PUBLISH per receive() call from 1,000 units to one
wildcard subscriber (per-call overhead included). Prints the best of R runs. Machines here are noisy
and shared: compare two trees by alternating them, several times, on the same machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from device_sim.load.identities import BulkIssuer, unit_ids
from gateway.app.runtime import Gateway
from gateway.broker import Broker
from gateway.config import load_config
from gateway.mqtt.client import MqttClient
from gateway.mqtt.packets import ProtocolVersion
from gateway.policy.peer import Peer
from gateway.stores.datadir import DataDir
from pki.names import Identity

UNITS = 1000


def _peer(kind: str, ident: str, trust_domain: str) -> Peer:
    return Peer("127.0.0.1:1", Identity(kind, ident, trust_domain), None, None)


def _connect(broker: Broker, peer: Peer, version: ProtocolVersion, now: float, sub: str | None = None) -> int:
    assert peer.identity is not None
    client = MqttClient(peer.identity.id, version=version)
    client.connect()
    conn = broker.open(peer, now)
    broker.receive(conn, client.data_to_send(), now)
    if sub is not None:
        client.subscribe(sub, qos=0)
        broker.receive(conn, client.data_to_send(), now)
    return conn


def one_to_one(gw: Gateway, version: ProtocolVersion, repeat: int) -> float:
    broker, td, now = gw.broker, gw.trust_domain, time.time()
    _connect(broker, _peer("unit", "TRK-00001", td), version, now, "fleet/TRK-00001/control/#")
    publisher = MqttClient("dispatch", version=version)
    pub = _connect(broker, _peer("service", "dispatch", td), version, now)
    for _ in range(100):
        publisher.publish("fleet/TRK-00001/control/bench", bytes(100), qos=0)
    burst = publisher.data_to_send()
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(300):
            broker.receive(pub, burst, now)
        best = max(best, 300 * 100 / (time.perf_counter() - started))
    return best


def fan_in(gw: Gateway, repeat: int) -> float:
    broker, td, now = gw.broker, gw.trust_domain, time.time()
    version = ProtocolVersion.MQTT_5
    _connect(broker, _peer("service", "analytics", td), version, now, "fleet/+/telemetry/#")
    units = []
    for unit in unit_ids(UNITS):
        conn = _connect(broker, _peer("unit", unit, td), version, now)
        client = MqttClient(unit, version=version)
        client.publish(f"fleet/{unit}/telemetry/gps", bytes(100), qos=0)
        units.append((conn, client.data_to_send()))
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(10):
            now += 1.0  # a second later each round: every unit stays within its rate limit
            for conn, data in units:
                broker.receive(conn, data, now)
        best = max(best, 10 * UNITS / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetgate-core-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run(
            [sys.executable, "-m", "gateway", "init", "--data", str(data), "--hostname", "localhost",
             "--insecure-unencrypted-keys"],
            check=True, capture_output=True,
        )  # fmt: skip
        with BulkIssuer(data) as issuer:
            issuer.units(unit_ids(UNITS), Path(tmp) / "units")
            issuer.roles("service", ["dispatch", "analytics"], Path(tmp) / "services")
        for name, version in (("5.0", ProtocolVersion.MQTT_5), ("3.1.1", ProtocolVersion.MQTT_3_1_1)):
            gw = Gateway(DataDir(data), load_config(None))
            print(f"1→1 QoS 0, MQTT {name:5}   {one_to_one(gw, version, args.repeat):>10,.0f} msg/s")
        gw = Gateway(DataDir(data), load_config(None))
        print(f"fan-in, {UNITS} units, MQTT 5.0 {fan_in(gw, args.repeat):>8,.0f} msg/s")


if __name__ == "__main__":
    main()
