"""A strict reader for the PNGs our renderers write: every chunk's CRC, IHDR, IDAT inflated, pixels back."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    bit_depth: int
    color_type: int
    chunks: list[bytes]  # chunk types in order
    rows: list[bytes]  # unfiltered scanlines


def read_png(data: bytes) -> Png:
    assert data[:8] == SIGNATURE, "PNG signature"
    at, chunks, idat, header = 8, [], b"", None
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"CRC of {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    assert at == len(data) and chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    assert header is not None
    width, height, depth, ctype, compression, filtering, interlace = header
    assert (compression, filtering, interlace) == (0, 0, 0)
    channels = {0: 1, 2: 3}[ctype]
    stride = (width * channels * depth + 7) // 8
    raw = zlib.decompress(idat)
    assert len(raw) == height * (stride + 1), "scanline bytes"
    rows = []
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        assert line[0] == 0, "filter type None"
        rows.append(line[1:])
    return Png(width, height, depth, ctype, chunks, rows)


def rgb_at(png: Png, x: int, y: int) -> tuple[int, int, int]:
    r, g, b = png.rows[y][x * 3 : x * 3 + 3]
    return (r, g, b)


def colours(png: Png) -> set[tuple[int, int, int]]:
    assert png.color_type == 2
    return {tuple(row[i : i + 3]) for row in png.rows for i in range(0, len(row), 3)}  # type: ignore[misc]
