"""Projections onto partner views: what each tier sees, coarsening, pseudonyms, malformed payloads."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context.views import (
    Malformed,
    Projection,
    ViewRepublisher,
    Withheld,
    project,
    pseudonym,
    view_topic,
    view_topics_for,
)
from gateway.policy.data_classes import ViewPolicy, normal_key, parse_data_classes, parse_views
from tests.segmentation.policy_fixtures import (
    COMMERCIAL_FIELDS,
    LOCATION_FIELDS,
    PII_FIELDS,
    TRACKING_FIELDS,
    raw_sections,
    view_policy,
)

KEY = b"k" * 32
VIEWS = view_policy()
GPS = "fleet/TRK-1/telemetry/gps"


def projected(payload: dict[str, Any] | bytes, tier: int, topic: str = GPS) -> Projection:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    result = project(body, tier, "TRK-1", VIEWS, KEY, source_topic=topic)
    assert isinstance(result, Projection), result
    return result


def body(result: Projection) -> dict[str, Any]:
    obj = json.loads(result.payload)
    assert isinstance(obj, dict)
    return obj


FULL = {
    "driver_id": "D-7",
    "driver_name": "Ana",
    "driver_phone": "+31",
    "cargo": "tv sets",
    "rate": 1450.5,
    "customer": "acme",
    "lat": 52.123456,
    "lon": -4.987654,
    "status": "moving",
    "eta": "2026-07-01T10:00:00Z",
    "speed_kmh": 81.5,
    "heading": 270,
    "ts": 1782900000.25,
    "firmware": "1.2.3",
    "driver": {"name": "Ana", "phone": "+31", "shift": 3},
    "order": {"rate": 12, "eta": "soon", "ref": "X"},
}


class TestTiers:
    def test_tier1_keeps_its_classes_exactly_and_drops_pii_and_unclassified(self) -> None:
        got = body(projected(FULL, 1))
        assert got == {
            **{k: FULL[k] for k in (*COMMERCIAL_FIELDS, *LOCATION_FIELDS, *TRACKING_FIELDS)},
            "order": {"rate": 12, "eta": "soon"},
        }

    def test_tier2_has_coarse_location_and_tracking_only(self) -> None:
        result = projected(FULL, 2)
        assert body(result) == {
            "lat": 52.1,
            "lon": -5.0,
            **{k: FULL[k] for k in TRACKING_FIELDS},
            "order": {"eta": "soon"},
        }
        assert result.classes == {"location", "tracking"}
        assert b"52.1," in result.payload  # no float noise such as 52.100000000000001

    def test_tier3_tracking_only(self) -> None:
        assert set(body(projected(FULL, 3))) == {*TRACKING_FIELDS, "order"}

    def test_unclassified_is_kept_only_when_a_tier_asks_for_it(self) -> None:
        raw = raw_sections()
        raw["views"]["tiers"][4] = {"classes": ["tracking", "unclassified"]}
        views = view_policy(raw)
        result = project(json.dumps(FULL).encode(), 4, "TRK-1", views, KEY, source_topic=GPS)
        assert isinstance(result, Projection)
        got = json.loads(result.payload)
        assert got["firmware"] == "1.2.3" and got["driver"] == {"shift": 3}
        assert "driver_id" not in got and "lat" not in got
        assert got["order"] == {"eta": "soon", "ref": "X"}

    def test_a_declared_object_that_is_not_an_object_is_dropped_everywhere(self) -> None:
        raw = raw_sections()
        raw["views"]["tiers"][4] = {"classes": ["pii", "unclassified"]}
        views = view_policy(raw)
        result = project(b'{"driver": "Ana Smith", "ts": 1}', 4, "TRK-1", views, KEY, source_topic=GPS)
        assert isinstance(result, Withheld) and result.reason == "nothing_left"

    def test_a_topic_class_withholds_the_whole_message_from_tiers_without_it(self) -> None:
        manifest = "fleet/TRK-1/telemetry/manifest"
        assert set(body(projected(FULL, 1, manifest))) >= {"cargo", "status"}
        for tier in (2, 3):
            result = project(b'{"status": "ok"}', tier, "TRK-1", VIEWS, KEY, source_topic=manifest)
            assert result == Withheld("topic_class_not_allowed")

    def test_nothing_left_is_not_sent(self) -> None:
        result = project(b'{"lat": 1, "driver_id": "x"}', 3, "TRK-1", VIEWS, KEY, source_topic=GPS)
        assert result == Withheld("nothing_left")

    @pytest.mark.parametrize(
        ("topic", "unit", "tier", "reason"),
        [
            ("fleet/TRK-1/diag/report", "TRK-1", 2, "not_a_source"),
            ("fleet/TRK-1/telemetry/gps/extra", "TRK-1", 2, "not_a_source"),
            ("fleet//telemetry/gps", "", 2, "not_a_source"),
            ("fleet/TRK-2/telemetry/gps", "TRK-1", 2, "unit_mismatch"),
            (GPS, "TRK-1", 9, "no_such_tier"),
        ],
    )
    def test_withheld(self, topic: str, unit: str, tier: int, reason: str) -> None:
        assert project(b'{"ts": 1}', tier, unit, VIEWS, KEY, source_topic=topic) == Withheld(reason)


class TestCoarsening:
    @pytest.mark.parametrize(
        ("value", "grid", "expected"),
        [
            (52.123456, 0.1, 52.1),
            (52.19, 0.1, 52.1),
            (-4.987654, 0.1, -5.0),
            (-0.05, 0.1, -0.1),
            (0.0, 0.1, 0.0),
            (7, 0.1, 7.0),
            (52.123456, 0.25, 52.0),
            (52.3, 0.25, 52.25),
            (52.123456, 0.001, 52.123),
            (52.123456, 1, 52),
            (123.4, 5, 120),
            (1e300, 0.1, 1e300),
            (-1e-300, 0.1, -0.1),
        ],
    )
    def test_floor_to_grid(self, value: float, grid: float, expected: float) -> None:
        raw = raw_sections()
        raw["data_classes"]["location"]["coarsen_to"] = grid
        views = view_policy(raw)
        result = project(json.dumps({"lat": value}).encode(), 2, "TRK-1", views, KEY, source_topic=GPS)
        assert isinstance(result, Projection)
        got = json.loads(result.payload)["lat"]
        assert got == expected and type(got) is type(expected)

    def test_arrays_of_location_numbers_are_coarsened_and_text_dropped(self) -> None:
        payload = {"position": [13.4049, 52.52, "52.5200", True, [1.26, "x"]]}
        assert body(projected(payload, 2)) == {"position": [13.4, 52.5, [1.2]]}

    def test_an_object_under_a_location_field_is_walked_not_forwarded(self) -> None:
        payload = {"position": {"coords": [13.4049, 52.52], "label": "Berlin"}, "ts": 1}
        assert body(projected(payload, 2)) == {"ts": 1}  # position.coords is classified nowhere
        raw = raw_sections()
        raw["data_classes"]["location"]["fields"].append("position.coords")
        views = view_policy(raw)
        result = project(json.dumps(payload).encode(), 2, "TRK-1", views, KEY, source_topic=GPS)
        assert isinstance(result, Projection)
        assert json.loads(result.payload) == {"position": {"coords": [13.4, 52.5]}, "ts": 1}

    def test_strings_in_location_fields_never_reach_a_coarsened_view(self) -> None:
        assert project(b'{"lat": "52.123456"}', 2, "TRK-1", VIEWS, KEY, source_topic=GPS) == Withheld(
            "nothing_left"
        )


class TestPseudonyms:
    def test_tier1_sees_real_unit_ids(self) -> None:
        assert projected(FULL, 1).topic == "views/1/fleet/TRK-1/gps"

    def test_pseudonymised_tiers_see_stable_aliases(self) -> None:
        alias = pseudonym(KEY, 2, "TRK-1")
        assert alias.startswith("u-") and len(alias) == 18
        assert projected(FULL, 2).topic == f"views/2/fleet/{alias}/gps"
        assert projected(FULL, 2).topic == projected({"ts": 2}, 2).topic
        assert view_topic(VIEWS, GPS, 2, KEY) == f"views/2/fleet/{alias}/gps"

    def test_aliases_differ_across_tiers_keys_and_units(self) -> None:
        aliases = {
            pseudonym(KEY, 2, "TRK-1"),
            pseudonym(KEY, 3, "TRK-1"),
            pseudonym(b"other", 2, "TRK-1"),
            pseudonym(KEY, 2, "TRK-2"),
            pseudonym(KEY, 21, "TRK-1"),
        }
        assert len(aliases) == 5

    def test_a_kept_string_that_is_the_unit_id_becomes_the_alias(self) -> None:
        alias = pseudonym(KEY, 3, "TRK-1")
        assert body(projected({"unit": "TRK-1", "status": ["TRK-1", "ok"]}, 3)) == {
            "unit": alias,
            "status": [alias, "ok"],
        }
        assert body(projected({"unit": "TRK-1"}, 1)) == {"unit": "TRK-1"}  # tier 1 sees real ids

    @pytest.mark.parametrize("text", ["TRK-1 at Depot 7", "trk-1", "seen: Trk-1!", "TRK-10"])
    def test_a_kept_string_containing_the_unit_id_is_dropped(self, text: str) -> None:
        got = body(projected({"status": text, "eta": "10:00", "unit": "TRK-1"}, 3))
        assert got == {"eta": "10:00", "unit": pseudonym(KEY, 3, "TRK-1")}
        assert body(projected({"status": text}, 1)) == {"status": text}

    def test_keys_are_held_to_the_same_rule(self) -> None:
        raw = raw_sections()
        raw["views"]["tiers"][4] = {"classes": ["tracking", "unclassified"]}
        views = view_policy(raw)
        payload = {"TRK-1": "a", "near TRK-1": "b", "x": {"TRK-1": 2, "trk-1 note": 3}, "ts": 1}
        result = project(json.dumps(payload).encode(), 4, "TRK-1", views, KEY, source_topic=GPS)
        assert isinstance(result, Projection)
        alias = pseudonym(KEY, 4, "TRK-1")
        assert json.loads(result.payload) == {alias: "a", "x": {alias: 2}, "ts": 1}

    def test_a_source_topic_naming_the_unit_elsewhere_is_withheld_from_pseudonymised_tiers(self) -> None:
        topic = "fleet/TRK-1/telemetry/trk-1-gps"
        assert project(b'{"ts": 1}', 3, "TRK-1", VIEWS, KEY, source_topic=topic) == Withheld("unit_in_topic")
        assert projected({"ts": 1}, 1, topic).topic == "views/1/fleet/TRK-1/trk-1-gps"

    def test_view_topics_for_every_tier(self) -> None:
        assert view_topics_for(VIEWS, GPS, KEY) == {
            1: "views/1/fleet/TRK-1/gps",
            2: f"views/2/fleet/{pseudonym(KEY, 2, 'TRK-1')}/gps",
            3: f"views/3/fleet/{pseudonym(KEY, 3, 'TRK-1')}/gps",
        }
        assert view_topics_for(VIEWS, "fleet/TRK-1/state", KEY) == {}
        assert view_topic(VIEWS, GPS, 7, KEY) is None


MALFORMED = [
    (b"\xff\xfe{}", "not_utf8"),
    (b"", "not_json"),
    (b"lat=52.1", "not_json"),
    (b"\xef\xbb\xbf{}", "not_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b"null", "not_an_object"),
    (b'{"ts": 1, "ts": 2}', "duplicate_key"),
    (b'{"lat": NaN}', "non_finite_number"),
    (b'{"x": {"y": -Infinity}}', "non_finite_number"),
    (b"[" * 100_000, "too_deep"),
    (b"1" * 5000, "not_json"),
    (b'{"status": "\\ud800"}', "invalid_unicode"),
    (b'{"status": ' + b"[" * 70 + b"]" * 70 + b"}", "too_deep"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED)
def test_malformed_payloads_are_never_projected(payload: bytes, reason: str) -> None:
    assert project(payload, 3, "TRK-1", VIEWS, KEY, source_topic=GPS) == Malformed(reason)


class TestRepublisher:
    def test_one_message_fans_out_to_every_tier_with_something_to_see(self) -> None:
        rep = ViewRepublisher(VIEWS, KEY)
        out = rep.on_publish(GPS, json.dumps(FULL).encode(), "TRK-1", now=10.0)
        assert [t.split("/")[1] for t, _ in out] == ["1", "2", "3"]
        assert out[0] == ("views/1/fleet/TRK-1/gps", projected(FULL, 1).payload)
        assert rep.on_publish(GPS, b'{"lat": 1}', "TRK-1", now=11.0) == [
            ("views/1/fleet/TRK-1/gps", b'{"lat":1}'),
            (f"views/2/fleet/{pseudonym(KEY, 2, 'TRK-1')}/gps", b'{"lat":1.0}'),
        ]
        stats = rep.stats()
        assert stats.sources == 2 and stats.projected == {1: 2, 2: 2, 3: 1}
        assert stats.withheld == {"nothing_left": 1}

    def test_only_tiers_with_subscribers_are_projected(self) -> None:
        rep = ViewRepublisher(VIEWS, KEY)
        out = rep.on_publish(GPS, json.dumps(FULL).encode(), "TRK-1", now=1.0, tiers={2})
        assert [t for t, _ in out] == [f"views/2/fleet/{pseudonym(KEY, 2, 'TRK-1')}/gps"]
        assert rep.on_publish(GPS, b"{}", "TRK-1", now=2.0, tiers=set()) == []
        assert rep.stats().projected == {2: 1}

    def test_counters_for_malformed_and_foreign_messages(self) -> None:
        rep = ViewRepublisher(VIEWS, KEY)
        assert rep.on_publish(GPS, b"garbage", "TRK-1", now=5.0) == []
        assert rep.on_publish(GPS, b'{"status": "\\ud800"}', "TRK-1", now=6.0) == []
        assert rep.on_publish("fleet/TRK-1/diag/x", b"{}", "TRK-1", now=7.0) == []
        assert rep.on_publish(GPS, b'{"ts": 1}', "TRK-2", now=8.0) == []
        deep = b'{"status": ' + b"[" * 70 + b"]" * 70 + b"}"  # every tier walks it: too deep for all
        assert rep.on_publish(GPS, deep, "TRK-1", now=9.0) == []
        stats = rep.stats()
        assert stats.malformed == {"not_json": 1, "invalid_unicode": 1, "too_deep": 1}  # per message
        assert stats.ignored == 2 and stats.sources == 3 and stats.projected == {}
        assert stats.recent_malformed[:2] == ((5.0, "TRK-1", "not_json"), (6.0, "TRK-1", "invalid_unicode"))


# ------------------------------------------------------------------------------- property: no leaks

SECRET = "SECRET"
_text = st.text(alphabet="abcdefghij0123456789 ", max_size=8)
_leaf: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    _text,
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
_json = st.recursive(
    _leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3)
)
_secret = st.recursive(
    st.just(SECRET) | st.text(alphabet="xyz", max_size=4).map(lambda s: SECRET + s),
    lambda kids: (
        st.lists(kids, min_size=1, max_size=2) | st.dictionaries(_text, kids, min_size=1, max_size=2)
    ),
    max_leaves=4,
)
_coordinate = st.floats(-180, 180, allow_nan=False) | st.integers(-180, 180)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name in (*PII_FIELDS, *COMMERCIAL_FIELDS):
        if draw(st.booleans()):
            obj[name] = draw(_secret)
    for name in LOCATION_FIELDS:
        if draw(st.booleans()):
            obj[name] = draw(_coordinate | _json)
    for name in TRACKING_FIELDS:
        if draw(st.booleans()):
            obj[name] = draw(_json)
    obj.update(draw(st.dictionaries(_text.map(lambda s: "x_" + s), _json | _secret, max_size=3)))
    if draw(st.booleans()):
        obj["driver"] = draw(st.fixed_dictionaries({}, optional={"name": _secret, "shift": _json}) | _secret)
    if draw(st.booleans()):
        obj["order"] = draw(st.fixed_dictionaries({}, optional={"rate": _secret, "eta": _json}) | _secret)
    keys = draw(st.permutations(list(obj)))
    return {k: obj[k] for k in keys}


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    return [value]


@settings(max_examples=200, deadline=None)
@given(payloads())
def test_tier2_never_sees_pii_or_commercial_and_location_is_on_the_grid(payload: dict[str, Any]) -> None:
    result = project(json.dumps(payload).encode(), 2, "TRK-1", VIEWS, KEY, source_topic=GPS)
    if isinstance(result, Withheld):
        assert result.reason == "nothing_left"
        return
    assert isinstance(result, Projection)
    assert SECRET.encode() not in result.payload and b"TRK-1" not in result.payload
    got = body(result)
    assert set(got) <= {*LOCATION_FIELDS, *TRACKING_FIELDS, "order"}
    assert set(got.get("order", {})) <= {"eta"}
    assert result.classes <= {"location", "tracking"}
    for name in LOCATION_FIELDS:
        for number in _numbers(got.get(name, [])):
            assert Decimal(repr(number)) % Decimal("0.1") == 0
        if isinstance(payload.get(name), int | float) and name in got:
            exact, coarse = Decimal(repr(payload[name])), Decimal(repr(got[name]))
            with localcontext(prec=1000):  # exact arithmetic for the check itself
                assert exact - Decimal("0.1") < coarse <= exact


def _class_of(path: tuple[str, ...]) -> str | None:
    """The class the view rules give a scalar at `path` (keys only; arrays are no level)."""
    node = VIEWS.data_classes.tree
    for key in path:
        child = node.children.get(key)
        if child is None:
            return "unclassified"
        node = child
    return node.cls


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Counter[tuple[tuple[str, ...], str]]:
    """Every scalar with its key path, as a multiset (what a view may keep, whatever the nesting)."""
    if isinstance(value, dict):
        return sum((_leaves(v, (*path, k)) for k, v in value.items()), Counter())
    if isinstance(value, list):
        return sum((_leaves(v, path) for v in value), Counter())
    return Counter({(path, json.dumps(value)): 1})


@settings(max_examples=150, deadline=None)
@given(payloads())
def test_tier1_keeps_exactly_the_scalars_whose_path_is_of_its_classes(payload: dict[str, Any]) -> None:
    tier = VIEWS.tiers[1]
    allowed = Counter(
        {
            leaf: n
            for leaf, n in _leaves(payload).items()
            if _class_of(leaf[0]) in tier.classes
            and not any(normal_key(k) in tier.denied_names for k in leaf[0])
        }
    )
    result = project(json.dumps(payload).encode(), 1, "TRK-1", VIEWS, KEY, source_topic=GPS)
    if not allowed:
        assert result == Withheld("nothing_left")
        return
    assert isinstance(result, Projection) and _leaves(body(result)) == allowed


# ------------------------------------------- property: every tier, nested payloads, PII and unit ids

UNIT = "TRK-7Q"
MARK = "PII-MARK"  # every PII value carries it; nothing else can
_pii_keys = st.sampled_from(
    [
        "driver_id",
        "driver_name",
        "driver_phone",
        "Driver-Phone",
        "DRIVER_NAME",
        "name",
        "Phone",
        "driverPhone",
        "id",  # of driver.id
    ]
)
_plain_keys = st.sampled_from(
    ["lat", "lon", "position", "status", "eta", "ts", "order", "driver", "rate", "cargo", "stops", "state",
     "speed_kmh", "unit", "note", UNIT, f"at {UNIT.lower()}"]
) | st.text(alphabet="abcdefghij", min_size=1, max_size=5)  # fmt: skip
_unit_text = st.sampled_from([UNIT, UNIT.lower(), f"{UNIT} at Depot 7", f"x{UNIT}y", "Trk-7q!"])
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.text(alphabet="abcdefghij 0123456789.", max_size=8),
    _unit_text,
)
_pii_value = st.recursive(
    st.just(MARK) | st.text(alphabet="xyz", max_size=3).map(lambda s: MARK + s),
    lambda kids: (
        st.lists(kids, min_size=1, max_size=2) | st.dictionaries(_plain_keys, kids, min_size=1, max_size=2)
    ),
    max_leaves=4,
)


def _object(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    plain = st.dictionaries(_plain_keys, kids, max_size=4)
    pii = st.dictionaries(_pii_keys, _pii_value, max_size=2)
    return st.builds(lambda a, b: {**a, **b}, plain, pii)


_nested = st.recursive(_scalar, lambda kids: st.lists(kids, max_size=3) | _object(kids), max_leaves=25)
nested_payloads = _object(_nested)


def _shipped_views_with_an_open_tier() -> ViewPolicy:
    """The shipped policy's views, plus a pseudonymised tier 4 that also takes unclassified fields."""
    raw = yaml.safe_load(Path("gateway/defaults/policy.yaml").read_text())
    raw["views"]["tiers"][4] = {"classes": ["tracking", "location", "unclassified"]}
    classes = parse_data_classes(raw["data_classes"], "policy.yaml")
    views = parse_views(raw["views"], classes, "policy.yaml")
    assert views is not None
    return views


