"""MQTT data representations: variable byte integers, integers, strings and binary data (§1.5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.errors import MalformedPacket
from gateway.mqtt.wire import (
    MAX_VARINT,
    decode_binary,
    decode_byte,
    decode_string,
    decode_u16,
    decode_u32,
    decode_varint,
    encode_binary,
    encode_string,
    encode_varint,
    varint_size,
)

# §1.5.5 Table 1-1: the boundaries of each size.
VARINTS = [
    (0, "00"), (127, "7f"), (128, "80 01"), (16_383, "ff 7f"), (16_384, "80 80 01"),
    (2_097_151, "ff ff 7f"), (2_097_152, "80 80 80 01"), (268_435_455, "ff ff ff 7f"),
]


@pytest.mark.parametrize(("value", "wire"), VARINTS)
def test_varint_golden(value: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert encode_varint(value) == data
    assert decode_varint(data, 0, len(data)) == (value, len(data))
    assert varint_size(value) == len(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, MAX_VARINT))
def test_varint_roundtrip(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data + b"\xaa", 0, len(data) + 1) == (value, len(data))


@pytest.mark.parametrize("wire", ["ff ff ff ff 01", "80 80 80 80 00", "80", "ff ff", "80 00", "ff 80 00"])
def test_varint_rejects(wire: str) -> None:
    data = bytes.fromhex(wire)
    with pytest.raises(MalformedPacket) as info:
        decode_varint(data, 0, len(data))
    assert info.value.peer_at_fault


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1])
def test_varint_encode_out_of_range(value: int) -> None:
    with pytest.raises(MalformedPacket) as info:
        encode_varint(value)
    assert not info.value.peer_at_fault


def test_varint_stops_at_field_end() -> None:
    with pytest.raises(MalformedPacket):
        decode_varint(bytes.fromhex("80 01"), 0, 1)


def test_fixed_integers() -> None:
    data = bytes.fromhex("07 01 02 0a 0b 0c 0d")
    assert decode_byte(data, 0, 7) == (7, 1)
    assert decode_u16(data, 1, 7) == (0x0102, 3)
    assert decode_u32(data, 3, 7) == (0x0A0B0C0D, 7)
    for decode, pos in ((decode_byte, 7), (decode_u16, 6), (decode_u32, 4)):
        with pytest.raises(MalformedPacket):
            decode(data, pos, 7)


@pytest.mark.parametrize(("text", "wire"), [
    ("", "00 00"),
    ("MQTT", "00 04 4d 51 54 54"),
    ("A\U0002a6d4", "00 05 41 f0 aa 9b 94"),  # §1.5.4 example: A + U+2A6D4
    ("\ufeff", "00 03 ef bb bf"),  # a BOM is kept, never skipped [MQTT-1.5.4-3]
    ("\u0001\uffff", "00 04 01 ef bf bf"),  # control characters and non-characters: SHOULD NOT, allowed
])
def test_string_golden(text: str, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert encode_string(text) == data
    assert decode_string(data, 0, len(data)) == (text, len(data))


@pytest.mark.parametrize("wire", [
    "00 01 00",  # U+0000 [MQTT-1.5.4-2]
    "00 03 ed a0 80",  # U+D800, a surrogate [MQTT-1.5.4-1]
    "00 03 ed bf bf",  # U+DFFF
    "00 02 c0 80",  # overlong NUL
    "00 03 e0 80 af",  # overlong '/'
    "00 01 80",  # lone continuation byte
    "00 02 e2 82",  # truncated sequence
    "00 04 f4 90 80 80",  # beyond U+10FFFF
    "00 01 ff",
    "00 05 61 62",  # length past end
    "00",  # length cut
])
def test_string_rejects(wire: str) -> None:
    data = bytes.fromhex(wire)
    with pytest.raises(MalformedPacket):
        decode_string(data, 0, len(data))


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00")))
def test_string_roundtrip(text: str) -> None:
    data = encode_string(text)
    assert decode_string(data, 0, len(data)) == (text, len(data))


@pytest.mark.parametrize("text", ["a\x00", "\ud800", "x" * 65_536, "é" * 32_768])
def test_string_encode_refuses(text: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        encode_string(text)
    assert not info.value.peer_at_fault


def test_longest_string_and_binary() -> None:
    assert len(encode_string("x" * 65_535)) == 65_537
    assert len(encode_binary(bytes(65_535))) == 65_537
    with pytest.raises(MalformedPacket):
        encode_binary(bytes(65_536))


def test_binary() -> None:
    data = bytes.fromhex("00 03 00 ff 00 99")
    assert decode_binary(data, 0, 6) == (b"\x00\xff\x00", 5)
    assert encode_binary(b"\x00\xff\x00") == data[:5]
    with pytest.raises(MalformedPacket):
        decode_binary(data, 0, 4)
