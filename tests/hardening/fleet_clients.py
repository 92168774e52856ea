"""MQTT clients over mTLS for the flow-control tests, each a sans-IO `MqttClient` on one asyncio
Protocol, all in the test's event loop: units that publish telemetry within a window of their own and
answer vehicle-control commands at once, a subscriber that takes messages at a chosen rate (or not at
all), and a dispatch service that times its control commands' round trips.

They know exactly which of their messages the gateway acknowledged (packet id → PUBACK), so a test can
compare what was acknowledged with what arrived, message by message, not only by count.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_sim.load.client import ClientIdentity, client_context
from gateway.mqtt.client import MqttClient, PublishDone
from gateway.mqtt.packets import Connack, Disconnect, Properties, Publish, Suback, Subscription

SEQ = 8  # bytes of sequence number (or send time) at the start of every payload


def stamp(value: int, size: int = 100) -> bytes:
    return value.to_bytes(SEQ, "big") + bytes(max(0, size - SEQ))


def seq_of(payload: bytes) -> int:
    return int.from_bytes(payload[:SEQ], "big")


class Peer(asyncio.Protocol):
    """One connection: the client core, its transport, and callbacks for what arrives."""

    def __init__(self, ident: str, **client: Any) -> None:
        self.client = MqttClient(ident, **client)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[Connack] = loop.create_future()
        self._subacks: list[asyncio.Future[Suback]] = []
        self.on_publish: Callable[[Publish], None] = lambda p: None
        self.on_done: Callable[[PublishDone], None] = lambda d: None
        self.disconnect: Disconnect | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.connect()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost = True

    def data_received(self, data: bytes) -> None:
        for event in self.client.receive_data(data):
            if isinstance(event, Publish):
                self.on_publish(event)
            elif isinstance(event, PublishDone):
                self.on_done(event)
            elif isinstance(event, Connack) and not self.connack.done():
                self.connack.set_result(event)
            elif isinstance(event, Suback) and self._subacks:
                self._subacks.pop(0).set_result(event)
            elif isinstance(event, Disconnect):
                self.disconnect = event
        self.flush()

    def flush(self) -> None:
        data = self.client.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> Suback:
        future: asyncio.Future[Suback] = asyncio.get_running_loop().create_future()
        self._subacks.append(future)
        self.client.subscribe(Subscription(topic_filter, qos))
        self.flush()
        return await asyncio.wait_for(future, 10)

    def ping(self) -> None:
        self.client.ping()
        self.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.client.disconnect()
            self.flush()
            self.transport.close()


async def connect(port: int, identity: ClientIdentity, ca: Path, peer: Peer) -> Peer:
    context: ssl.SSLContext = client_context(identity, ca)
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: peer, "127.0.0.1", port, ssl=context, server_hostname="localhost")
    connack = await asyncio.wait_for(peer.connack, 15)
    assert connack.reason_code == 0, (identity.ident, connack)
    return peer


class Unit:
    """A truck: telemetry at QoS 1 within a window of unacknowledged messages (a send with the window
    full is skipped and counted: the unit is being slowed down), and control commands answered at once
    on fleet/{id}/control/{cmd}/ack, ahead of its telemetry."""

    def __init__(self, ident: str, window: int = 20) -> None:
        self.ident = ident
        self.peer = Peer(ident)
        self.window = window
        self.topic = f"fleet/{ident}/telemetry/gps"
        self.next_seq = 0
        self.pending: dict[int, int] = {}  # packet id → telemetry seq, not yet acknowledged
        self.acked: list[int] = []  # seqs acknowledged with success, in the order the PUBACKs came
        self.refused: list[int] = []
        self.skipped = 0  # sends not made because the window was full
        self.peer.on_done = self._done
        self.peer.on_publish = self._command

    def publish(self) -> None:
        if len(self.pending) >= self.window:
            self.skipped += 1
            return
        packet_id = self.peer.client.publish(self.topic, stamp(self.next_seq), qos=1)
        assert packet_id is not None
        self.pending[packet_id] = self.next_seq
        self.next_seq += 1
        self.peer.flush()

    def _done(self, done: PublishDone) -> None:
        seq = self.pending.pop(done.packet_id, None)
        if seq is not None:
            (self.acked if done.reason_code < 0x80 else self.refused).append(seq)

    def _command(self, publish: Publish) -> None:
        if "/control/" in publish.topic and not publish.topic.endswith("/ack"):
            self.peer.client.publish(publish.topic + "/ack", publish.payload, qos=1)
            self.peer.flush()


class Subscriber:
    """A service that takes the messages it receives at `rate` per second and acknowledges each when
    it takes it (None: at once; 0: not at all, though it keeps reading its socket and answering)."""

    def __init__(self, ident: str, rate: float | None, **client: Any) -> None:
        self.peer = Peer(ident, auto_ack=False, **client)
        self.rate = rate
        self.inbox: deque[Publish] = deque()
        self.taken: list[tuple[str, int]] = []  # (topic, seq) in the order taken
        self.peer.on_publish = self._arrived
        self._task: asyncio.Task[None] | None = None

    def _arrived(self, publish: Publish) -> None:
        self.inbox.append(publish)
        if self.rate is None:
            self._take_all()

    def _take(self) -> None:
        publish = self.inbox.popleft()
        self.taken.append((publish.topic, seq_of(publish.payload)))
        self.peer.client.ack(publish)

    def _take_all(self) -> None:
        while self.inbox:
            self._take()
        self.peer.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last_ping = time.monotonic()
        while True:
            rate = self.rate
            if rate is None:
                self._take_all()
                await asyncio.sleep(0.05)
            elif rate > 0 and self.inbox:
                self._take()
                self.peer.flush()
                await asyncio.sleep(1 / rate)
            else:
                await asyncio.sleep(0.05)
            if time.monotonic() - last_ping > 20:  # alive, whatever it does with its messages
                self.peer.ping()
                last_ping = time.monotonic()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def by_topic(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for topic, seq in self.taken:
            out.setdefault(topic, []).append(seq)
        return out


class Dispatch:
    """The dispatch service: a control command to a unit every `period` s, timed until the unit's ack
    comes back (the round trip of the vehicle-control channel)."""

    def __init__(self, ident: str = "dispatch") -> None:
        self.peer = Peer(ident)
        self.rtt_ms: dict[str, list[float]] = {}
        self.peer.on_publish = self._ack

    def _ack(self, publish: Publish) -> None:
        unit = publish.topic.split("/")[1]
        self.rtt_ms.setdefault(unit, []).append((time.perf_counter_ns() - seq_of(publish.payload)) / 1e6)

    async def command(self, units: list[str], seconds: float, period: float = 0.1) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for unit in units:
                sent = stamp(time.perf_counter_ns(), 16)
                self.peer.client.publish(f"fleet/{unit}/control/ping", sent, qos=1)
            self.peer.flush()
            await asyncio.sleep(period)

    def summary(self, unit: str, start: int = 0, end: int | None = None) -> dict[str, float]:
        """Round-trip percentiles of the commands to `unit`, those numbered start..end."""
        values = sorted(self.rtt_ms.get(unit, [])[start:end])
        if not values:
            return {"count": 0}
        return {
            "count": len(values),
            "p50_ms": round(statistics.median(values), 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            "max_ms": round(values[-1], 1),
        }


async def quiet(sub: Subscriber, seconds: float = 2.0, limit: float = 60.0) -> None:
    """Until nothing has arrived at `sub` for `seconds` (at most `limit`)."""
    deadline = time.monotonic() + limit
    last, since = len(sub.taken), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < seconds:
        await asyncio.sleep(0.05)
        if len(sub.taken) != last:
            last, since = len(sub.taken), time.monotonic()


async def until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(interval)
    return check()


PERSISTENT = Properties(session_expiry_interval=3600)
