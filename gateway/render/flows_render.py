"""Render a FlowMap (gateway/context/flows.py): a rich table, JSON, Mermaid text and an SVG diagram. Pure.

The diagram reads left to right: senders -> topic templates -> receivers (a group that does both is
drawn in both columns). Solid edges are data that flowed; dashed red edges are attempts the policy
denied; receivers of a sensitive class (the protect surface) are orange, as are the edges bringing
them that data. Allowed subscriptions are in the table and JSON only: the diagram shows data, not
intent, so a subscription appears once something is received through it.

The diagram is SVG, written here as text: vector shapes and real text, which any browser or wiki shows
and a test can read back; the canvas is as wide as its widest part, the legend included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from rich.table import Table

from gateway.context.flows import FlowMap, FlowRow
from gateway.render.safe_text import cell, printable

__all__ = ["flowmap_to_dict", "protect_caption", "table_rows", "to_json", "to_mermaid", "to_svg", "to_table"]

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


TABLE_HEADERS = (
    "group",
    "action",
    "topic template",
    "msgs",
    "rate/s",
    "denied",
    "ids",
    "bytes",
    "data classes",
)


def table_rows(flows: FlowMap) -> list[list[str]]:
    """The table's cells, for rich (`to_table`) and for plain columns in a pipe alike."""
    rows = []
    for r in flows.rows:
        classes = ", ".join(sorted(r.data_classes)) + ("  ◀ protect surface" if r.protect else "")
        denied = str(r.denied) if r.denied else ""
        rows.append(
            [r.group, r.action, r.template, str(r.messages), f"{r.rate:.2f}", denied, str(r.identities),
             str(r.bytes), classes]
        )  # fmt: skip
    return rows


def protect_caption(flows: FlowMap) -> str:
    if flows.protect_surface:
        who = "; ".join(f"{e.group} ({', '.join(sorted(e.classes))})" for e in flows.protect_surface)
        return f"Protect surface: {who}"
    return f"Protect surface: nobody received {' or '.join(sorted(flows.sensitive))} data"


def to_table(flows: FlowMap) -> Table:
    table = Table(title=f"Data flows, last {flows.window:g} s", title_justify="left")
    for index, name in enumerate(TABLE_HEADERS):
        table.add_column(name, justify="right" if 3 <= index <= 7 else "left")
    for r, cells in zip(flows.rows, table_rows(flows), strict=True):
        style = "bold dark_orange" if r.protect else ("red" if r.denied and not r.messages else None)
        # Topics are what units chose: shown literally (escaped, never read as rich markup).
        table.add_row(*(cell(c) for c in cells), style=style)
    table.caption = cell(protect_caption(flows))
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


# ------------------------------------------------------------------------------------------- SVG
# A picture a browser, an image viewer or a wiki shows as it is, and text a test can read: boxes,
# edges with arrow heads, and the labels as text (monospace, so their width is known here).

FONT_SIZE, CHAR_W = 12, 7.3  # px; monospace advance at 12 px is 0.6 em, rounded up
BOX_H, ROW_GAP, COL_GAP, MARGIN, MAX_NODES = 24, 12, 150, 20, 150
DENIED_OFFSET = 5  # px: a denied attempt is drawn beside the data edge of the same path, not over it


def _text_width(text: str, size: float = FONT_SIZE) -> float:
    return len(text) * CHAR_W * size / FONT_SIZE


def _css(color: Color) -> str:
    return "#" + _hex(color)


@dataclass(frozen=True, slots=True)
class _Node:
    label: str
    x: float
    y: float
    w: float
    fill: Color
    border: Color


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, element: str, /, content: str | None = None, **attrs: object) -> None:
        rendered = " ".join(f'{k.rstrip("_").replace("_", "-")}="{_attr(v)}"' for k, v in attrs.items())
        if content is None:
            self.parts.append(f"<{element} {rendered}/>")
        else:
            self.parts.append(f"<{element} {rendered}>{escape(printable(content))}</{element}>")

    def document(self, width: float, height: float, title: str) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="{FONT_SIZE}">'
        )
        markers = "".join(
            f'<marker id="arrow-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{_css(color)}"/></marker>'
            for name, color in (("data", EDGE), ("protect", PROTECT), ("denied", DENIED))
        )
        background = f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="{_css(WHITE)}"/>'
        return "\n".join(
            [head, f"<title>{escape(printable(title))}</title>", f"<defs>{markers}</defs>", background,
             *self.parts, "</svg>", ""]
        )  # fmt: skip


def _attr(value: object) -> str:
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    return escape(printable(text), {'"': "&quot;"})


