"""Live protocol fuzzing over mTLS: hostile and mutated MQTT packets from enrolled units.

Each worker owns one enrolled identity (one live session per identity, so workers never take each
other over). It connects (TCP + TLS + a valid CONNECT, 3.1.1 or 5.0), then sends one hostile input at
a time, each followed by a PINGREQ probe, and classifies what the gateway did:

- ``alive``: the PINGRESP came back: the input was valid enough, or ignored, and the session goes on;
- ``closed``: the gateway closed the connection (``disconnect_reasons`` counts 5.0 DISCONNECT codes);
- ``pending``: neither within the probe window: a truncated packet the decoder is still waiting on
  (our PINGREQ became part of its body). The worker closes and reconnects.

Inputs come from a fixed catalogue of known-hostile packets (QoS 3, zero-length and invalid UTF-8
topics, duplicate and unknown properties, huge remaining lengths, packet-id reuse, PUBREL for unknown
ids, packets before CONNECT, a second CONNECT…) and from seeded mutations of valid packets (bit flips,
insertions, deletions, truncation, splices, length-field tampering). Everything is seeded: a failing
run can be replayed with the same `seed`.

The fuzzer only measures; the caller checks the gateway (process alive, /metrics internal errors, a
bystander's delivery) — see tests/hardening/test_live_fuzz.py and tests/hardening/soak.py.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import (
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    Pubrel,
    Subscribe,
    Subscription,
    Unsubscribe,
)

__all__ = ["FuzzStats", "FuzzWorker", "hostile_catalogue", "mutate", "run_fuzz", "seed_packets"]

V5 = ProtocolVersion.MQTT_5
V311 = ProtocolVersion.MQTT_3_1_1
PINGREQ = b"\xc0\x00"
PROBE_SECONDS = 0.25


@dataclass
class FuzzStats:
    inputs: int = 0
    connections: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    disconnect_reasons: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        return {
            "inputs": self.inputs,
            "connections": self.connections,
            "connect_failures": dict(self.connect_failures),
            "outcomes": dict(self.outcomes),
            "disconnect_reasons": {f"0x{k:02X}": v for k, v in sorted(self.disconnect_reasons.items())},
            "seconds": round(time.monotonic() - self.started, 1),
        }


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _utf8(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def _frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def seed_packets(unit: str, version: ProtocolVersion) -> list[bytes]:
    """Valid packets a unit may send after CONNECT: the material mutations start from."""
    topic = f"fleet/{unit}/telemetry/gps"
    props = Properties(message_expiry_interval=60, content_type="application/json") if version == V5 else None
    packets: list[Packet] = [
        Publish(topic, b'{"lat":1,"lon":2}', 0),
        Publish(topic, b"x" * 64, 1, packet_id=7, properties=props or Properties()),
        Publish(f"fleet/{unit}/diag/obd", b"\x00\x01", 2, packet_id=8),
        Publish(f"fleet/{unit}/state", b"online", 1, retain=True, packet_id=9),
        Subscribe(11, (Subscription(f"fleet/{unit}/cmd/#", 1),)),
        Unsubscribe(12, (f"fleet/{unit}/cmd/#",)),
        Puback(13),
        Pubrel(14),
        Pingreq(),
    ]
    return [encode(p, version) for p in packets]


def hostile_catalogue(unit: str, version: ProtocolVersion) -> list[tuple[str, bytes]]:
    """Named hostile inputs (malformed lengths and flags, reserved packet types, bad packet ids and
    properties, packets only a server sends); each must close or be refused cleanly."""
    topic = f"fleet/{unit}/telemetry/gps".encode()
    v5 = version == V5
    props0 = b"\x00" if v5 else b""

    def pub(first: int, body_topic: bytes, pid: bytes, props: bytes, payload: bytes = b"p") -> bytes:
        return _frame(first, _utf8(body_topic) + pid + props + payload)

    catalogue = [
        ("qos3", pub(0x36, topic, b"\x00\x01", props0)),
        ("zero_length_topic", pub(0x30, b"", b"", props0)),
        ("invalid_utf8_topic", pub(0x30, b"fleet/\xc3\x28/x", b"", props0)),
        ("nul_in_topic", pub(0x30, b"fleet/a\x00b", b"", props0)),
        ("wildcard_in_publish_topic", pub(0x30, b"fleet/+/telemetry/#", b"", props0)),
        ("packet_id_zero", pub(0x32, topic, b"\x00\x00", props0)),
        ("huge_remaining_length", b"\x30\xff\xff\xff\x7f" + b"\x00" * 32),
        ("five_byte_remaining_length", b"\x30\xff\xff\xff\xff\x01"),
        ("length_longer_than_sent", b"\x30\x7f\x00\x03abc"),
        ("topic_length_past_end", _frame(0x30, b"\xff\xff" + b"a/b")),
        ("pubrel_unknown_id", _frame(0x62, b"\x7f\x7f")),
        ("pubrel_bad_flags", _frame(0x60, b"\x00\x01")),
        ("puback_unknown_id", _frame(0x40, b"\x12\x34")),
        ("subscribe_no_filters", _frame(0x82, b"\x00\x05" + props0)),
        ("subscribe_qos3", _frame(0x82, b"\x00\x06" + props0 + _utf8(b"fleet/x/cmd/#") + b"\x03")),
        ("subscribe_bad_flags", _frame(0x80, b"\x00\x06" + props0 + _utf8(b"a") + b"\x00")),
        ("subscribe_empty_filter", _frame(0x82, b"\x00\x07" + props0 + _utf8(b"") + b"\x01")),
        ("subscribe_bad_wildcard", _frame(0x82, b"\x00\x08" + props0 + _utf8(b"fleet/#/x") + b"\x01")),
        ("unsubscribe_none", _frame(0xA2, b"\x00\x09" + props0)),
        ("second_connect", encode(Connect(unit, version), version)),
        ("reserved_type_0", b"\x00\x00"),
        ("reserved_type_15_in_311", b"\xf0\x00"),
        ("pingreq_with_body", b"\xc0\x01\x00"),
        ("disconnect_bad_reason", _frame(0xE0, b"\x99\x00") if v5 else b"\xe0\x01\x00"),
        ("connack_from_client", b"\x20\x02\x00\x00"),
        ("suback_from_client", b"\x90\x03\x00\x01\x00"),
        ("packet_id_reuse_qos2", pub(0x34, topic, b"\x00\x21", props0) * 3),
        (
            "packet_id_reuse_qos1_then_2",
            pub(0x32, topic, b"\x00\x22", props0) + pub(0x34, topic, b"\x00\x22", props0),
        ),
        ("oversized_payload", pub(0x30, topic, b"", props0, b"\x00" * 300_000)),
    ]
    if v5:
        catalogue += [
            ("duplicate_property", pub(0x30, topic, b"", b"\x04\x01\x01\x01\x00")),
            ("unknown_property", pub(0x30, topic, b"", b"\x02\x7f\x00")),
            ("property_length_past_end", pub(0x30, topic, b"", b"\x7f\x01")),
            ("topic_alias_zero", pub(0x30, topic, b"", b"\x03\x23\x00\x00")),
            ("topic_alias_too_big", pub(0x30, b"", b"", b"\x03\x23\xff\xff")),
            ("alias_without_topic", pub(0x30, b"", b"", b"\x03\x23\x00\x05")),
            ("subscription_id_in_publish", pub(0x30, topic, b"", b"\x02\x0b\x01")),
            ("payload_format_utf8_lie", pub(0x30, topic, b"", b"\x02\x01\x01", b"\xff\xfe")),
            ("invalid_utf8_user_property", pub(0x30, topic, b"", b"\x07\x26\x00\x01\xff\x00\x01a")),
            ("auth_without_method", _frame(0xF0, b"\x18\x00")),
            ("response_topic_wildcard", pub(0x30, topic, b"", b"\x04\x08\x00\x01#")),
            (
                "subscribe_no_local_shared",
                _frame(0x82, b"\x00\x0a\x00" + _utf8(b"$share/g/fleet/x/cmd/#") + b"\x05"),
            ),
        ]
    return catalogue


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """One seeded mutation of `data` (a valid packet)."""
    buf = bytearray(data)
    kind = rng.randrange(8)
    if kind == 0 and buf:  # flip bits
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # insert random bytes
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 2 and len(buf) > 1:  # delete a run
        at = rng.randrange(len(buf))
        del buf[at : at + rng.randint(1, 8)]
    elif kind == 3 and len(buf) > 1:  # truncate
        del buf[rng.randrange(1, len(buf)) :]
    elif kind == 4:  # splice two packets
        other = rng.choice(seeds)
        buf = buf[: rng.randrange(len(buf) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif kind == 5 and len(buf) > 1:  # tamper with the remaining length
        buf[1] = rng.randrange(256)
    elif kind == 6:  # random first byte (type + flags)
        buf[0] = rng.randrange(256)
    else:  # a run of random bytes
        buf = bytearray(rng.randbytes(rng.randint(1, 64)))
    return bytes(buf)


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, body) of every complete frame in what the gateway sent."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 2 <= len(data):
        length, shift, at = 0, 0, pos + 1
        while at < len(data) and shift <= 21:
            byte = data[at]
            length |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80:
                break
            shift += 7
        if at + length > len(data):
            break
        out.append((data[pos], data[at : at + length]))
        pos = at + length
    return out


class FuzzWorker:
    def __init__(
        self,
        host: str,
        port: int,
        unit: str,
        context: ssl.SSLContext,
        stats: FuzzStats,
        rng: random.Random,
        *,
        server_hostname: str = "localhost",
    ) -> None:
        self.host, self.port, self.unit, self.context = host, port, unit, context
        self.stats, self.rng, self.server_hostname = stats, rng, server_hostname

    async def _connect(
        self, version: ProtocolVersion, before_connect: bytes = b""
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self.context, server_hostname=self.server_hostname
                ),
                10,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.stats.connect_failures[type(exc).__name__] += 1
            return None
        self.stats.connections += 1
        if before_connect:  # a packet before CONNECT: the gateway must close
            writer.write(before_connect)
            self.stats.inputs += 1
            outcome = await self._probe(reader, writer)
            self.stats.outcomes[f"before_connect_{outcome}"] += 1
            writer.close()
            return None
        writer.write(encode(Connect(self.unit, version, keep_alive=30), version))
        data = await self._read_until(reader, lambda fs: any(f >> 4 == 2 for f, _ in fs), 10)
        connack = [b for f, b in _frames(data) if f >> 4 == 2]
        if not connack or len(connack[0]) < 2 or connack[0][1] != 0:
            self.stats.connect_failures["connack_refused"] += 1
            writer.close()
            return None
        return reader, writer

    async def _read_until(
        self, reader: asyncio.StreamReader, done: Callable[[list[tuple[int, bytes]]], bool], seconds: float
    ) -> bytes:
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            except (TimeoutError, OSError, ssl.SSLError):
                return data
            if not chunk:
                return data + b"\x00EOF"
            data += chunk
            if done(_frames(data)):
                return data
        return data

    async def _probe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        try:
            writer.write(PINGREQ)
            await writer.drain()
        except (OSError, ssl.SSLError):
            return "closed"
        data = await self._read_until(
            reader, lambda fs: any(f >> 4 in (13, 14) for f, _ in fs), PROBE_SECONDS
        )
        frames = _frames(data.removesuffix(b"\x00EOF"))
        for first, body in frames:
            if first >> 4 == 14:
                self.stats.disconnect_reasons[body[0] if body else 0] += 1
                return "closed"
        if any(first >> 4 == 13 for first, _ in frames):
            return "alive"
        return "closed" if data.endswith(b"\x00EOF") else "pending"

    async def run(self, inputs: int, deadline: float) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        version = V5
        sent = 0
        while sent < inputs and time.monotonic() < deadline:
            if conn is None:
                version = self.rng.choice((V5, V311))
                if self.rng.random() < 0.03:
                    await self._connect(version, before_connect=self._input(version))
                    sent += 1
                    continue
                conn = await self._connect(version)
                if conn is None:
                    await asyncio.sleep(0.1)
                    sent += 1  # bounded even when the gateway refuses us
                    continue
            reader, writer = conn
            try:
                writer.write(self._input(version))
            except (OSError, ssl.SSLError):
                conn = None
                continue
            self.stats.inputs += 1
            sent += 1
            outcome = await self._probe(reader, writer)
            self.stats.outcomes[outcome] += 1
            if outcome != "alive":
                writer.close()
                conn = None
        if conn is not None:
            conn[1].write(encode(Disconnect(), version))
            conn[1].close()

    def _input(self, version: ProtocolVersion) -> bytes:
        if self.rng.random() < 0.3:
            _name, data = self.rng.choice(hostile_catalogue(self.unit, version))
            return data
        seeds = seed_packets(self.unit, version)
        return mutate(self.rng, self.rng.choice(seeds), seeds)


async def run_fuzz(
    host: str,
    port: int,
    units: list[tuple[str, ssl.SSLContext]],
    *,
    inputs: int,
    seconds: float,
    seed: int = 1,
) -> FuzzStats:
    """Fuzz with one worker per unit until `inputs` are sent or `seconds` pass."""
    stats = FuzzStats()
    deadline = time.monotonic() + seconds
    per_worker = max(1, inputs // max(1, len(units)))
    workers = [
        FuzzWorker(host, port, unit, context, stats, random.Random(seed * 1000 + i))
        for i, (unit, context) in enumerate(units)
    ]
    await asyncio.gather(*(w.run(per_worker, deadline) for w in workers))
    return stats
