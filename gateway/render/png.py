"""A minimal PNG writer (RGB, 8 bits, one IDAT): enough for diagrams and QR codes without Pillow."""

from __future__ import annotations

import struct
import zlib


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG (colour type 2), unfiltered scanlines, one IDAT chunk."""
    if len(rgb) != width * height * 3 or width <= 0 or height <= 0:
        raise ValueError(f"expected {width}x{height} RGB pixels, got {len(rgb)} bytes")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
