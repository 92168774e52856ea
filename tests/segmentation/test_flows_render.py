"""Flow map renderers: JSON, the rich table, Mermaid by shape, and an SVG read back as XML: its boxes,
edges and labels, and a canvas that holds all of them, the legend included."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET

from rich.console import Console

from gateway.context.flows import FlowMap, FlowRecorder
from gateway.render.flows_render import (
    CHAR_W,
    DENIED,
    PROTECT,
    PROTECT_LABEL,
    flowmap_to_dict,
    to_json,
    to_mermaid,
    to_svg,
    to_table,
)

SVG = "{http://www.w3.org/2000/svg}"


def demo_map() -> FlowMap:
    r = FlowRecorder(window=60)
    for i in range(20):
        unit = f"TRK-{i}"
        r.record(
            "unit", unit, "unit", "publish", f"fleet/{unit}/telemetry/gps", {"location", "pii"}, True, 80, 1.0
        )
        r.record("service", "dispatch", "service/dispatch", "receive", f"fleet/{unit}/telemetry/gps",
                 {"location", "pii"}, True, 80, 1.0)  # fmt: skip
        r.record("partner", "acme", "partner/acme", "receive", f"views/2/fleet/u-{i:016x}/gps",
                 {"location"}, True, 30, 1.0)  # fmt: skip
    r.record("partner", "acme", "partner/acme", "subscribe", "views/2/fleet/+/gps", set(), True, 0, 1.0)
    r.record("partner", "evil", "partner/evil", "subscribe", "fleet/+/telemetry/#", set(), False, 0, 2.0)
    r.record("unit", "TRK-3", "unit", "publish", 'fleet/TRK-3/x"y|z', set(), False, 5, 2.0)
    return r.snapshot(11.0)


class TestJson:
    def test_round_trips_with_rows_and_protect_surface(self) -> None:
        data = json.loads(to_json(demo_map()))
        assert data == flowmap_to_dict(demo_map())
        assert data["window_seconds"] == 60 and data["sensitive_classes"] == ["commercial", "pii"]
        assert data["protect_surface"] == [
            {"group": "service/dispatch", "classes": ["pii"], "templates": ["fleet/{unit}/telemetry/gps"],
             "messages": 20}
        ]  # fmt: skip
        row = next(r for r in data["rows"] if r["group"] == "unit" and not r["denied"])
        assert row == {
            "group": "unit", "kind": "unit", "action": "publish", "template": "fleet/{unit}/telemetry/gps",
            "messages": 20, "denied": 0, "bytes": 1600, "rate_per_second": 2.0, "identities": 20,
            "data_classes": ["location", "pii"], "protect_surface": False,
        }  # fmt: skip


def test_table_lists_every_row_and_names_the_protect_surface() -> None:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(to_table(demo_map()))
    text = out.getvalue()
    assert "service/dispatch" in text and "◀ protect surface" in text
    assert "Protect surface: service/dispatch (pii)" in text
    assert text.count("partner/") == 3  # acme receive + subscribe, evil subscribe
    empty = io.StringIO()
    Console(file=empty, width=200).print(to_table(FlowRecorder().snapshot(0)))
    assert "nobody received commercial or pii data" in empty.getvalue()


class TestMermaid:
    NODE = re.compile(r'^  ([gt]\d+)(\["[^"]*"\]|\(\["[^"]*"\]\))$')
    EDGE = re.compile(r'^  ([gt]\d+) (-->|-\.->)\|"([^"]*)"\| ([gt]\d+)$')

    def parse(self, text: str) -> tuple[dict[str, str], list[tuple[str, str, str, str]], list[str]]:
        lines = text.splitlines()
        assert lines[0] == "flowchart LR"
        nodes, edges, rest = {}, [], []
        for line in lines[1:]:
            if m := self.NODE.match(line):
                nodes[m.group(1)] = m.group(2).strip('[]()"')
            elif m := self.EDGE.match(line):
                edges.append((m.group(1), m.group(2), m.group(3), m.group(4)))
            else:
                rest.append(line.strip())
        return nodes, edges, rest

    def test_shape(self) -> None:
        nodes, edges, rest = self.parse(to_mermaid(demo_map()))
        label = {v: k for k, v in nodes.items()}
        unit, dispatch, gps = label["unit"], label["service/dispatch"], label["fleet/{unit}/telemetry/gps"]
        assert (unit, "-->", "2.0/s", gps) in edges
        assert (gps, "-->", "2.0/s pii", dispatch) in edges
        view = label["views/2/fleet/{unit}/gps"]
        assert (view, "-->", "2.0/s", label["partner/acme"]) in edges
        assert (label["fleet/+/telemetry/#35;"], "-.->", "denied 1", label["partner/evil"]) in edges
        assert (unit, "-.->", "denied 1", label["fleet/{unit}/x#quot;y#124;z"]) in edges
        assert not any(e[2] == "views/2/fleet/+/gps" for e in edges)  # allowed subscriptions: table only
        denied = [str(i) for i, e in enumerate(edges) if e[1] == "-.->"]
        sensitive = [str(i) for i, e in enumerate(edges) if "pii" in e[2]]
        assert f"linkStyle {','.join(denied)} stroke:#d32f2f,stroke-width:2px,stroke-dasharray:5 5" in rest
        assert f"linkStyle {','.join(sensitive)} stroke:#e65100,stroke-width:3px" in rest
        assert f"class {dispatch} protect" in rest
        assert any(r.startswith("classDef protect ") for r in rest)
        assert all(r.startswith(("classDef ", "class ", "linkStyle ")) for r in rest)

    def test_empty_map_is_still_a_flowchart(self) -> None:
        nodes, edges, _ = self.parse(to_mermaid(FlowRecorder().snapshot(0)))
        assert nodes == {} and edges == []


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


class TestSvg:
    def parse(self, text: str) -> ET.Element:
        root = ET.fromstring(text)  # well-formed XML, or this raises
        assert root.tag == f"{SVG}svg"
        return root

    def test_boxes_edges_and_labels_are_there_to_read(self) -> None:
        root = self.parse(to_svg(demo_map()))
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert texts[0] == "fleetgate data flows" and texts[1].startswith("window 60 s, at ")
        for label in (
            "unit",
            "service/dispatch",
            "partner/acme",
            "partner/evil",
            "fleet/{unit}/telemetry/gps",
        ):
            assert label in texts, label
        assert 'fleet/{unit}/x"y|z' in texts  # quotes and bars are text, never markup
        edges = [e for e in root.iter(f"{SVG}line") if "edge" in e.get("class", "")]
        kinds = [e.get("class") for e in edges]
        assert "edge denied" in kinds and "edge protect" in kinds and "edge data" in kinds
        for edge in edges:
            if edge.get("class") == "edge denied":
                assert edge.get("stroke") == _hex(DENIED) and edge.get("stroke-dasharray") != "none"
        protect = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "node protect"]
        assert len(protect) == 1 and protect[0].get("stroke") == _hex(PROTECT)

    def test_a_denied_attempt_is_drawn_beside_the_data_on_the_same_path(self) -> None:
        root = self.parse(to_svg(demo_map()))
        edges = [e for e in root.iter(f"{SVG}line") if "edge" in e.get("class", "")]
        data = {(e.get("x1"), e.get("y1")) for e in edges if e.get("class") != "edge denied"}
        denied = {(e.get("x1"), e.get("y1")) for e in edges if e.get("class") == "edge denied"}
        assert denied and not denied & data

    def test_the_canvas_holds_everything_the_legend_included(self) -> None:
        for flows in (demo_map(), FlowRecorder().snapshot(0)):
            root = self.parse(to_svg(flows))
            width, height = float(root.get("width", 0)), float(root.get("height", 0))
            assert root.get("viewBox") == f"0 0 {width:.0f} {height:.0f}"
            for text in root.iter(f"{SVG}text"):
                x, y = float(text.get("x", 0)), float(text.get("y", 0))
                assert x >= 0 and x + len(text.text or "") * CHAR_W <= width, text.text
                assert 0 < y <= height, text.text
            legend = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "legend"]
            assert legend == ["data", "sensitive data", "denied attempt", PROTECT_LABEL]

    def test_empty_map_says_so(self) -> None:
        root = self.parse(to_svg(FlowRecorder().snapshot(0)))
        assert "no flows in the window" in [t.text for t in root.iter(f"{SVG}text")]

    def test_control_characters_in_a_label_are_escaped_not_written(self) -> None:
        r = FlowRecorder(window=60)
        r.record("unit", "TRK-1", "unit", "publish", "fleet/TRK-1/\x1b[31m\x00", set(), False, 1, 1.0)
        text = to_svg(r.snapshot(1.0))
        assert "\x1b" not in text and "\x00" not in text
        assert "\\x1b" in text  # shown, escaped
        self.parse(text)
