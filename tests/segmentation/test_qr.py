"""The provisioning QR code: module-exact against an independent encoder, capacities, and a read-back."""

from __future__ import annotations

import pytest

from gateway.admin.qr import provisioning_qr_png, qr_matrix
from gateway.admin.totp import provisioning_uri
from tests.segmentation.png_check import colours, read_png, rgb_at
from tests.segmentation.qr_vectors import EMOJI, FOX, LONG

Level = str


@pytest.mark.parametrize("vector", [FOX, EMOJI, LONG], ids=["v3-Q", "v2-Q", "v11-M"])
def test_module_for_module_with_a_reference_encoder(vector: tuple[bytes, str, int, list[str]]) -> None:
    data, level, mask, expected = vector
    got = ["".join("X" if dark else " " for dark in row) for row in qr_matrix(data, level, mask)]  # type: ignore[arg-type]
    assert got == expected


# ISO/IEC 18004 byte-mode capacities (bytes) for versions 1-11 at levels L, M, Q, H.
CAPACITY = {
    "L": [17, 32, 53, 78, 106, 134, 154, 192, 230, 271, 321],
    "M": [14, 26, 42, 62, 84, 106, 122, 152, 180, 213, 251],
    "Q": [11, 20, 32, 46, 60, 74, 86, 108, 130, 151, 177],
    "H": [7, 14, 24, 34, 44, 58, 64, 84, 98, 119, 137],
}


@pytest.mark.parametrize("level", "LMQH")
def test_capacity_and_version_choice(level: Level) -> None:
    for version, limit in enumerate(CAPACITY[level], start=1):
        assert len(qr_matrix(b"a" * limit, level, mask=0)) == 17 + 4 * version  # type: ignore[arg-type]
        if version < 11:
            assert len(qr_matrix(b"a" * (limit + 1), level, mask=0)) == 21 + 4 * version  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not fit"):
        qr_matrix(b"a" * (CAPACITY[level][-1] + 1), level)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- an independent read-back
# Written from the standard, not from the encoder: format bits (BCH-checked), unmasking, the zigzag,
# block de-interleaving, Reed-Solomon syndromes, and the byte-mode header.

EXP, LOG = [0] * 512, [0] * 256
_v = 1
for _i in range(255):
    EXP[_i] = EXP[_i + 255] = _v
    LOG[_v] = _i
    _v = (_v << 1) ^ (0x11D if _v & 0x80 else 0)
