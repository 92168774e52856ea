"""Flow map renderers: JSON, the rich table, Mermaid by shape, and a PNG that is valid and not blank."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from gateway.context.flows import FlowMap, FlowRecorder
from gateway.render.flows_render import (
    DENIED,
    PROTECT,
    PROTECT_FILL,
    WHITE,
    encode_png,
    flowmap_to_dict,
    to_json,
    to_mermaid,
    to_png,
    to_table,
)
from tests.segmentation.png_check import colours, read_png, rgb_at


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


class TestPng:
    def test_valid_png_with_the_expected_colours(self) -> None:
        png = read_png(to_png(demo_map()))
        assert png.bit_depth == 8 and png.color_type == 2 and png.chunks == [b"IHDR", b"IDAT", b"IEND"]
        assert 400 < png.width < 2000 and 150 < png.height < 1000
        seen = colours(png)
        assert {WHITE, DENIED, PROTECT, PROTECT_FILL} <= seen  # denied edges, protect surface box
        ink = sum(1 for row in png.rows for i in range(0, len(row), 3) if row[i : i + 3] != b"\xff\xff\xff")
        assert ink > png.width * png.height // 50  # not blank

    def test_empty_map_renders_a_message(self) -> None:
        png = read_png(to_png(FlowRecorder().snapshot(0)))
        assert len(colours(png)) > 1

    def test_encoder(self) -> None:
        pixels = bytes([10, 20, 30]) * 6 + bytes([200, 100, 0]) * 6
        png = read_png(encode_png(6, 2, pixels))
        assert (png.width, png.height) == (6, 2)
        assert rgb_at(png, 0, 0) == (10, 20, 30) and rgb_at(png, 5, 1) == (200, 100, 0)
        with pytest.raises(ValueError, match="expected 6x2 RGB pixels"):
            encode_png(6, 2, pixels[:-1])