SHIPPED = _shipped_views_with_an_open_tier()


@settings(max_examples=300, deadline=None)
@given(nested_payloads, st.sampled_from(sorted(SHIPPED.tiers)))
def test_no_pii_value_and_no_unit_id_leaves_through_any_tier(payload: dict[str, Any], tier: int) -> None:
    spec = SHIPPED.tiers[tier]
    assert "pii" not in spec.classes  # no shipped tier sees PII
    result = project(
        json.dumps(payload).encode(), tier, UNIT, SHIPPED, KEY, source_topic=f"fleet/{UNIT}/telemetry/eta"
    )
    if not isinstance(result, Projection):
        assert result == Withheld("nothing_left")
        return
    assert MARK.encode() not in result.payload  # no value of a PII-classified or PII-named field
    if spec.pseudonymise_units:
        seen = result.topic.encode() + b" " + result.payload
        assert UNIT.casefold().encode() not in seen.decode().casefold().encode()


def test_the_reviews_nested_pii_reproduction_is_stripped() -> None:
    """Security review finding 7: PII nested under `status`, and a note naming the unit and its position."""
    payload = {
        "ts": 1765000000,
        "lat": 52.123456,
        "lon": 4.654321,
        "driver_name": "Jan Jansen",
        "status": {
            "state": "loading",
            "driver_name": "Jan Jansen",
            "driver_phone": "+31 6 12345678",
            "note": "TRK-1 at Depot 7, 52.123456,4.654321",
        },
        "eta": "2026-12-07T10:00Z",
    }
    body3 = project(json.dumps(payload).encode(), 3, "TRK-1", SHIPPED, KEY, source_topic=ETA)
    assert isinstance(body3, Projection)
    # The shipped policy classifies status.state (tracking); status.note is classified nowhere.
    assert json.loads(body3.payload) == {
        "ts": 1765000000,
        "status": {"state": "loading"},
        "eta": "2026-12-07T10:00Z",
    }
    body1 = project(json.dumps(payload).encode(), 1, "TRK-1", SHIPPED, KEY, source_topic=ETA)
    assert isinstance(body1, Projection)
    assert b"Jan" not in body1.payload and b"+31" not in body1.payload and b"Depot" not in body1.payload


ETA = "fleet/TRK-1/telemetry/eta"
