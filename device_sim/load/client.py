"""A lean asyncio mTLS MQTT client for load runs: thousands per process, one Protocol each.

Control packets (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PING, DISCONNECT) go through the sans-IO
`MqttClient`, so the handshake is the one a real unit speaks. The data plane is a fast path a load
generator needs and a device does not: PUBLISHes are written from a pre-encoded template with only the
packet id and the 8-byte send timestamp patched in, and inbound PUBLISH/PUBACK frames are walked in
place (type, QoS, packet id, timestamp) without building packet objects. Decoding every message into
a dataclass would cost the generator as much CPU as the broker under test spends routing it, and the
two share a 2-core machine.

Timestamps are `time.perf_counter_ns()` of the sending process: publisher and subscriber live in the
same process, so one monotonic clock measures end-to-end latency without clock sync.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from gateway.mqtt.client import MqttClient
from gateway.mqtt.codec import encode_publish
from gateway.mqtt.packets import Connack, Disconnect, ProtocolVersion, Publish, Suback

__all__ = ["ClientIdentity", "LatencySink", "LeanClient", "PublishTemplate", "client_context", "open_client"]

_PUBACK = 4
_PUBLISH = 3
TIMESTAMP_BYTES = 8


@dataclass(frozen=True)
class ClientIdentity:
    ident: str  # client id = the certificate's id
    cert: Path  # leaf + chain, PEM
    key: Path


def client_context(identity: ClientIdentity, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


class LatencySink:
    """Where subscribers put what they received: a count, latencies in ns, and arrival marks.

    `marks` holds (arrival ns, count so far) about every `mark_ns`, so a report can cut the run into
    intervals (throughput and latency over time) without a timestamp per message.
    """

    def __init__(self, mark_ns: int = 250_000_000) -> None:
        self.count = 0
        self.latencies: array[int] = array("q")
        self.marks: list[tuple[int, int]] = []
        self._mark_ns = mark_ns
        self._next_mark = 0

    def mark(self, now: int) -> None:
        if now >= self._next_mark:
            self.marks.append((now, len(self.latencies)))
            self._next_mark = now + self._mark_ns


class PublishTemplate:
    """One topic's PUBLISH, encoded once; `frame(pid, ts)` patches the packet id and the timestamp."""

    def __init__(self, topic: str, payload_size: int, qos: int, version: ProtocolVersion) -> None:
        size = max(payload_size, TIMESTAMP_BYTES)
        filler = bytes(size - TIMESTAMP_BYTES)
        marker = b"\xa5" * TIMESTAMP_BYTES  # placeholder; its position is found, not computed
        wire = encode_publish(Publish(topic, marker + filler, qos, packet_id=1 if qos else None), version)
        at = wire.index(marker, len(wire) - size)
        self.qos = qos
        self._tail = wire[at + TIMESTAMP_BYTES :]
        if qos:
            pid_at = wire.index(topic.encode()) + len(topic.encode())
            self._head = wire[:pid_at]
            self._mid = wire[pid_at + 2 : at]
        else:
            self._head = wire[:at]
            self._mid = b""

    def frame(self, packet_id: int, ts_ns: int) -> bytes:
        if self.qos:
            pid = packet_id.to_bytes(2, "big")
            return b"".join((self._head, pid, self._mid, ts_ns.to_bytes(8, "big"), self._tail))
        return b"".join((self._head, ts_ns.to_bytes(8, "big"), self._tail))

    def burst(self, count: int, ts_ns: int) -> bytes:
        """`count` QoS 0 copies stamped with one send time (a batch leaves in one write)."""
        return (self._head + ts_ns.to_bytes(8, "big") + self._tail) * count


