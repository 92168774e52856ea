"""Render a FlowMap (gateway/context/flows.py): a rich table, JSON, Mermaid text and a PNG diagram. Pure.

The diagram reads left to right: senders -> topic templates -> receivers (a group that does both is
drawn in both columns). Solid edges are data that flowed; dashed red edges are attempts the policy
denied; receivers of a sensitive class (the protect surface) are orange, as are the edges bringing
them that data. Allowed subscriptions are in the table and JSON only: the diagram shows data, not
intent, so a subscription appears once something is received through it.

The PNG is drawn without any imaging library (none is a dependency): an RGB raster, lines, boxes, a
built-in 5x7 bitmap font, and the PNG container (signature, IHDR, one zlib IDAT, IEND, CRC-32 each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from gateway.context.flows import FlowMap, FlowRow
from gateway.render.png import encode_png
from gateway.render.safe_text import cell

__all__ = ["encode_png", "flowmap_to_dict", "to_json", "to_mermaid", "to_png", "to_table"]

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
INK: Color = (33, 33, 33)
EDGE: Color = (84, 110, 122)
DENIED: Color = (211, 47, 47)
PROTECT: Color = (230, 81, 0)
PROTECT_FILL: Color = (255, 224, 178)
BOX_FILL: Color = (227, 242, 253)
TOPIC_FILL: Color = (245, 245, 245)

# ------------------------------------------------------------------------------------ text formats


def flowmap_to_dict(flows: FlowMap) -> dict[str, Any]:
    return {
        "generated_at": flows.generated_at,
        "window_seconds": flows.window,
        "sensitive_classes": sorted(flows.sensitive),
        "overflow": flows.overflow,
        "rows": [
            {
                "group": r.group,
                "kind": r.kind,
                "action": r.action,
                "template": r.template,
                "messages": r.messages,
                "denied": r.denied,
                "bytes": r.bytes,
                "rate_per_second": round(r.rate, 3),
                "identities": r.identities,
                "data_classes": sorted(r.data_classes),
                "protect_surface": r.protect,
            }
            for r in flows.rows
        ],
        "protect_surface": [
            {
                "group": e.group,
                "classes": sorted(e.classes),
                "templates": list(e.templates),
                "messages": e.messages,
            }
            for e in flows.protect_surface
        ],
    }


def to_json(flows: FlowMap) -> str:
    return json.dumps(flowmap_to_dict(flows), indent=2, ensure_ascii=False)


def to_table(flows: FlowMap) -> Table:
    table = Table(title=f"Data flows, last {flows.window:g} s", title_justify="left")
    for name, justify in [
        ("group", "left"),
        ("action", "left"),
        ("topic template", "left"),
        ("msgs", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name in ("rate/s", "denied", "ids", "bytes"):
        table.add_column(name, justify="right")
    table.add_column("data classes")
    for r in flows.rows:
        style = "bold dark_orange" if r.protect else ("red" if r.denied and not r.messages else None)
        classes = ", ".join(sorted(r.data_classes)) + ("  ◀ protect surface" if r.protect else "")
        denied = str(r.denied) if r.denied else ""
        cells = [r.group, r.action, r.template, str(r.messages), f"{r.rate:.2f}", denied, str(r.identities)]
        # Topics are what units chose: shown literally (escaped, never read as rich markup).
        table.add_row(*(cell(c) for c in (*cells, str(r.bytes), classes)), style=style)
    if flows.protect_surface:
        who = "; ".join(f"{e.group} ({', '.join(sorted(e.classes))})" for e in flows.protect_surface)
        table.caption = cell(f"Protect surface: {who}")
    else:
        table.caption = f"Protect surface: nobody received {' or '.join(sorted(flows.sensitive))} data"
    return table


def _mermaid_text(text: str) -> str:
    for raw, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        text = text.replace(raw, code)
    return text


def to_mermaid(flows: FlowMap) -> str:
    nodes: dict[str, str] = {}
    lines = ["flowchart LR"]

    def node(kind: str, label: str) -> str:
        key = f"{kind}:{label}"
        if key not in nodes:
            nodes[key] = f"{kind[0]}{len(nodes)}"
            shape = '(["{}"])' if kind == "topic" else '["{}"]'
            lines.append(f"  {nodes[key]}{shape.format(_mermaid_text(label))}")
        return nodes[key]

    edges: list[tuple[str, str, str, str]] = []  # (from, to, label, style)
    for r, denied in _drawn(flows):
        group, topic = node("group", r.group), node("topic", r.template)
        ends = (group, topic) if r.action == "publish" else (topic, group)
        if denied:
            edges.append((*ends, f"denied {r.denied}", "denied"))
        else:
            sensitive = sorted(r.data_classes & flows.sensitive) if r.action == "receive" else []
            label = f"{r.rate:.1f}/s" + (f" {', '.join(sensitive)}" if sensitive else "")
            edges.append((*ends, label, "protect" if sensitive else "data"))
    for a, b, label, style in edges:
        arrow = "-.->" if style == "denied" else "-->"
        lines.append(f'  {a} {arrow}|"{_mermaid_text(label)}"| {b}')
    lines.append(f"  classDef protect fill:#ffe0b2,stroke:#e65100,stroke-width:3px,color:#{_hex(INK)}")
    lines.append("  classDef topic fill:#f5f5f5,stroke:#9e9e9e")
    protect = sorted(nodes[f"group:{e.group}"] for e in flows.protect_surface if f"group:{e.group}" in nodes)
    if protect:
        lines.append(f"  class {','.join(protect)} protect")
    topics = [n for k, n in nodes.items() if k.startswith("topic:")]
    if topics:
        lines.append(f"  class {','.join(topics)} topic")
    for style, css in (("denied", "stroke:#d32f2f,stroke-width:2px,stroke-dasharray:5 5"),
                       ("protect", "stroke:#e65100,stroke-width:3px")):  # fmt: skip
        indices = [str(i) for i, e in enumerate(edges) if e[3] == style]
        if indices:
            lines.append(f"  linkStyle {','.join(indices)} {css}")
    return "\n".join(lines) + "\n"


def _hex(color: Color) -> str:
    return "".join(f"{c:02x}" for c in color)


def _drawn(flows: FlowMap) -> list[tuple[FlowRow, bool]]:
    """The rows a diagram shows: data that flowed (publish, receive) and every denied attempt."""
    out = []
    for r in flows.rows:
        if r.messages and r.action != "subscribe":
            out.append((r, False))
        if r.denied:
            out.append((r, True))
    return out


# ------------------------------------------------------------------------------------------- PNG

# Printable ASCII from " " to "~", 7 rows of 5 pixels per glyph; each row is one base-32 digit.
_FONT = (
    "00000004444404aaa0000aavavaa4fke5u4op248j3cik8lidc4800002488842842224804lel40044v4400000c48000v000"
    "00000cc01248g0ehjlphe4c4444eeh1248vv2421he26aiv22vgu11he68guhhev124888ehhehheehhf12c0cc0cc00cc0c48"
    "248g84200v0v008421248eh12404eh1dlleehhvhhhuhhuhhuehggghesihhhisvgguggvvggugggehgnhhfhhhvhhhe44444e"
    "72222ichikokihggggggvhrllhhhhhpljhhehhhhheuhhugggehhhliduhhukihfgge11uv444444hhhhhhehhhhha4hhhllla"
    "hha4ahhhha4444v1248gve88888e0g84210e22222e4ah0000000000v842000000e1fhfggmphhu00egghe11djhhf00ehvge"
    "698s888ehhf11eggmphhh40c444e20622icggikokic44444e00qllhh00mphhh00ehhhemphpmggdjhjd1100mpggg00ege1u"
    "88s889600hhhjd00hhha400hhlla00ha4ahhhhjd1e00v248v688g8864444444c22122c008l200"
)
GLYPH_W, GLYPH_H = 6, 9  # advance per character and line height (7 rows + 2 of descender)
_DESCENDERS = frozenset("gpqy")  # drawn two rows lower: their tails hang below the baseline


def _glyph(ch: str) -> list[int]:
    code = ord(ch) if 32 <= ord(ch) < 127 else ord("?")
    return [int(d, 32) for d in _FONT[(code - 32) * 7 : (code - 31) * 7]]


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            at = (y * self.width + x) * 3
            self.pixels[at : at + 3] = bytes(color)

    def fill(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        row = bytes(color) * max(0, min(w, self.width - x))
        for yy in range(max(y, 0), min(y + h, self.height)):
            at = (yy * self.width + max(x, 0)) * 3
            self.pixels[at : at + len(row)] = row

    def box(self, x: int, y: int, w: int, h: int, fill: Color, border: Color, thick: int = 1) -> None:
        self.fill(x, y, w, h, border)
        self.fill(x + thick, y + thick, w - 2 * thick, h - 2 * thick, fill)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, thick: int = 1, dash: int = 0) -> None:
        """Bresenham; `dash` > 0 draws `dash` pixels on, `dash` off."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, step = dx + dy, 0
        while True:
            if not dash or (step // dash) % 2 == 0:
                for t in range(thick):
                    self.dot(x0, y0 + t, color)
            if x0 == x1 and y0 == y1:
                return
            step += 1
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def arrow_head(self, x0: int, y0: int, x1: int, y1: int, color: Color, size: int = 8) -> None:
        """A filled triangle at (x1, y1) pointing along (x0, y0) -> (x1, y1)."""
        length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1.0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        bx, by = x1 - ux * size, y1 - uy * size
        corners = [
            (x1, y1),
            (bx - uy * size / 2, by + ux * size / 2),
            (bx + uy * size / 2, by - ux * size / 2),
        ]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        for y in range(int(min(ys)), int(max(ys)) + 1):
            for x in range(int(min(xs)), int(max(xs)) + 1):
                if _inside(x + 0.5, y + 0.5, corners):
                    self.dot(x, y, color)

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 1) -> None:
        for i, ch in enumerate(text):
            drop = 2 if ch in _DESCENDERS else 0
            for row, bits in enumerate(_glyph(ch)):
                for col in range(5):
                    if bits & (16 >> col):
                        self.fill(
                            x + (i * GLYPH_W + col) * scale, y + (row + drop) * scale, scale, scale, color
                        )

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.pixels))


