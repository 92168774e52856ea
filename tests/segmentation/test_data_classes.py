"""The data_classes and views policy sections: what they mean, and one precise error per mistake."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from gateway.policy.data_classes import UNCLASSIFIED, parse_data_classes, parse_views
from gateway.policy.schema import PolicyError
from tests.segmentation.policy_fixtures import data_classes, raw_sections, view_policy


class TestShape:
    def test_sections_parse_into_frozen_values(self) -> None:
        views = view_policy()
        classes = views.data_classes
        assert set(classes.classes) == {"pii", "commercial", "location", "tracking"}
        assert classes.classes["location"].coarsen_to == Decimal("0.1")
        assert classes.classes["commercial"].topics == ("fleet/{unit}/telemetry/manifest",)
        assert views.sources == ("fleet/{unit}/telemetry/{stream}",)
        assert views.namespace_filter == "views/+/fleet/+/+"
        assert sorted(views.tiers) == [1, 2, 3]
        assert views.tiers[2].classes == {"location", "tracking"}
        assert views.tiers[2].coarsen == {"location"}
        assert views.tiers[1].pseudonymise_units is False
        with pytest.raises(TypeError):
            views.tiers[4] = views.tiers[1]  # type: ignore[index]

    def test_dotted_fields_build_a_tree(self) -> None:
        tree = data_classes().tree
        assert tree.children["driver_id"].cls == "pii"
        driver = tree.children["driver"]
        assert driver.cls is None
        assert {k: v.cls for k, v in driver.children.items()} == {"name": "pii", "phone": "pii"}
        assert tree.children["order"].children["eta"].cls == "tracking"

    def test_paths_may_nest_so_keys_inside_an_object_are_classified_one_by_one(self) -> None:
        raw = raw_sections()
        raw["data_classes"]["tracking"]["fields"] += ["status.state", "stops.eta"]
        raw["data_classes"]["pii"]["fields"] += ["status.driver_mobile"]
        tree = data_classes(raw).tree
        status = tree.children["status"]
        assert status.cls == "tracking"  # a scalar status is tracking...
        assert {k: v.cls for k, v in status.children.items()} == {"state": "tracking", "driver_mobile": "pii"}
        assert tree.children["stops"].cls is None  # ...and stops only leads to stops.eta

    def test_the_pii_class_is_a_backstop_by_default_and_tiers_know_what_they_deny(self) -> None:
        views = view_policy()
        classes = views.data_classes.classes
        assert classes["pii"].names_anywhere and not classes["tracking"].names_anywhere
        assert classes["pii"].anywhere_names == {"driverid", "drivername", "driverphone", "name", "phone"}
        assert views.tiers[3].denied_names == classes["pii"].anywhere_names
        raw = raw_sections()
        raw["data_classes"]["pii"]["names_anywhere"] = False
        assert view_policy(raw).tiers[3].denied_names == frozenset()
        raw = raw_sections()
        raw["views"]["tiers"][4] = {"classes": ["pii", "tracking"]}
        assert view_policy(raw).tiers[4].denied_names == frozenset()  # a tier with PII sees PII

    def test_classes_of_a_message(self) -> None:
        classes = data_classes()
        msg = {"lat": 1.0, "driver": {"name": "x"}, "color": "red", "order": {"rate": 3}}
        assert classes.classes_of("fleet/T1/telemetry/gps", msg) == {
            "location",
            "pii",
            "commercial",
            UNCLASSIFIED,
        }
        assert classes.classes_of("fleet/T1/telemetry/manifest", {"ts": 1}) == {"commercial", "tracking"}
        assert classes.classes_of("fleet/T1/telemetry/manifest", None) == {"commercial"}
        assert classes.classes_of("fleet/T1/telemetry/gps", {"driver": "Ana"}) == {UNCLASSIFIED}
        # A PII name nested anywhere makes the message carry PII (the flow map says so)...
        nested = {"status": {"state": "loading", "driver_phone": "+31"}}
        assert classes.classes_of("fleet/T1/telemetry/eta", nested) == {UNCLASSIFIED, "pii"}
        # ...and an object under a classified key is walked: its keys are unclassified unless listed.
        assert classes.classes_of("fleet/T1/telemetry/eta", {"status": {"x": 1}}) == {UNCLASSIFIED}
        assert classes.classes_of("fleet/T1/telemetry/eta", {"status": ["a", "b"]}) == {"tracking"}
        assert classes.topic_classes("fleet/T1/telemetry/gps") == frozenset()

    def test_classify_raw_payloads(self) -> None:
        classes = data_classes()
        assert classes.classify("fleet/T1/telemetry/gps", b'{"lat": 1, "driver_id": "x"}') == {
            "location",
            "pii",
        }
        assert classes.classify("fleet/T1/telemetry/manifest", b"\xff not json") == {"commercial"}
        assert classes.classify("fleet/T1/telemetry/gps", b"[1]") == frozenset()
        assert classes.classify("fleet/T1/telemetry/gps", b"[" * 100_000) == frozenset()

    def test_absent_sections(self) -> None:
        assert parse_views(None, data_classes(), "t.yaml") is None
        assert parse_data_classes(None, "t.yaml").classes == {}

    def test_tier_keys_may_be_numbers_or_tierN(self) -> None:
        raw = raw_sections()
        raw["views"]["tiers"] = {"tier2": raw["views"]["tiers"][2]}
        assert list(view_policy(raw).tiers) == [2]

    def test_pseudonymisation_is_the_default(self) -> None:
        raw = raw_sections()
        raw["views"]["tiers"] = {4: {"classes": ["tracking"]}}
        assert view_policy(raw).tiers[4].pseudonymise_units is True


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part) if part.isdigit() else part]
    node[int(last) if last.isdigit() else last] = value
    return raw


MISTAKES = [
    ("data_classes", ["pii"], "data_classes", "must be a mapping"),
    ("data_classes.Bad-Name", {"fields": ["x"]}, "data_classes", "is not a class name"),
    ("data_classes.unclassified", {"fields": ["x"]}, "data_classes", "is not a class name"),
    ("data_classes.pii.fieldz", ["x"], "data_classes.pii", "unknown key 'fieldz'"),
    ("data_classes.pii.fields", "driver_id", "data_classes.pii.fields", "must be a list"),
    ("data_classes.pii.fields", ["driver..id"], "data_classes.pii.fields[0]", "is not a field path"),
    ("data_classes.pii", {"fields": []}, "data_classes.pii", "names no fields and no topics"),
    ("data_classes.tracking.fields", ["lat"], "data_classes.tracking", "also listed under class 'location'"),
    ("data_classes.tracking.fields", ["stop.Phone"], "data_classes.tracking", "ends in 'Phone', a name"),
    ("data_classes.pii.names_anywhere", "yes", "data_classes.pii.names_anywhere", "true or false"),
    ("data_classes.location.coarsen_to", 0, "data_classes.location.coarsen_to", "positive number"),
    ("data_classes.location.coarsen_to", True, "data_classes.location.coarsen_to", "positive number"),
    ("data_classes.commercial.topics", ["$SYS/x"], "data_classes.commercial.topics[0]", "$-topic"),
    ("data_classes.commercial.topics", ["a/{u}x"], "data_classes.commercial.topics[0]", "whole level"),
    ("data_classes.commercial.topics", ["a/#/b"], "data_classes.commercial.topics[0]", "not a valid topic"),
    ("views.topic", 3, "views.topic", "must be a topic template string"),
    ("views.topic", "views/{tier}/{stream}", "views.topic", "must have a {tier} and a {unit}"),
    ("views.topic", "fleet/{tier}/{unit}/{stream}", "views.topic", "outside fleet/"),
    ("views.topic", "{tier}/{unit}/{stream}", "views.topic", "outside fleet/"),
    ("views.topic", "views/{tier}/{unit}/{kind}", "views.topic", "{kind}, which source"),
    ("views.topic", "views/{tier}/{unit}/+", "views.topic", "named placeholder"),
    ("views.sources", [], "views.sources", "at least one source"),
    ("views.sources", ["fleet/+/telemetry/{stream}"], "views.sources[0]", "named placeholder"),
    ("views.sources", ["fleet/x/telemetry/{stream}"], "views.sources[0]", "must have a {unit} level"),
    ("views.sources", ["views/{unit}/fleet/x/{stream}"], "views.topic", "overlaps source"),
    ("views.sources", ["fleet/{unit}/{unit}"], "views.sources[0]", "repeats a placeholder"),
    ("views.tiers.2.classes", ["secret"], "views.tiers.2.classes[0]", "'secret' is not a data class"),
    ("views.tiers.2.coarsen", ["tracking"], "views.tiers.2.coarsen[0]", "coarsen_to grid"),
    ("views.tiers.3.coarsen", ["location"], "views.tiers.3.coarsen[0]", "one of this tier's classes"),
    ("views.tiers.2.pseudonymise_units", "yes", "views.tiers.2.pseudonymise_units", "true or false"),
    ("views.tiers.2.rate", 3, "views.tiers.2", "unknown key 'rate'"),
    ("views.tiers.2.unit_share", 0, "views.tiers.2.unit_share", "above 0 and at most 1"),
    ("views.tiers.2.unit_share", 1.5, "views.tiers.2.unit_share", "above 0 and at most 1"),
    ("views.tiers.2.unit_share", True, "views.tiers.2.unit_share", "above 0 and at most 1"),
    ("views.tiers.gold", {}, "views.tiers", "'gold' is not a tier"),
    ("views.tiers.tier2", {}, "views.tiers", "tier 2 is listed twice"),
    ("views.extra", 1, "views", "unknown key 'extra'"),
    ("views.tiers", {}, "views.tiers", "lists no tiers"),
]


@pytest.mark.parametrize(("where", "value", "path", "problem"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_its_path(where: str, value: Any, path: str, problem: str) -> None:
    raw = _set(raw_sections(), where, value)
    with pytest.raises(PolicyError) as info:
        classes = parse_data_classes(raw.get("data_classes"), "test.yaml")
        parse_views(raw.get("views"), classes, "test.yaml")
    assert info.value.source == "test.yaml"
    assert info.value.path == path
    assert problem in info.value.problem


def test_missing_views_keys() -> None:
    for key in ("topic", "sources", "tiers"):
        raw = raw_sections()
        del raw["views"][key]
        with pytest.raises(PolicyError, match=f"missing required key '{key}'"):
            view_policy(raw)
