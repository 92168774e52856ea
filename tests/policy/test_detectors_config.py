"""The `detectors:` section of policy.yaml: shipped defaults, and one precise sentence per mistake."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy.detector_rules import DetectorSettings, GpsFields, Plan
from gateway.policy.rules import lint_policy, policy_from_mapping
from gateway.policy.schema import PolicyError
from gateway.stores.policy_file import load_policy

EMBEDDED = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"


def base() -> dict[str, Any]:
    data = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def with_detectors(section: Any) -> dict[str, Any]:
    data = base()
    data["detectors"] = section
    return data


def test_the_shipped_section_spells_out_exactly_the_built_in_defaults() -> None:
    """The yaml documents the defaults; a missing section means the same thing."""
    shipped = load_policy(None).detectors
    assert shipped == DetectorSettings()
    data = base()
    del data["detectors"]
    assert policy_from_mapping(data, "t.yaml").detectors == shipped
    assert list(shipped.enabled()) == [
        "publish_rate",
        "denial_burst",
        "handshake_failures",
        "connect_flapping",
        "impossible_travel",
        "source_network",
        "subscription_overreach",
        "cloning",
    ]


def test_overrides_keep_the_other_defaults() -> None:
    policy = policy_from_mapping(
        with_detectors(
            {
                "publish_rate": {"window": 5, "respond": ["alert"], "throttle": {"factor": 0.5}},
                "cloning": {"enabled": False},
                "impossible_travel": {"fields": {"lat": "la", "lon": "lo", "timestamp": None}},
                "source_network": {"allowed": {"partner": ["198.51.100.0/24"]}, "change_window": 0},
            }
        ),
        "t.yaml",
    )
    d = policy.detectors
    assert (d.publish_rate.window, d.publish_rate.baseline_window) == (5.0, 300.0)
    assert d.publish_rate.plan == Plan(("alert",), 60.0, 0.5, 300.0)
    assert "cloning" not in d.enabled()
    assert d.impossible_travel.fields == GpsFields("la", "lo", None)
    assert d.source_network.allowed == {"partner": (ipaddress.ip_network("198.51.100.0/24"),)}
    assert d.source_network.change_window == 0


# section → (key path named, words the sentence must contain)
MISTAKES = [
    ({"rate": {}}, "detectors", "unknown key 'rate'"),
    ({"publish_rate": {"windw": 10}}, "detectors.publish_rate", "unknown key 'windw'"),
    ({"publish_rate": {"window": -1}}, "detectors.publish_rate.window", "positive number"),
    ({"publish_rate": {"spike_factor": 1}}, "detectors.publish_rate.spike_factor", "above 1"),
    (
        {"publish_rate": {"baseline_window": 5}},
        "detectors.publish_rate.baseline_window",
        "longer than window",
    ),
    ({"publish_rate": {"ceiling_per_second": 2}}, "detectors.publish_rate.ceiling_per_second", "below min"),
    (
        {"publish_rate": {"respond": ["alert", "shout"]}},
        "detectors.publish_rate.respond[1]",
        "not a response",
    ),
    ({"publish_rate": {"respond": []}}, "detectors.publish_rate.respond", "non-empty list"),
    ({"publish_rate": {"throttle": {"factor": 2}}}, "detectors.publish_rate.throttle.factor", "below 1"),
    ({"publish_rate": {"throttle": {"facter": 0.2}}}, "detectors.publish_rate.throttle", "unknown key"),
    ({"publish_rate": {"enabled": "yes"}}, "detectors.publish_rate.enabled", "true or false"),
    ({"denial_burst": {"threshold": 2.5}}, "detectors.denial_burst.threshold", "whole number"),
    ({"denial_burst": {"kinds": ["truck"]}}, "detectors.denial_burst.kinds[0]", "not an identity kind"),
    ({"denial_burst": {"respond": ["quarantine"]}}, "detectors.denial_burst.respond", "only to units"),
    ({"cloning": {"kinds": ["unit", "partner"]}}, "detectors.cloning.kinds", "only to units"),
    ({"impossible_travel": {"topic": "fleet/+/telemetry/gps"}}, "detectors.impossible_travel.topic", "{id}"),
    (
        {"impossible_travel": {"topic": "fleet/{id}/gps/#"}},
        "detectors.impossible_travel.topic",
        "no wildcards",
    ),
    ({"impossible_travel": {"fields": {"lat": "lat"}}}, "detectors.impossible_travel.fields", "'lon'"),
    (
        {"impossible_travel": {"fields": {"lat": 1, "lon": "x"}}},
        "detectors.impossible_travel.fields.lat",
        "JSON",
    ),
    ({"impossible_travel": {"timestamp_unit": "us"}}, "detectors.impossible_travel.timestamp_unit", "ms"),
    (
        {"source_network": {"allowed": {"unit": ["10.0.0.1/8"]}}},
        "detectors.source_network.allowed.unit[0]",
        "CIDR",
    ),
    ({"source_network": {"allowed": {"robot": ["10.0.0.0/8"]}}}, "detectors.source_network.allowed", "robot"),
    (
        {"source_network": {"change_prefix": {"ipv4": 33}}},
        "detectors.source_network.change_prefix.ipv4",
        "32",
    ),
    ({"source_network": {"kinds": ["service"]}}, "detectors.source_network.allowed.unit", "does not watch"),
    ("all of them", "detectors", "must be a mapping"),
]


@pytest.mark.parametrize(("section", "path", "words"), MISTAKES, ids=[m[2] for m in MISTAKES])
def test_mistakes_name_the_key_path(section: Any, path: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_mapping(with_detectors(section), "t.yaml")
    assert info.value.path == path
    assert words in info.value.problem
    assert str(info.value).startswith(f"t.yaml: {path}: ")


# --- the publish_rate detector against the role limits it watches ---------------------------------


def findings(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f.severity, f.path, f.message) for f in lint_policy(policy_from_mapping(data, "t.yaml"))]


def test_the_shipped_ladders_never_disconnect_a_unit_for_a_rate() -> None:
    """Only ladders about abuse that is not a rate may end a session (and so its control channel)."""
    enabled = load_policy(None).detectors.enabled()
    ending = {"disconnect", "revoke"}
    cutting = {name for name, config in enabled.items() if ending & set(config.plan.respond)}
    assert cutting == {"denial_burst", "subscription_overreach"}
    assert enabled["publish_rate"].plan.respond == ("alert", "throttle", "quarantine")
    assert enabled["connect_flapping"].plan.respond == ("alert",)


def test_the_shipped_rate_detector_sits_above_everything_the_unit_role_permits() -> None:
    policy = load_policy(None)
    rate, limits = policy.detectors.publish_rate, policy.unit.limits
    assert limits.messages_per_second is not None and limits.burst is not None
    assert rate.min_per_second > limits.messages_per_second + limits.burst / rate.window
    assert not [f for f in lint_policy(policy) if f.path.startswith("detectors.")]


def test_a_rate_detector_at_the_permitted_rate_that_contains_units_is_refused() -> None:
    data = with_detectors({"publish_rate": {"min_per_second": 20, "ceiling_per_second": 30}})
    with pytest.raises(PolicyError) as caught:
        policy_from_mapping(data, "t.yaml")
    assert caught.value.path == "detectors.publish_rate.min_per_second"
    assert "not above roles.unit.limits.messages_per_second (20/s)" in caught.value.problem
    assert "throttle/quarantine" in caught.value.problem
    raised = base()  # the same relation read the other way: a role rate raised to the detector's bar
    raised["roles"]["unit"]["limits"]["messages_per_second"] = 35
    with pytest.raises(PolicyError) as caught:
        policy_from_mapping(raised, "t.yaml")
    assert "35/s is not above roles.unit.limits.messages_per_second (35/s)" in caught.value.problem


def test_an_alert_only_rate_detector_below_the_rate_and_one_within_the_burst_are_warned() -> None:
    alert_only = with_detectors({"publish_rate": {"min_per_second": 10, "respond": ["alert"]}})
    [(severity, path, message)] = findings(alert_only)
    assert (severity, path) == ("warning", "detectors.publish_rate.min_per_second")
    assert "not above" in message and "alert on it" in message
    within_burst = with_detectors({"publish_rate": {"min_per_second": 25}})
    [(severity, path, message)] = findings(within_burst)
    assert (severity, path) == ("warning", "detectors.publish_rate.min_per_second")
    assert "spends its burst (100)" in message and "above 30/s" in message


def test_the_relation_holds_for_every_kind_the_detector_watches() -> None:
    data = with_detectors(
        {"publish_rate": {"kinds": ["unit", "partner"], "respond": ["alert", "throttle"]}}
    )
    with pytest.raises(PolicyError) as caught:  # partner tier1 may send 200/s
        policy_from_mapping(data, "t.yaml")
    assert "roles.partner.tier1.limits.messages_per_second (200/s)" in caught.value.problem