def to_svg(flows: FlowMap) -> str:
    """The map as an SVG document (UTF-8 text)."""
    drawn = _drawn(flows)
    protect = {e.group for e in flows.protect_surface}
    senders = sorted({r.group for r, _ in drawn if r.action == "publish"})[:MAX_NODES]
    topics = sorted({r.template for r, _ in drawn})[:MAX_NODES]
    receivers = sorted({r.group for r, _ in drawn if r.action != "publish"})[:MAX_NODES]
    columns: list[tuple[list[str], float, float]] = []
    x: float = MARGIN
    for labels in (senders, topics, receivers):
        width = max(_text_width(s) for s in [*labels, "--------"]) + 16
        columns.append((labels, x, width))
        x += width + COL_GAP
    top = MARGIN + 44
    rows = max(len(senders), len(topics), len(receivers), 1)
    legend_y = top + rows * (BOX_H + ROW_GAP) + 24
    svg = _Svg()
    when = datetime.fromtimestamp(flows.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    svg.add("text", "fleetgate data flows", x=MARGIN, y=MARGIN + 14, font_size=18, font_weight="bold")
    svg.add("text", f"window {flows.window:g} s, at {when}", x=MARGIN, y=MARGIN + 34, fill=_css(EDGE))
    placed: dict[tuple[int, str], _Node] = {}
    for col, (labels, cx, width) in enumerate(columns):
        for i, label in enumerate(labels):
            hot = col == 2 and label in protect
            fill = PROTECT_FILL if hot else (TOPIC_FILL if col == 1 else BOX_FILL)
            node = _Node(label, cx, top + i * (BOX_H + ROW_GAP), width, fill, PROTECT if hot else EDGE)
            placed[(col, label)] = node
    for r, denied in drawn:
        ends = (
            (placed.get((0, r.group)), placed.get((1, r.template)))
            if r.action == "publish"
            else (placed.get((1, r.template)), placed.get((2, r.group)))
        )
        a, b = ends
        if a is None or b is None:
            continue
        hot = not denied and r.action == "receive" and bool(r.data_classes & flows.sensitive)
        kind = "denied" if denied else ("protect" if hot else "data")
        shift = DENIED_OFFSET if denied else 0
        svg.add(
            "line",
            x1=a.x + a.w, y1=a.y + BOX_H / 2 + shift, x2=b.x - 2, y2=b.y + BOX_H / 2 + shift,
            stroke=_css({"denied": DENIED, "protect": PROTECT, "data": EDGE}[kind]),
            stroke_width=3 if hot else 2, stroke_dasharray="6 4" if denied else "none",
            marker_end=f"url(#arrow-{kind})", class_=f"edge {kind}",
        )  # fmt: skip
    for node in placed.values():
        svg.add(
            "rect",
            x=node.x, y=node.y, width=node.w, height=BOX_H, rx=4,
            fill=_css(node.fill), stroke=_css(node.border), stroke_width=2 if node.border == PROTECT else 1,
            class_="node protect" if node.border == PROTECT else "node",
        )  # fmt: skip
        svg.add("text", node.label, x=node.x + 8, y=node.y + BOX_H / 2 + FONT_SIZE * 0.35, fill=_css(INK))
    if not drawn:
        svg.add("text", "no flows in the window", x=MARGIN, y=top + FONT_SIZE, fill=_css(EDGE))
    legend_end = _legend(svg, legend_y)
    width = max(x - COL_GAP + MARGIN, legend_end + MARGIN)  # the legend is never cut off at the edge
    return svg.document(width, legend_y + 24, "fleetgate data flows")


LEGEND = (
    (EDGE, "none", "data"),
    (PROTECT, "none", "sensitive data"),
    (DENIED, "6 4", "denied attempt"),
)
PROTECT_LABEL = "protect surface (receives sensitive classes)"


def _legend(svg: _Svg, y: float) -> float:
    """Draws the legend on one line from the left margin; returns where it ends (x)."""
    x: float = MARGIN
    for color, dash, label in LEGEND:
        svg.add("line", x1=x, y1=y - 4, x2=x + 30, y2=y - 4, stroke=_css(color), stroke_width=2,
                stroke_dasharray=dash)  # fmt: skip
        svg.add("text", label, x=x + 38, y=y, fill=_css(INK), class_="legend")
        x += 38 + _text_width(label) + 24
    svg.add("rect", x=x, y=y - 11, width=14, height=14, fill=_css(PROTECT_FILL), stroke=_css(PROTECT),
            stroke_width=2)  # fmt: skip
    svg.add("text", PROTECT_LABEL, x=x + 22, y=y, fill=_css(INK), class_="legend")
    return x + 22 + _text_width(PROTECT_LABEL)
