"""The provisioning QR code an operator scans: read back by a real QR decoder (zxing-cpp) from the PNG
the CLI writes, the symbol segno chose (version, error correction, size), and the terminal rendering
module for module the same code."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from gateway.admin.totp_store import enroll, provisioning_qr

SCALE, BORDER = 6, 4  # what enroll() writes: 6 pixels a module, 4 modules of quiet zone
HALF_BLOCKS = {"█": (0, 0), " ": (1, 1), "▀": (0, 1), "▄": (1, 0)}  # (top, bottom) dark?


@pytest.fixture
def enrolled(tmp_path: Path) -> tuple[str, Path, str]:
    out, data = tmp_path / "ids", tmp_path / "data"
    out.mkdir()
    data.mkdir()
    enrollment = enroll(data, "alice", "fleetgate fleet.local", out)
    return enrollment.uri, enrollment.qr_png, enrollment.qr_text


def test_a_qr_decoder_reads_the_exact_uri_back_from_the_png(enrolled: tuple[str, Path, str]) -> None:
    uri, png, _ = enrolled
    assert stat.S_IMODE(png.stat().st_mode) == 0o600  # it holds the secret
    [found] = zxingcpp.read_barcodes(Image.open(png))
    assert found.format == zxingcpp.BarcodeFormat.QRCode
    assert found.text == uri and uri.startswith("otpauth://totp/fleetgate%20fleet.local:alice?secret=")


def test_the_symbol_is_a_full_qr_code_at_level_m_and_the_png_is_its_size(
    enrolled: tuple[str, Path, str],
) -> None:
    uri, png, _ = enrolled
    code = provisioning_qr(uri)
    assert (code.is_micro, code.error, code.version) == (False, "M", 8)  # the review's URI length: version 8
    modules = 17 + 4 * 8
    with Image.open(png) as image:
        assert image.size == ((modules + 2 * BORDER) * SCALE,) * 2
        assert image.getpixel((0, 0)) in (1, 255, (255, 255, 255))  # a light quiet zone
    assert png.stat().st_size < 2000  # the hand-written encoder wrote 7 KiB for the same code


def test_the_terminal_rendering_is_the_same_code_module_for_module(enrolled: tuple[str, Path, str]) -> None:
    uri, _, text = enrolled
    matrix = [list(row) for row in provisioning_qr(uri).matrix]
    width = len(matrix) + 2 * BORDER
    light = [0] * width
    expected = [light] * BORDER + [[0] * BORDER + row + [0] * BORDER for row in matrix] + [light] * BORDER
    drawn: list[list[int]] = []
    for line in text.splitlines():  # each character is two modules: the upper and the lower half
        assert len(line) == width
        drawn += [[HALF_BLOCKS[c][0] for c in line], [HALF_BLOCKS[c][1] for c in line]]
    assert drawn[: len(expected)] == expected
