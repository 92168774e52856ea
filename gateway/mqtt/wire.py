"""MQTT data representations (5.0 §1.5, 3.1.1 §1.5): integers, variable byte integers, strings, binary.

Decoders take `(buf, pos, end)` and return `(value, new_pos)`; `end` is the end of the enclosing field
(the packet body or a property block), so a length that runs past it is caught here rather than
silently truncated by slicing. Every decode failure is a MalformedPacket blamed on the peer; every
encode failure is a MalformedPacket blamed on us (peer_at_fault=False), since it means we were asked to
write a value the protocol cannot carry.
"""

from __future__ import annotations

import struct

from .errors import MalformedPacket

__all__ = [
    "MAX_VARINT",
    "U16",
    "U32",
    "Buffer",
    "decode_binary",
    "decode_byte",
    "decode_string",
    "decode_u16",
    "decode_u32",
    "decode_varint",
    "encode_binary",
    "encode_string",
    "encode_varint",
    "varint_size",
]

Buffer = bytes | bytearray  # a packet body, or the reader's buffer when it decodes in place

MAX_VARINT = 268_435_455  # four 7-bit groups (§1.5.5)
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")

# Single-byte varints and two-byte length prefixes are on every packet; build them once.
_SMALL_VARINT = tuple(bytes((n,)) for n in range(128))


def encode_varint(value: int) -> bytes:
    if value < 128:
        if value < 0:
            raise MalformedPacket("A variable byte integer cannot be negative.", peer_at_fault=False)
        return _SMALL_VARINT[value]
    if value > MAX_VARINT:
        raise MalformedPacket(f"{value} does not fit in a variable byte integer.", peer_at_fault=False)
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


def decode_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode a variable byte integer, insisting on at most four bytes in the minimal encoding."""
    value = 0
    shift = 0
    for i in range(4):
        if pos >= end:
            raise MalformedPacket("A variable byte integer runs past the end of its field.")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 128:
            # [MQTT-1.5.5-1] minimal encoding: a trailing zero group after the first byte is padding.
            if byte == 0 and i:
                raise MalformedPacket("A variable byte integer is not minimally encoded.")
            return value, pos
        shift += 7
    raise MalformedPacket("A variable byte integer has more than four bytes.")


def decode_byte(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise MalformedPacket("A one-byte field runs past the end of the packet.")
    return buf[pos], pos + 1


def decode_u16(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket("A two-byte integer runs past the end of the packet.")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def decode_u32(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise MalformedPacket("A four-byte integer runs past the end of the packet.")
    return U32.unpack_from(buf, pos)[0], pos + 4


def decode_string(buf: Buffer, pos: int, end: int) -> tuple[str, int]:
    """A UTF-8 Encoded String (§1.5.4): well-formed UTF-8, no surrogates, no U+0000."""
    if pos + 2 > end:
        raise MalformedPacket("A string length runs past the end of the packet.")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("A string runs past the end of its field.")
    try:
        # Python's strict UTF-8 codec already rejects overlong forms and encoded surrogates
        # ([MQTT-1.5.4-1]); it also keeps a leading BOM as U+FEFF, as [MQTT-1.5.4-3] requires.
        text = buf[pos + 2 : stop].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("A string is not well-formed UTF-8.") from None
    if "\x00" in text:
        raise MalformedPacket("A string contains the null character U+0000.")  # [MQTT-1.5.4-2]
    return text, stop


def decode_binary(buf: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket("A binary length runs past the end of the packet.")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("Binary data runs past the end of its field.")
    return bytes(buf[pos + 2 : stop]), stop  # bytes() of a bytes slice is free; a bytearray's is copied


def encode_string(text: str) -> bytes:
    try:
        data = text.encode()
    except UnicodeEncodeError:
        raise MalformedPacket(
            "A string holds a lone surrogate, which UTF-8 cannot carry.", peer_at_fault=False
        ) from None
    if len(data) > 0xFFFF:
        raise MalformedPacket("A string is longer than 65,535 bytes.", peer_at_fault=False)
    if "\x00" in text:
        raise MalformedPacket("A string contains the null character U+0000.", peer_at_fault=False)
    return U16.pack(len(data)) + data


def encode_binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise MalformedPacket("Binary data is longer than 65,535 bytes.", peer_at_fault=False)
    return U16.pack(len(data)) + data
