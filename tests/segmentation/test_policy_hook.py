"""The proposed policy.yaml sections, the one-call hook for rules.py, and "partners get views only"."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.admin.totp import TotpVerifier
from gateway.policy.data_classes import (
    CONTEXT_SECTIONS,
    NO_DATA_CLASSES,
    ContextPolicy,
    parse_context_sections,
    partner_grant_problems,
)
from gateway.policy.posture import parse_version
from gateway.policy.rules import policy_from_mapping
from gateway.policy.schema import PolicyError
from gateway.policy.second_factor import DEFAULT_SENSITIVE, SecondFactorPolicy, parse_second_factor

HERE = Path(__file__).parent
SECTIONS = CONTEXT_SECTIONS


def proposed() -> dict[str, Any]:
    data = yaml.safe_load((HERE / "proposed_sections.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict) and set(data) == set(SECTIONS)
    return data


def test_proposed_sections_parse() -> None:
    context = parse_context_sections(proposed(), "policy.yaml")
    assert context.views is not None and context.views.tiers[2].coarsen == {"location"}
    assert context.views.data_classes is context.data_classes
    assert context.posture["unit"].min_firmware == parse_version("1.4")
    assert context.second_factor == SecondFactorPolicy()


def test_absent_sections_mean_no_views_no_posture_and_default_second_factor() -> None:
    assert parse_context_sections({}, "policy.yaml") == ContextPolicy()
    default = ContextPolicy()
    assert (default.data_classes, default.views, default.posture) == (NO_DATA_CLASSES, None, {})
    assert default.second_factor.requires_totp("policy.reload")


def test_the_shipped_policy_carries_the_sections_and_grants_partners_views_only() -> None:
    shipped = yaml.safe_load((HERE.parents[1] / "gateway" / "defaults" / "policy.yaml").read_text("utf-8"))
    policy = policy_from_mapping(shipped, "shipped.yaml")
    views = policy.context.views
    assert views is not None and views == parse_context_sections(proposed(), "p.yaml").views
    for tier, profile in policy.partner_tiers.items():
        assert partner_grant_problems(views, tier, [g.template for g in profile.subscribe]) == []
    raw = copy.deepcopy(shipped)  # a raw unit-topic grant beside views fails loading
    raw["roles"]["partner"]["tier2"]["subscribe"].append("fleet/+/telemetry/gps")
    with pytest.raises(PolicyError) as info:
        policy_from_mapping(raw, "raw.yaml")
    assert "reaches raw unit topics" in info.value.problem
    assert info.value.path == "roles.partner.tier2.subscribe[1]"
    rest = {k: v for k, v in raw.items() if k not in SECTIONS}  # without views, no such rule
    assert policy_from_mapping(rest, "rest.yaml").context.views is None


def test_rules_accepts_every_context_section_and_nothing_else() -> None:
    shipped = yaml.safe_load((HERE.parents[1] / "gateway" / "defaults" / "policy.yaml").read_text("utf-8"))
    assert set(SECTIONS) <= set(shipped)  # the shipped file has all four, and loads (test above)
    with pytest.raises(PolicyError) as info:
        policy_from_mapping({**shipped, "view": {}}, "typo.yaml")
    assert info.value.path == "" and info.value.problem.startswith("unknown key 'view'; expected one of ")
    for section in SECTIONS:
        assert section in info.value.problem


@pytest.mark.parametrize(
    ("grant", "problem"),
    [
        ("views/{tier}/fleet/+/gps", None),
        ("views/2/#", None),
        ("#", "reaches raw unit topics"),
        ("fleet/+/telemetry/gps", "reaches raw unit topics"),
        ("views/+/#", "reaches the views of tier 1"),
        ("views/3/#", "reaches the views of tier 3"),
        ("other/#", "is outside this tier's views"),
    ],
)
def test_partner_grant_problems(grant: str, problem: str | None) -> None:
    views = parse_context_sections(proposed(), "p.yaml").views
    assert views is not None
    problems = partner_grant_problems(views, 2, [grant])
    assert problems == [] if problem is None else problem in problems[0]


class TestSecondFactorSection:
    def test_parses(self) -> None:
        got = parse_second_factor(
            {
                "sensitive": [*sorted(DEFAULT_SENSITIVE), "units.quarantine"],
                "max_failures": 3,
                "failure_window_seconds": 60,
                "skew_steps": 0,
            },
            "p.yaml",
        )
        assert got == SecondFactorPolicy(DEFAULT_SENSITIVE | {"units.quarantine"}, 3, 60.0, 0)
        assert got.requires_totp("units.quarantine") and not got.requires_totp("units.read")
        verifier = TotpVerifier.for_policy(got, lambda op: None)
        assert (verifier.max_failures, verifier.window, verifier.skew) == (3, 60.0, 0)

    def test_unknown_rights_are_reported_for_the_admin_layer(self) -> None:
        policy = SecondFactorPolicy(frozenset({"units.release", "units.relase"}))
        assert policy.unknown_rights(["units.release", "units.read"]) == ["units.relase"]
        assert {
            "units.release",
            "identities.revoke",
            "partners.disconnect",
            "policy.reload",
        } == DEFAULT_SENSITIVE

    @pytest.mark.parametrize(
        ("body", "path", "problem"),
        [
            ([], "second_factor", "must be a mapping"),
            ({"sensitve": []}, "second_factor", "unknown key 'sensitve'"),
            ({"sensitive": "policy.reload"}, "second_factor.sensitive", "list of admin rights"),
            ({"sensitive": ["Reload!"]}, "second_factor.sensitive", "list of admin rights"),
            ({"max_failures": 0}, "second_factor.max_failures", "from 1 to 10"),
            ({"skew_steps": True}, "second_factor.skew_steps", "from 0 to 2"),
            ({"failure_window_seconds": 1.5}, "second_factor.failure_window_seconds", "whole number"),
            # weak settings (security review finding 20): refused with one sentence each
            ({"max_failures": 11}, "second_factor.max_failures", "guessing one easier"),
            ({"max_failures": 100}, "second_factor.max_failures", "from 1 to 10"),
            ({"failure_window_seconds": 59}, "second_factor.failure_window_seconds", "from 60 to 86400"),
            ({"failure_window_seconds": 1}, "second_factor.failure_window_seconds", "guesses come faster"),
            ({"skew_steps": 3}, "second_factor.skew_steps", "from 0 to 2"),
            ({"sensitive": ["policy.reload"]}, "second_factor.sensitive", "lacks identities.revoke"),
            ({"sensitive": []}, "second_factor.sensitive", "always sensitive"),
            ({"digits": 4}, "second_factor", "unknown key 'digits'"),
        ],
    )
    def test_mistakes(self, body: Any, path: str, problem: str) -> None:
        with pytest.raises(PolicyError) as info:
            parse_second_factor(body, "p.yaml")
        assert info.value.path == path and problem in info.value.problem
        assert info.value.problem.count(". ") == 0 and "\n" not in info.value.problem  # one sentence


def test_a_mistake_in_any_section_is_a_policy_error() -> None:
    for section, bad in [
        ("data_classes", []),
        ("views", {"topic": 1}),
        ("posture", []),
        ("second_factor", 1),
    ]:
        data = copy.deepcopy(proposed())
        data[section] = bad
        with pytest.raises(PolicyError) as info:
            parse_context_sections(data, "p.yaml")
        assert info.value.path.startswith(section)


@pytest.mark.parametrize(
    "first",
    [
        "gateway.policy.rules",
        "gateway.policy.data_classes",
        "gateway.policy.second_factor",
        "gateway.admin.totp",
    ],
)
def test_import_order_does_not_matter(first: str) -> None:
    """Each module imported first in a fresh interpreter; then the policy loads and a verifier is built."""
    code = (
        f"import {first}\n"
        "from gateway.admin.totp import TotpVerifier\n"
        "from gateway.stores.policy_file import load_policy\n"
        "policy = load_policy(None)\n"
        "TotpVerifier.for_policy(policy.context.second_factor, lambda op: None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_policy_layer_parses_without_the_admin_layer_or_the_stores() -> None:
    code = (
        "import sys\n"
        "import gateway.policy.engine, gateway.policy.explain\n"
        "from gateway.policy.rules import policy_from_mapping\n"
        "top = {'version': 1, 'control_namespace': ['fleet/{unit}/control/#'], 'roles': {}}\n"
        "assert policy_from_mapping(top, 'p.yaml').context.second_factor.max_failures == 5\n"
        "above = ('gateway.admin', 'gateway.stores', 'yaml')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(above))\n"
        "assert loaded == [], loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
