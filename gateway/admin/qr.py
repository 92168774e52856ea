"""QR codes for TOTP provisioning URIs (ISO/IEC 18004, byte mode, versions 1-11), no dependency.

An operator enrolling a second factor scans this with an authenticator app; the URI itself
(gateway.admin.totp.provisioning_uri) is the same information for manual entry.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from typing import Literal

#
# A QR code (ISO/IEC 18004) of the provisioning URI, so an authenticator app can scan it from the admin
# UI or a terminal. Byte mode only (a URI is bytes), versions 1-11 (up to 251 bytes at level M, far more
# than an otpauth URI needs). The steps: bit stream -> codewords split into blocks, each with its
# Reed-Solomon check bytes, interleaved -> placed in the zigzag order around the function patterns ->
# masked (the mask with the lowest penalty) -> format (and, from version 7, version) information.

_LEVEL_BITS = {"L": 1, "M": 0, "Q": 3, "H": 2}
# Per version 1-11: check codewords per block and number of blocks, for levels L, M, Q, H.
_EC_PER_BLOCK = ((7, 10, 13, 17), (10, 16, 22, 28), (15, 26, 18, 22), (20, 18, 26, 16), (26, 24, 18, 22),
                 (18, 16, 24, 28), (20, 18, 18, 26), (24, 22, 22, 26), (30, 22, 20, 24), (18, 26, 24, 28),
                 (20, 30, 28, 24))  # fmt: skip
_BLOCKS = ((1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 2, 2), (1, 2, 2, 4), (1, 2, 4, 4), (2, 4, 4, 4), (2, 4, 6, 5),
           (2, 4, 6, 6), (2, 5, 8, 8), (4, 5, 8, 8), (4, 5, 8, 11))  # fmt: skip
_TOTAL = (26, 44, 70, 100, 134, 172, 196, 242, 292, 346, 404)  # codewords per version (data + check)
_MASKS: tuple[Callable[[int, int], bool], ...] = (
    lambda r, c: (r + c) % 2 == 0,
    lambda r, c: r % 2 == 0,
    lambda r, c: c % 3 == 0,
    lambda r, c: (r + c) % 3 == 0,
    lambda r, c: (r // 2 + c // 3) % 2 == 0,
    lambda r, c: (r * c) % 2 + (r * c) % 3 == 0,
    lambda r, c: ((r * c) % 2 + (r * c) % 3) % 2 == 0,
    lambda r, c: ((r + c) % 2 + (r * c) % 3) % 2 == 0,
)
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):  # GF(256) over x^8 + x^4 + x^3 + x^2 + 1 (0x11D), the field QR codes use
    _EXP[_i] = _EXP[_i + 255] = _x
    _LOG[_x] = _i
    _x = (_x << 1) ^ (0x11D if _x & 0x80 else 0)


def _rs_remainder(data: bytes, degree: int) -> bytes:
    generator = [1]  # product of (x - a^i) for i < degree, highest power first
    for i in range(degree):
        generator = [
            a ^ (_EXP[_LOG[b] + i] if b else 0) for a, b in zip([*generator, 0], [0, *generator], strict=True)
        ]
    rest = [*data, *([0] * degree)]
    for i in range(len(data)):
        factor = rest[i]
        if factor:
            for j, g in enumerate(generator[1:], start=1):
                rest[i + j] ^= _EXP[_LOG[g] + _LOG[factor]] if g else 0
    return bytes(rest[len(data) :])


class _Matrix:
    def __init__(self, version: int) -> None:
        self.version, self.size = version, 17 + 4 * version
        self.dark = [[False] * self.size for _ in range(self.size)]
        self.function = [[False] * self.size for _ in range(self.size)]
        for r, c in ((0, 0), (0, self.size - 7), (self.size - 7, 0)):
            self._finder(r, c)
        for i in range(8, self.size - 8):
            self.set(6, i, i % 2 == 0)
            self.set(i, 6, i % 2 == 0)
        centers = self._alignment_centers()
        corners = {(6, 6), (6, self.size - 7), (self.size - 7, 6)}  # where the finders are
        for r in centers:
            for c in centers:
                if (r, c) not in corners:  # (an alignment pattern may cross a timing pattern)
                    for dr in range(-2, 3):
                        for dc in range(-2, 3):
                            self.set(r + dr, c + dc, max(abs(dr), abs(dc)) != 1)
        self.format_bits(0)  # reserve the format areas (and the dark module) before placing data
        if version >= 7:
            bits = version << 12 | _bch(version, 0x1F25, 12)
            for i in range(18):
                a, b = self.size - 11 + i % 3, i // 3
                self.set(b, a, bool(bits >> i & 1))
                self.set(a, b, bool(bits >> i & 1))

    def set(self, r: int, c: int, dark: bool) -> None:
        if 0 <= r < self.size and 0 <= c < self.size:
            self.dark[r][c], self.function[r][c] = dark, True

    def _finder(self, top: int, left: int) -> None:
        for dr in range(-1, 8):  # with the light separator around it
            for dc in range(-1, 8):
                ring = max(abs(dr - 3), abs(dc - 3))
                self.set(top + dr, left + dc, ring != 2 and ring != 4)

    def _alignment_centers(self) -> list[int]:
        if self.version == 1:
            return []
        count = self.version // 7 + 2
        step = (self.version * 8 + count * 3 + 5) // (count * 4 - 4) * 2  # spacing rounded up to even
        return [6, *reversed([self.size - 7 - i * step for i in range(count - 1)])]

    def format_bits(self, bits: int) -> None:
        """Both copies of the 15 format bits (bit 0 = least significant), and the dark module."""
        s = self.size
        for i in range(15):
            on = bool(bits >> i & 1)
            first = (
                (i, 8)
                if i < 6
                else (7, 8)
                if i == 6
                else (8, 8)
                if i == 7
                else (8, 7)
                if i == 8
                else (8, 14 - i)
            )
            self.set(*first, on)
            self.set(8, s - 1 - i, on) if i < 8 else self.set(s - 15 + i, 8, on)
        self.set(s - 8, 8, True)

    def place(self, codewords: bytes) -> None:
        bits = [bool(byte >> (7 - k) & 1) for byte in codewords for k in range(8)]
        i, upward, right = 0, True, self.size - 1
        while right > 0:
            if right == 6:
                right = 5  # the vertical timing pattern takes a whole column
            for step in range(self.size):
                row = self.size - 1 - step if upward else step
                for col in (right, right - 1):
                    if not self.function[row][col]:
                        self.dark[row][col] = i < len(bits) and bits[i]
                        i += 1
            upward, right = not upward, right - 2

    def masked(self, mask: int, level: str) -> list[list[bool]]:
        """A copy with the data modules masked and the format bits saying which mask and level."""
        test = _MASKS[mask]
        out = copy.copy(self)
        out.dark = [
            [d != (not f and test(r, c)) for c, (d, f) in enumerate(zip(drow, frow, strict=True))]
            for r, (drow, frow) in enumerate(zip(self.dark, self.function, strict=True))
        ]
        data = _LEVEL_BITS[level] << 3 | mask
        out.format_bits((data << 10 | _bch(data, 0x537, 10)) ^ 0x5412)  # writes out.dark only
        return out.dark


def _bch(data: int, poly: int, degree: int) -> int:
    rem = data << degree
    for shift in range(rem.bit_length() - 1, degree - 1, -1):
        if rem >> shift & 1:
            rem ^= poly << (shift - degree)
    return rem


def _penalty(m: list[list[bool]]) -> int:
    """The standard's four penalty rules (runs, 2x2 blocks, finder look-alikes, dark balance)."""
    n = len(m)
    rows = ["".join("1" if d else "0" for d in row) for row in m]
    lines = rows + ["".join(col) for col in zip(*rows, strict=True)]
    score = sum(len(run) - 2 for line in lines for run in _RUN.findall(line))
    score += 40 * sum(len(_FINDER_LIKE.findall(line)) for line in lines)
    ints = [int(row, 2) for row in rows]
    low = (1 << (n - 1)) - 1  # a 2x2 block per adjacent column pair
    for a, b in itertools.pairwise(ints):
        same = ~(a ^ b) & ~(a ^ (a >> 1)) & ~(b ^ (b >> 1)) & low
        score += 3 * same.bit_count()
    dark = sum(row.count("1") for row in rows)
    return score + 10 * (abs(dark * 20 - n * n * 10) // (n * n))


_RUN = re.compile(r"0{5,}|1{5,}")  # a run of 5 scores 3, each further module 1
_FINDER_LIKE = re.compile(r"(?=10111010000|00001011101)")  # overlapping matches


def qr_matrix(
    data: bytes, level: Literal["L", "M", "Q", "H"] = "M", mask: int | None = None
) -> list[list[bool]]:
    """The modules of the smallest QR code holding `data` (True = dark), without the quiet zone."""
    col = "LMQH".index(level)
    for version in range(1, 12):
        total = _TOTAL[version - 1]
        blocks, ec = _BLOCKS[version - 1][col], _EC_PER_BLOCK[version - 1][col]
        capacity = total - blocks * ec
        count_bits = 8 if version < 10 else 16
        if 4 + count_bits + 8 * len(data) <= capacity * 8:
            break
    else:
        raise ValueError(f"{len(data)} bytes do not fit a version 1-11 QR code at level {level}")
    matrix = _Matrix(version)
    bits = f"0100{len(data):0{count_bits}b}" + "".join(f"{b:08b}" for b in data)
    bits += "0" * min(4, capacity * 8 - len(bits))
    bits += "0" * (-len(bits) % 8)
    stream = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    stream += bytes((0xEC, 0x11) * capacity)[: capacity - len(stream)]
    short, longer = blocks - total % blocks, total % blocks
    sizes = [total // blocks - ec] * short + [total // blocks - ec + 1] * longer
    chunks = [stream[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(blocks)]
    checks = [_rs_remainder(chunk, ec) for chunk in chunks]
    out = bytearray()
    for i in range(max(sizes)):
        out += bytes(chunk[i] for chunk in chunks if i < len(chunk))
    for i in range(ec):
        out += bytes(check[i] for check in checks)
    matrix.place(bytes(out))
    if mask is not None:
        return matrix.masked(mask, level)
    return min((matrix.masked(m, level) for m in range(8)), key=_penalty)


def provisioning_qr_png(uri: str, scale: int = 6, border: int = 4) -> bytes:
    """The URI as a black-on-white QR code PNG, `scale` pixels per module, `border` modules of quiet zone."""
    from gateway.render.png import encode_png

    modules = qr_matrix(uri.encode("utf-8"))
    n, quiet = len(modules) + 2 * border, [False] * border
    grid = [[False] * n] * border + [quiet + row + quiet for row in modules] + [[False] * n] * border
    lines = (b"".join((b"\x00\x00\x00" if dark else b"\xff\xff\xff") * scale for dark in row) for row in grid)
    return encode_png(n * scale, n * scale, b"".join(line * scale for line in lines))
