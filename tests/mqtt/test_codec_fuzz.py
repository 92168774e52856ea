"""Fuzzing PacketReader: garbage and damaged packets, fed in arbitrary chunks.

Two properties: the reader raises nothing but MqttError subclasses (blamed on the peer), and how the
bytes are split across feed() calls never changes the outcome (same packets, then the same error class).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.mqtt.codec import PacketReader, encode
from gateway.mqtt.errors import MqttError
from gateway.mqtt.packets import Connect, Packet, ProtocolVersion

from .codec_strategies import V3, V5, any_packet, connects

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[list[Packet], type[MqttError] | None]


def run(chunks: list[bytes], version: ProtocolVersion | None, max_size: int) -> Outcome:
    """Feed the chunks in order, draining after each; stop at the first error."""
    reader = PacketReader(version=version, max_packet_size=max_size)
    out: list[Packet] = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            try:
                packet = reader.next_packet()
            except MqttError as exc:
                assert exc.peer_at_fault
                with_error_again = None
                try:
                    reader.next_packet()
                except MqttError as again:  # poisoned: keeps raising the same class
                    with_error_again = type(again)
                assert with_error_again is type(exc)
                return out, type(exc)
            if packet is None:
                break
            out.append(packet)
    return out, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def check_chunking(data: bytes, cuts: list[int], version: ProtocolVersion | None, max_size: int) -> None:
    whole = run([data], version, max_size)
    event(f"outcome: {whole[1].__name__ if whole[1] else 'clean'}")  # see --hypothesis-show-statistics
    assert run(split(data, cuts), version, max_size) == whole
    if len(data) <= 64:
        assert run([data[i : i + 1] for i in range(len(data))], version, max_size) == whole


versions = st.sampled_from([None, V3, V5])
max_sizes = st.sampled_from([268_435_455, 64, 8])
cut_lists = st.lists(st.integers(0, 10_000), max_size=8)


@FUZZ
@given(data=st.binary(max_size=300), cuts=cut_lists, version=versions, max_size=max_sizes)
def test_random_bytes(data: bytes, cuts: list[int], version: ProtocolVersion | None, max_size: int) -> None:
    check_chunking(data, cuts, version, max_size)


@FUZZ
@given(prefix=st.sampled_from([b"\x10", b"\x30", b"\x82", b"\xe0", b"\xf0"]), rest=st.binary(max_size=120),
       cuts=cut_lists, version=versions)
def test_random_bodies_behind_plausible_headers(prefix: bytes, rest: bytes, cuts: list[int],
                                                version: ProtocolVersion | None) -> None:
    # A plausible first byte and a remaining length that fits, so the body decoders see the garbage.
    data = prefix + bytes((len(rest),)) + rest
    check_chunking(data, cuts, version, 268_435_455)


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[bytes, list[int], ProtocolVersion | None]:
    """(stream bytes, packet start offsets, reader version) for a run of valid packets."""
    version = draw(st.sampled_from([V3, V5]))
    packets: list[Packet] = draw(st.lists(any_packet(version), min_size=1, max_size=4))
    reader_version: ProtocolVersion | None = version
    if draw(st.booleans()):  # a server stream: CONNECT first, version learnt from it
        packets.insert(0, draw(connects(version)))
        reader_version = None
    starts: list[int] = []
    parts: list[bytes] = []
    offset = 0
    for packet in packets:
        wire = encode(packet, version)
        starts.append(offset)
        parts.append(wire)
        offset += len(wire)
    return b"".join(parts), starts, reader_version


@st.composite
def mutated(draw: st.DrawFn, stream: tuple[bytes, list[int], ProtocolVersion | None]) -> bytes:
    data = bytearray(stream[0])
    starts = stream[1]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "length", "insert", "delete", "type"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            start = draw(st.sampled_from(starts))
            index = start + (1 if kind == "length" else 0)
            if index < len(data):
                if kind == "length":  # grow or shrink the (first byte of the) remaining length
                    data[index] = (data[index] + draw(st.integers(-3, 3))) % 256
                else:  # keep the packet, change its type/flags nibble
                    data[index] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=st.data(), cuts=cut_lists)
def test_mutated_valid_packets(data: st.DataObject, cuts: list[int]) -> None:
    stream = data.draw(valid_streams())
    damaged = data.draw(mutated(stream))
    check_chunking(damaged, cuts, stream[2], 268_435_455)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=valid_streams(), cuts=cut_lists)
def test_valid_streams_split_anywhere(stream: tuple[bytes, list[int], ProtocolVersion | None],
                                      cuts: list[int]) -> None:
    data, starts, version = stream
    packets, error = run([data], version, 268_435_455)
    assert error is None
    assert len(packets) == len(starts)
    if version is None:
        assert isinstance(packets[0], Connect)
    check_chunking(data, cuts, version, 268_435_455)
