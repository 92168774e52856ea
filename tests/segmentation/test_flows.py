"""Flows discovery: templating, sliding-window aggregation, the protect surface, and bounded memory."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.context.flows import OTHER, FlowRecorder, FlowRow, topic_template


@pytest.mark.parametrize(
    ("topic", "template"),
    [
        ("fleet/TRK-1/telemetry/gps", "fleet/{unit}/telemetry/gps"),
        ("fleet/TRK-00042/diag/report", "fleet/{unit}/diag/report"),
        ("fleet/TRK-1/state", "fleet/{unit}/state"),
        ("fleet/TRK-1", "fleet/{unit}"),
        ("fleet/+/telemetry/#", "fleet/+/telemetry/#"),
        ("fleet/#", "fleet/#"),
        ("fleet/TRK-1/cmd/#", "fleet/{unit}/cmd/#"),
        ("$share/g1/fleet/+/telemetry/gps", "fleet/+/telemetry/gps"),
        ("$share/g1/fleet/TRK-9/state", "fleet/{unit}/state"),
        ("views/2/fleet/u-0123456789abcdef/gps", "views/2/fleet/{unit}/gps"),
        ("views/1/fleet/TRK-1/gps", "views/1/fleet/{unit}/gps"),
        ("views/+/fleet/+/gps", "views/+/fleet/+/gps"),
        ("views/2/other/x", "views/2/other/x"),
        ("fleet", "fleet"),
        ("fleet//x", "fleet//x"),
        ("$SYS/broker/load", "$SYS/broker/load"),
        ("other/TRK-1/x", "other/TRK-1/x"),
    ],
)
def test_topic_templates(topic: str, template: str) -> None:
    assert topic_template(topic) == template


def test_long_client_chosen_topics_are_cut() -> None:
    template = topic_template("fleet/TRK-1/" + "x" * 500)
    assert len(template) == 200 and template.startswith("fleet/{unit}/xxx") and template.endswith("…")


def test_custom_unit_templates() -> None:
    assert topic_template("site/a/truck/T1/gps", ["site/+/truck/{unit}/#"]) == "site/a/truck/{unit}/gps"


def _rec(r: FlowRecorder, now: float, **kw: Any) -> None:
    event: dict[str, Any] = {
        "identity_kind": "unit",
        "identity_id": "TRK-1",
        "group": "unit",
        "action": "publish",
        "topic": "fleet/TRK-1/telemetry/gps",
        "data_classes": {"location", "tracking"},
        "allowed": True,
        "size": 100,
    }
    event.update(kw)
    r.record(**event, now=now)


def _row(rows: tuple[FlowRow, ...], group: str, action: str, template: str) -> FlowRow:
    (found,) = [r for r in rows if (r.group, r.action, r.template) == (group, action, template)]
    return found


class TestAggregation:
    def test_ten_thousand_units_collapse_to_one_row(self) -> None:
        r = FlowRecorder(window=60)
        for i in range(10_000):
            _rec(r, 1000 + i * 0.005, identity_id=f"TRK-{i}", topic=f"fleet/TRK-{i}/telemetry/gps")
        (row,) = r.snapshot(1050).rows
        assert (row.group, row.action, row.template) == ("unit", "publish", "fleet/{unit}/telemetry/gps")
        assert row.messages == 10_000 and row.identities == 10_000 and row.bytes == 1_000_000
        assert row.rate == pytest.approx(10_000 / 50)  # seen for 50 s of the 60 s window
        assert row.data_classes == {"location", "tracking"} and not row.protect

    def test_rows_by_group_action_and_template(self) -> None:
        r = FlowRecorder(window=60)
        _rec(r, 0)
        _rec(r, 1, topic="fleet/TRK-1/diag/report", data_classes=set())
        _rec(r, 2, identity_kind="partner", identity_id="acme", group="partner/acme", action="subscribe",
             topic="views/2/fleet/+/gps", data_classes=set(), size=0)  # fmt: skip
        _rec(r, 3, identity_kind="partner", identity_id="acme", group="partner/acme", action="receive",
             topic="views/2/fleet/u-1/gps")  # fmt: skip
        keys = [(x.group, x.action, x.template) for x in r.snapshot(10).rows]
        assert keys == [
            ("partner/acme", "receive", "views/2/fleet/{unit}/gps"),
            ("partner/acme", "subscribe", "views/2/fleet/+/gps"),
            ("unit", "publish", "fleet/{unit}/diag/report"),
            ("unit", "publish", "fleet/{unit}/telemetry/gps"),
        ]

    def test_denied_attempts_are_counted_apart(self) -> None:
        r = FlowRecorder(window=60)
        _rec(r, 0)
        _rec(r, 1, allowed=False, data_classes={"pii"}, size=999)
        _rec(r, 2, allowed=False)
        row = r.snapshot(10).rows[0]
        assert (row.messages, row.denied, row.bytes) == (1, 2, 100)
        assert row.data_classes == {"location", "tracking"}  # denied data never flowed

    def test_the_window_slides(self) -> None:
        r = FlowRecorder(window=60)  # buckets of 2 s
        for t in range(0, 120):
            _rec(r, float(t))
        row = r.snapshot(120.0).rows[0]
        assert 58 <= row.messages <= 60
        assert row.rate == pytest.approx(row.messages / 60)
        assert r.snapshot(500.0).rows == ()

    def test_young_recorder_rates_use_the_time_seen(self) -> None:
        r = FlowRecorder(window=300)
        for t in range(10):
            _rec(r, 1000.0 + t)
        assert r.snapshot(1010.0).rows[0].rate == pytest.approx(1.0)

    def test_identities_leave_the_window_too(self) -> None:
        r = FlowRecorder(window=60)
        _rec(r, 0, identity_id="old")
        _rec(r, 59, identity_id="new")
        assert r.snapshot(61).rows[0].identities == 1


class TestProtectSurface:
    def test_receivers_of_pii_or_commercial(self) -> None:
        r = FlowRecorder(window=60)
        _rec(r, 1, identity_kind="service", identity_id="dispatch", group="service/dispatch",
             action="receive", data_classes={"pii", "location"})  # fmt: skip
        _rec(r, 2, identity_kind="partner", identity_id="acme", group="partner/acme", action="receive",
             topic="views/1/fleet/TRK-1/gps", data_classes={"commercial"})  # fmt: skip
        _rec(r, 3, identity_kind="partner", identity_id="acme", group="partner/acme", action="receive",
             topic="views/1/fleet/TRK-1/gps", data_classes={"tracking"})  # fmt: skip
        _rec(r, 4, identity_kind="partner", identity_id="b", group="partner/b", action="receive",
             topic="views/2/fleet/u-1/gps", data_classes={"location", "tracking"})  # fmt: skip
        _rec(r, 5, data_classes={"pii"})  # a unit *sending* pii is a source, not a recipient
        _rec(r, 6, identity_kind="partner", identity_id="c", group="partner/c", action="receive",
             data_classes={"pii"}, allowed=False)  # fmt: skip
        flows = r.snapshot(10)
        surface = {(e.group, e.classes, e.templates, e.messages) for e in flows.protect_surface}
        assert surface == {
            ("service/dispatch", frozenset({"pii"}), ("fleet/{unit}/telemetry/gps",), 1),
            ("partner/acme", frozenset({"commercial"}), ("views/1/fleet/{unit}/gps",), 2),
        }
        assert _row(flows.rows, "partner/b", "receive", "views/2/fleet/{unit}/gps").protect is False

    def test_sensitive_classes_are_configurable(self) -> None:
        r = FlowRecorder(window=60, sensitive=frozenset({"location"}))
        _rec(r, 1, group="partner/b", action="receive")
        assert [e.group for e in r.snapshot(2).protect_surface] == ["partner/b"]


class TestBounds:
    def test_rows_are_capped_and_the_rest_folded(self) -> None:
        r = FlowRecorder(window=60, max_rows=10)
        for i in range(50):
            _rec(r, 1, topic=f"fleet/TRK-1/junk/{i}", allowed=False)
        flows = r.snapshot(2)
        assert len(flows.rows) == 11 and flows.overflow == 40  # 10 rows and one (other) per group/action
        assert _row(flows.rows, "unit", "publish", OTHER).denied == 40

    def test_old_rows_make_room(self) -> None:
        r = FlowRecorder(window=60, max_rows=2)
        _rec(r, 0, topic="fleet/T/a")
        _rec(r, 0, topic="fleet/T/b")
        _rec(r, 100, topic="fleet/T/c")
        assert [x.template for x in r.snapshot(100).rows] == ["fleet/{unit}/c"]

    def test_identities_are_capped(self) -> None:
        r = FlowRecorder(window=60, max_identities=5)
        for i in range(20):
            _rec(r, 1, identity_id=f"T{i}")
        assert r.snapshot(2).rows[0].identities == 5


def test_receivers_without_classes_take_those_published_on_the_template() -> None:
    r = FlowRecorder(window=60)
    _rec(r, 1, data_classes={"location", "pii"})  # a unit publishes gps with a driver id
    _rec(r, 2, identity_kind="service", identity_id="dispatch", group="service/dispatch", action="receive",
         data_classes=None)  # fmt: skip
    _rec(r, 3, identity_kind="gateway", identity_id="views", group="gateway/views",
         topic="views/2/fleet/u-1/gps", data_classes={"location"})  # fmt: skip
    _rec(r, 4, identity_kind="partner", identity_id="acme", group="partner/acme", action="receive",
         topic="views/2/fleet/u-1/gps", data_classes=None)  # fmt: skip
    _rec(r, 5, identity_kind="partner", identity_id="x", group="partner/x", action="receive",
         topic="views/2/fleet/u-1/gps", data_classes=None, allowed=False)  # fmt: skip
    flows = r.snapshot(10)
    assert _row(flows.rows, "service/dispatch", "receive", "fleet/{unit}/telemetry/gps").data_classes == {
        "location",
        "pii",
    }
    assert _row(flows.rows, "partner/acme", "receive", "views/2/fleet/{unit}/gps").data_classes == {
        "location"
    }
    assert _row(flows.rows, "partner/x", "receive", "views/2/fleet/{unit}/gps").data_classes == frozenset()
    assert [e.group for e in flows.protect_surface] == ["service/dispatch"]