BLOCKS = {  # (version, level) -> (blocks, ec codewords per block), from the standard's table
    (v, lv): (b, e)
    for v, row_b, row_e in zip(
        range(1, 12),
        [(1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 2, 2), (1, 2, 2, 4), (1, 2, 4, 4), (2, 4, 4, 4), (2, 4, 6, 5),
         (2, 4, 6, 6), (2, 5, 8, 8), (4, 5, 8, 8), (4, 5, 8, 11)],
        [(7, 10, 13, 17), (10, 16, 22, 28), (15, 26, 18, 22), (20, 18, 26, 16), (26, 24, 18, 22),
         (18, 16, 24, 28), (20, 18, 18, 26), (24, 22, 22, 26), (30, 22, 20, 24), (18, 26, 24, 28),
         (20, 30, 28, 24)],
        strict=True,
    )
    for lv, b, e in zip("LMQH", row_b, row_e, strict=True)
}  # fmt: skip
TOTAL = [26, 44, 70, 100, 134, 172, 196, 242, 292, 346, 404]  # codewords per version
MASKS = [
    lambda r, c: (r + c) % 2 == 0, lambda r, c: r % 2 == 0, lambda r, c: c % 3 == 0,
    lambda r, c: (r + c) % 3 == 0, lambda r, c: (r // 2 + c // 3) % 2 == 0,
    lambda r, c: (r * c) % 2 + (r * c) % 3 == 0, lambda r, c: ((r * c) % 2 + (r * c) % 3) % 2 == 0,
    lambda r, c: ((r + c) % 2 + (r * c) % 3) % 2 == 0,
]  # fmt: skip


def is_function(version: int, r: int, c: int) -> bool:
    n = 17 + 4 * version
    if min(r, c) <= 8 and (max(r, c) <= 8 or r >= n - 8 or c >= n - 8):  # finders, separators, format
        return True
    if r == 6 or c == 6:
        return True
    if version >= 7 and ((r < 6 and c >= n - 11) or (c < 6 and r >= n - 11)):
        return True
    if version >= 2:
        centers = {2: [6, 18], 3: [6, 22], 4: [6, 26], 5: [6, 30], 6: [6, 34], 7: [6, 22, 38],
                   8: [6, 24, 42], 9: [6, 26, 46], 10: [6, 28, 50], 11: [6, 30, 54]}[version]  # fmt: skip
        for ar in centers:
            for ac in centers:
                corner = (ar, ac) in {(6, 6), (6, n - 7), (n - 7, 6)}
                if not corner and abs(r - ar) <= 2 and abs(c - ac) <= 2:
                    return True
    return False


def read_back(m: list[list[bool]]) -> tuple[str, int, bytes]:
    n = len(m)
    version = (n - 17) // 4
    fmt = sum(m[8][n - 1 - i] << i for i in range(8)) | sum(m[n - 15 + i][8] << i for i in range(8, 15))
    raw = fmt ^ 0x5412
    rem = raw
    for shift in range(14, 9, -1):
        if rem >> shift & 1:
            rem ^= 0x537 << (shift - 10)
    assert rem == 0, "format bits fail their BCH check"
    level, mask = {1: "L", 0: "M", 3: "Q", 2: "H"}[raw >> 13], raw >> 10 & 7
    bits: list[bool] = []
    col, upward = n - 1, True
    while col > 0:
        if col == 6:
            col -= 1
        rows = range(n - 1, -1, -1) if upward else range(n)
        for r in rows:
            for c in (col, col - 1):
                if not is_function(version, r, c):
                    bits.append(m[r][c] != MASKS[mask](r, c))
        col, upward = col - 2, not upward
    words = [
        int("".join("1" if b else "0" for b in bits[i : i + 8]), 2)
        for i in range(0, TOTAL[version - 1] * 8, 8)
    ]
    blocks, ec = BLOCKS[(version, level)]
    total = TOTAL[version - 1]
    short = blocks - total % blocks
    lengths = [total // blocks - ec + (i >= short) for i in range(blocks)]
    data: list[list[int]] = [[] for _ in range(blocks)]
    it = iter(words)
    for i in range(max(lengths)):
        for b in range(blocks):
            if i < lengths[b]:
                data[b].append(next(it))
    checks: list[list[int]] = [[] for _ in range(blocks)]
    for _ in range(ec):  # check codewords are interleaved the same way
        for b in range(blocks):
            checks[b].append(next(it))
    for d, e in zip(data, checks, strict=True):
        word = d + e
        for k in range(ec):  # every syndrome S_k = word(alpha^k) must vanish
            s = 0
            for w in word:
                s = (EXP[LOG[s] + k] if s else 0) ^ w
            assert s == 0, "Reed-Solomon syndrome"
    stream = "".join(f"{w:08b}" for d in data for w in d)
    assert stream[:4] == "0100", "byte mode"
    width = 8 if version < 10 else 16
    count = int(stream[4 : 4 + width], 2)
    body = stream[4 + width : 4 + width + 8 * count]
    return level, mask, bytes(int(body[i : i + 8], 2) for i in range(0, len(body), 8))


@pytest.mark.parametrize("level", "LMQH")
def test_every_version_reads_back(level: Level) -> None:
    for version, limit in enumerate(CAPACITY[level], start=1):
        payload = bytes((i * 37 + version) % 256 for i in range(limit))
        m = qr_matrix(payload, level, mask=version % 8)  # type: ignore[arg-type]
        assert len(m) == 17 + 4 * version
        assert read_back(m) == (level, version % 8, payload)


def test_the_mask_is_chosen_by_penalty() -> None:
    data = b"otpauth://totp/fleetgate:alice?secret=AAAA"
    chosen = qr_matrix(data)
    assert read_back(chosen)[2] == data
    assert chosen in [qr_matrix(data, mask=m) for m in range(8)]
    assert qr_matrix(EMOJI[0], "Q") == qr_matrix(EMOJI[0], "Q", EMOJI[2])  # same choice as the reference
    assert qr_matrix(LONG[0], "M") == qr_matrix(LONG[0], "M", LONG[2])


def test_reference_vectors_read_back_too() -> None:
    for data, level, mask, expected in (FOX, EMOJI, LONG):
        assert read_back([[ch == "X" for ch in row] for row in expected]) == (level, mask, data)


def test_provisioning_png() -> None:
    uri = provisioning_uri(b"\x01" * 20, "alice", "fleetgate")
    matrix = qr_matrix(uri.encode())
    assert read_back(matrix)[2] == uri.encode()
    png = read_png(provisioning_qr_png(uri, scale=4, border=4))
    side = (len(matrix) + 8) * 4
    assert (png.width, png.height) == (side, side)
    assert colours(png) == {(0, 0, 0), (255, 255, 255)}
    assert rgb_at(png, 0, 0) == (255, 255, 255)  # quiet zone
    assert rgb_at(png, 16, 16) == (0, 0, 0)  # top-left finder corner
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            assert rgb_at(png, 16 + c * 4 + 1, 16 + r * 4 + 2) == ((0, 0, 0) if dark else (255, 255, 255))
