"""What the hardening tests share: RSS of the gateway process, its metrics, figures, v5 paho clients
that record every acknowledgement without blocking, and a bystander that checks its own delivery rate."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import metric

FIGURES = Path(os.environ.get("FLEETGATE_FIGURES", "/tmp/fleetgate-hardening-figures.jsonl"))


def record_figure(name: str, **values: Any) -> None:
    """Append one measured figure (docs/reliability.md is written from these)."""
    with FIGURES.open("a") as out:
        out.write(json.dumps({"figure": name, "at": time.time(), **values}) + "\n")


def rss_kib(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def internal_errors(gw: GatewayProcess) -> float:
    return metric(gw, "internal_errors")


def v5_client(
    creds: Credentials, *, clean: bool = True, expiry: int | None = None, bind: str = ""
) -> tuple[mqtt.Client, Properties]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=creds.ident, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set(ca_certs=str(creds.ca), certfile=str(creds.cert), keyfile=str(creds.key))
    client.reconnect_delay_set(60, 60)  # a test decides when to reconnect, paho does not
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
    if expiry is not None:
        props.SessionExpiryInterval = expiry
    return client, props


@dataclass
class AckLog:
    """Every publish sent and every acknowledgement received (PUBACK for QoS 1, PUBCOMP for QoS 2)."""

    sent: dict[int, tuple[str, int]] = field(default_factory=dict)  # mid → (payload, qos)
    acked: dict[int, int] = field(default_factory=dict)  # mid → reason code
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.lock:
            self.acked[mid] = int(reason.value)

    def acknowledged(self) -> dict[str, int]:
        """payload → qos of every message the gateway accepted (reason < 0x80)."""
        with self.lock:
            return {
                self.sent[m][0]: self.sent[m][1] for m, r in self.acked.items() if r < 0x80 and m in self.sent
            }


class Collector:
    """Messages received on one paho client, with arrival times."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str, bytes, int]] = []
        self.lock = threading.Lock()

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.got.append((time.monotonic(), message.topic, bytes(message.payload), message.qos))

    def payloads(self) -> list[str]:
        with self.lock:
            return [p.decode(errors="replace") for _, _, p, _ in self.got]

    def wait_quiet(self, quiet: float = 1.5, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            time.sleep(quiet)
            with self.lock:
                count = len(self.got)
            if count == last:
                return
            last = count


class Bystander:
    """A unit publishing QoS 1 at a steady rate to a subscriber, in threads, while attacks run.

    `report()` gives sent/acked/received and the received rate, so a test can assert that an attack
    on someone else cost this pair nothing."""

    def __init__(self, gw: GatewayProcess, unit: Credentials, sub: Credentials, rate: float = 10.0) -> None:
        self.rate = rate
        self.unit = unit
        self.collector = Collector()
        self.acks = AckLog()
        self.sub, sub_props = v5_client(sub)
        self.sub.on_message = self.collector.on_message
        self.sub.connect("localhost", gw.mqtt_port, properties=sub_props)
        self.sub.loop_start()
        self.sub.subscribe(f"fleet/{unit.ident}/telemetry/#", qos=1)
        self.pub, pub_props = v5_client(unit)
        self.pub.on_publish = self.acks.on_publish
        self.pub.connect("localhost", gw.mqtt_port, properties=pub_props)
        self.pub.loop_start()
        time.sleep(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0
        self.stopped = 0.0
        self.disconnects = 0
        self.sub.on_disconnect = self._lost
        self.pub.on_disconnect = self._lost

    def _lost(self, *args: Any) -> None:
        if not self._stop.is_set():  # our own disconnect at the end is not a loss
            self.disconnects += 1

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            payload = f"by-{seq}"
            info = self.pub.publish(f"fleet/{self.unit.ident}/telemetry/gps", payload, qos=1)
            with self.acks.lock:
                self.acks.sent[info.mid] = (payload, 1)
            seq += 1
            self._stop.wait(1.0 / self.rate)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        self.stopped = time.monotonic()
        self.collector.wait_quiet(1.0, 10)
        for client in (self.pub, self.sub):
            client.disconnect()
            client.loop_stop()
        return self.report()

    def report(self) -> dict[str, Any]:
        acked = self.acks.acknowledged()
        received = set(self.collector.payloads())
        seconds = max(0.001, self.stopped - self.started)
        return {
            "sent": len(self.acks.sent),
            "acked": len(acked),
            "received": len(received),
            "missing": len(set(acked) - received),
            "rate_sent": round(len(self.acks.sent) / seconds, 2),
            "rate_received": round(len(received) / seconds, 2),
            "disconnects": self.disconnects,
        }
