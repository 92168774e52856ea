"""A PNG line chart without third-party libraries: a raster, lines and a 3x5 pixel font.

matplotlib is not installed here and a load report needs only two small panels (throughput and
latency over time), so this draws them itself; gateway.render.png encodes the raster. Text is limited
to the characters in `_FONT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.render.png import encode_png

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (200, 200, 200)
BLUE: Color = (31, 119, 180)
ORANGE: Color = (255, 127, 14)
RED: Color = (214, 39, 40)

# 3 columns x 5 rows per glyph, one string per row, '#' = ink.
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    ".": ("...", "...", "...", "...", ".#."),
    "/": ("..#", "..#", ".#.", "#..", "#.."),
    "-": ("...", "...", "###", "...", "..."),
    "(": (".#.", "#..", "#..", "#..", ".#."),
    ")": (".#.", "..#", "..#", "..#", ".#."),
    ",": ("...", "...", "...", ".#.", "#.."),
    " ": ("...", "...", "...", "...", "..."),
    "k": ("#..", "#.#", "##.", "#.#", "#.#"),
    "a": ("...", "##.", "..#", "###", "###"),
    "c": ("...", "###", "#..", "#..", "###"),
    "d": ("..#", "..#", "###", "#.#", "###"),
    "e": ("###", "#.#", "###", "#..", "###"),
    "f": (".##", "#..", "###", "#..", "#.."),
    "g": ("###", "#.#", "###", "..#", "##."),
    "i": (".#.", "...", ".#.", ".#.", ".#."),
    "l": ("#..", "#..", "#..", "#..", "##."),
    "m": ("...", "###", "###", "#.#", "#.#"),
    "n": ("...", "##.", "#.#", "#.#", "#.#"),
    "o": ("...", "###", "#.#", "#.#", "###"),
    "p": ("###", "#.#", "###", "#..", "#.."),
    "r": ("...", "###", "#..", "#..", "#.."),
    "s": ("###", "#..", "###", "..#", "###"),
    "t": (".#.", "###", ".#.", ".#.", ".##"),
    "u": ("...", "#.#", "#.#", "#.#", "###"),
    "v": ("...", "#.#", "#.#", "#.#", ".#."),
    "y": ("#.#", "#.#", "###", "..#", "##."),
    "x": ("...", "#.#", ".#.", ".#.", "#.#"),
}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Bresenham, both directions."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2) -> None:
        for ch in text.lower():
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        for i in range(scale):
                            for j in range(scale):
                                self.dot(x + col * scale + i, y + row * scale + j, color)
            x += 4 * scale

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.pixels))


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (x, y)
    color: Color


def _fmt(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def panel(
    canvas: Canvas,
    top: int,
    height: int,
    title: str,
    series: Sequence[Series],
    x_range: tuple[float, float] | None = None,
) -> None:
    """One chart in the band [top, top + height): axes, 4 grid lines with labels, the series."""
    left, right = 70, canvas.width - 20
    plot_top, plot_bottom = top + 24, top + height - 24
    canvas.text(left, top + 4, title)
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points] or [0.0, 1.0]
    x0, x1 = x_range or (min(xs), max(xs))
    x1 = max(x1, x0 + 1e-9)
    y1 = max(max(ys), 1e-9) * 1.1
    for k in range(5):
        grid = plot_bottom - (plot_bottom - plot_top) * k // 4
        canvas.line(left, grid, right, grid, GREY)
        canvas.text(4, grid - 5, _fmt(y1 * k / 4))
    canvas.line(left, plot_top, left, plot_bottom, BLACK)
    canvas.line(left, plot_bottom, right, plot_bottom, BLACK)
    canvas.text(right - 80, plot_bottom + 6, f"{x1 - x0:.0f} s")

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + round((x - x0) / (x1 - x0) * (right - left))
        py = plot_bottom - round(y / y1 * (plot_bottom - plot_top))
        return px, py

    legend_x = left + 24 + len(title) * 8
    for s in series:
        previous = None
        for px, py in s.points:
            point = to_px(px, py)
            if previous is not None:
                canvas.line(*previous, *point, s.color)
            previous = point
        canvas.line(legend_x, top + 9, legend_x + 16, top + 9, s.color)
        canvas.text(legend_x + 20, top + 4, s.label, s.color)
        legend_x += 28 + len(s.label) * 8  # 8 px per glyph at scale 2


def write_chart(
    path: Path,
    panels: Sequence[tuple[str, Sequence[Series]]],
    x_range: tuple[float, float] | None = None,
    width: int = 800,
) -> None:
    band = 220
    canvas = Canvas(width, band * len(panels))
    for i, (title, series) in enumerate(panels):
        panel(canvas, i * band, band, title, series, x_range)
    path.write_bytes(canvas.png())