class LeanClient(asyncio.Protocol):
    """One MQTT connection. Awaitables for CONNACK/SUBACK; counters and a sink for the data plane."""

    def __init__(
        self, ident: str, version: ProtocolVersion, keep_alive: int = 60, sink: LatencySink | None = None
    ) -> None:
        self.ident = ident
        self.client = MqttClient(ident, version=version, keep_alive=keep_alive)
        self.v5 = version == ProtocolVersion.MQTT_5
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.inflight = 0  # our QoS 1 PUBLISHes not yet acknowledged
        self.acked = 0
        self.refused = 0  # our PUBLISHes the broker acknowledged with a reason code >= 0x80 (5.0 only)
        self.sent = 0
        self.writes = 0  # writes of any kind: what the server's keep-alive timer sees
        self.closed_at: float | None = None  # perf_counter() when the connection went away
        self.on_lost: Callable[[LeanClient], None] | None = None
        self.on_data: Callable[[], None] | None = None  # after each read (closed-loop publishers wait on it)
        self._rest = b""
        self._next_id = 0
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[Connack] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._subacks: dict[int, asyncio.Future[Suback]] = {}
        self.disconnect_reason: int | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        self.client.connect()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.perf_counter()
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"{self.ident}: connection lost before CONNACK"))
        for suback in self._subacks.values():
            if not suback.done():
                suback.set_exception(ConnectionError(f"{self.ident}: connection lost before SUBACK"))
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        n = len(data)
        pos = 0
        sink = self.sink
        now = time.perf_counter_ns()
        lat = sink.latencies if sink is not None else None
        acks: list[bytes] | None = None
        v5 = self.v5
        while n - pos >= 2:
            first = data[pos]
            size = data[pos + 1]
            head = 2
            if size & 0x80:
                size, head = _remaining_length(data, pos, n)
                if not head:
                    break
            end = pos + head + size
            if end > n:
                break
            kind = first >> 4
            if kind == _PUBLISH:
                at = pos + head
                at += 2 + (data[at] << 8 | data[at + 1])
                if first & 0x06:  # QoS 1 (QoS 2 is not used by the generator)
                    if acks is None:
                        acks = []
                    acks.append(b"\x40\x02" + data[at : at + 2])
                    at += 2
                if v5:
                    plen = data[at]
                    at += 1 + plen if plen < 128 else _skip_varint(data, at)
                if lat is not None and end - at >= TIMESTAMP_BYTES:
                    lat.append(now - int.from_bytes(data[at : at + TIMESTAMP_BYTES], "big"))
            elif kind == _PUBACK:
                self.inflight -= 1
                self.acked += 1
                if size > 2 and data[pos + head + 2] >= 0x80:
                    self.refused += 1
            else:
                self._control(data[pos:end])
            pos = end
        if pos < n:
            self._rest = data[pos:]
        if sink is not None:
            sink.count = len(sink.latencies)
            sink.mark(now)
        if acks is not None and self.transport is not None:
            self.transport.write(b"".join(acks))
            self.writes += 1
        if self.on_data is not None:
            self.on_data()

    def eof_received(self) -> bool:
        return False

    # --- control packets through the client core ---------------------------------------------

    def _control(self, frame: bytes) -> None:
        for event in self.client.receive_data(frame):
            if isinstance(event, Connack) and not self.connack.done():
                self.connack.set_result(event)
            elif isinstance(event, Suback):
                future = self._subacks.pop(event.packet_id, None)
                if future is not None and not future.done():
                    future.set_result(event)
            elif isinstance(event, Disconnect):
                self.disconnect_reason = event.reason_code
        self._flush()

    def _flush(self) -> None:
        data = self.client.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
            self.writes += 1

    async def subscribe(self, topic_filter: str, qos: int) -> Suback:
        packet_id = self.client.subscribe(topic_filter, qos=qos)
        future: asyncio.Future[Suback] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = future
        self._flush()
        return await future

    def ping(self) -> None:
        self.client.ping()
        self._flush()

    def disconnect(self) -> None:
        if self.transport is not None:
            self.client.disconnect()
            self._flush()
            self.transport.close()

    # --- data plane ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.transport is not None and self.connack.done() and not self.connack.exception()

    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def write(self, data: bytes, messages: int, qos: int) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        self.sent += messages
        self.writes += 1
        if qos:
            self.inflight += messages

    def send(self, template: PublishTemplate, ts_ns: int) -> None:
        self.write(template.frame(self.next_packet_id() if template.qos else 0, ts_ns), 1, template.qos)


def _remaining_length(data: bytes, pos: int, n: int) -> tuple[int, int]:
    """(remaining length, fixed header size) of the frame at `pos`; (0, 0) if it is not all here."""
    size = 0
    shift = 0
    i = pos + 1
    while i < n:
        byte = data[i]
        size |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return size, i - pos
        shift += 7
    return 0, 0


def _skip_varint(data: bytes, at: int) -> int:
    """Length of the varint at `at` plus the value it encodes (a property block's full size)."""
    size, head = _remaining_length(data, at - 1, len(data))
    return head - 1 + size


async def open_client(
    host: str,
    port: int,
    context: ssl.SSLContext,
    ident: str,
    *,
    version: ProtocolVersion = ProtocolVersion.MQTT_3_1_1,
    keep_alive: int = 60,
    sink: LatencySink | None = None,
    server_hostname: str | None = None,
    timeout: float = 30.0,
) -> tuple[LeanClient, Connack]:
    """Connect (TCP + TLS + CONNECT) and wait for the CONNACK; raises on refusal or timeout."""
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(
            lambda: LeanClient(ident, version, keep_alive, sink),
            host,
            port,
            ssl=context,
            server_hostname=server_hostname or host,
            ssl_handshake_timeout=timeout,
        ),
        timeout,
    )
    connack = await asyncio.wait_for(protocol.connack, timeout)
    if connack.reason_code >= 0x80:
        protocol.disconnect()
        raise ConnectionRefusedError(f"{ident}: CONNACK 0x{connack.reason_code:02x}")
    return protocol, connack