def _inside(px: float, py: float, tri: list[tuple[float, float]]) -> bool:
    (ax, ay), (bx, by), (cx, cy) = tri
    d1 = (px - bx) * (ay - by) - (ax - bx) * (py - by)
    d2 = (px - cx) * (by - cy) - (bx - cx) * (py - cy)
    d3 = (px - ax) * (cy - ay) - (cx - ax) * (py - ay)
    return not ((d1 < 0 or d2 < 0 or d3 < 0) and (d1 > 0 or d2 > 0 or d3 > 0))


@dataclass(frozen=True, slots=True)
class _Node:
    label: str
    x: int
    y: int
    w: int
    fill: Color
    border: Color


BOX_H, ROW_GAP, COL_GAP, MARGIN, MAX_NODES = 22, 12, 150, 20, 150


def to_png(flows: FlowMap) -> bytes:
    drawn = _drawn(flows)
    protect = {e.group for e in flows.protect_surface}
    senders = sorted({r.group for r, _ in drawn if r.action == "publish"})[:MAX_NODES]
    topics = sorted({r.template for r, _ in drawn})[:MAX_NODES]
    receivers = sorted({r.group for r, _ in drawn if r.action != "publish"})[:MAX_NODES]
    columns, x = [], MARGIN
    for labels in (senders, topics, receivers):
        width = max([len(s) for s in labels] + [8]) * GLYPH_W + 16
        columns.append((labels, x, width))
        x += width + COL_GAP
    top = MARGIN + 40
    rows = max(len(senders), len(topics), len(receivers), 1)
    canvas = _Canvas(x - COL_GAP + MARGIN, top + rows * (BOX_H + ROW_GAP) + 60)
    when = datetime.fromtimestamp(flows.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    canvas.text(MARGIN, MARGIN, "fleetgate data flows", INK, scale=2)
    canvas.text(MARGIN, MARGIN + 20, f"window {flows.window:g} s, at {when}", EDGE)
    placed: dict[tuple[int, str], _Node] = {}
    for col, (labels, cx, width) in enumerate(columns):
        for i, label in enumerate(labels):
            hot = col == 2 and label in protect
            fill = PROTECT_FILL if hot else (TOPIC_FILL if col == 1 else BOX_FILL)
            node = _Node(label, cx, top + i * (BOX_H + ROW_GAP), width, fill, PROTECT if hot else EDGE)
            placed[(col, label)] = node
    for r, denied in drawn:
        if r.action == "publish":
            a, b = placed.get((0, r.group)), placed.get((1, r.template))
        else:
            a, b = placed.get((1, r.template)), placed.get((2, r.group))
        if a is None or b is None:
            continue
        hot = not denied and r.action == "receive" and bool(r.data_classes & flows.sensitive)
        color = DENIED if denied else (PROTECT if hot else EDGE)
        x0, y0, x1, y1 = a.x + a.w, a.y + BOX_H // 2, b.x - 2, b.y + BOX_H // 2
        canvas.line(x0, y0, x1, y1, color, thick=3 if hot else 2, dash=6 if denied else 0)
        canvas.arrow_head(x0, y0, x1, y1, color)
    for node in placed.values():
        canvas.box(
            node.x, node.y, node.w, BOX_H, node.fill, node.border, thick=2 if node.border == PROTECT else 1
        )
        canvas.text(node.x + 8, node.y + (BOX_H - GLYPH_H) // 2, node.label, INK)
    if not drawn:
        canvas.text(MARGIN, top, "no flows in the window", EDGE)
    _legend(canvas, canvas.height - 30)
    return canvas.png()


def _legend(canvas: _Canvas, y: int) -> None:
    x = MARGIN
    for color, dash, label in (
        (EDGE, 0, "data"),
        (PROTECT, 0, "sensitive data"),
        (DENIED, 6, "denied attempt"),
    ):
        canvas.line(x, y + 3, x + 30, y + 3, color, thick=2, dash=dash)
        canvas.text(x + 38, y, label, INK)
        x += 38 + len(label) * GLYPH_W + 24
    canvas.box(x, y - 4, 14, 14, PROTECT_FILL, PROTECT, thick=2)
    canvas.text(x + 22, y, "protect surface (receives sensitive classes)", INK)
