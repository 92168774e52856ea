"""The checks run on every load: quarantine ∩ control = ∅ (with a witness when not), and lint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.mqtt.topics import filters_intersect, topic_matches
from gateway.policy.rules import (
    Grant,
    example_topic,
    lint_policy,
    policy_from_mapping,
    prove_quarantine_disjoint,
    quarantine_pairs,
)
from gateway.policy.schema import PolicyError
from gateway.stores.policy_file import load_policy

EMBEDDED = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"


def base() -> dict[str, Any]:
    data = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def refused(data: dict[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        policy_from_mapping(data, "p.yaml")
    return info.value


class TestDisjointness:
    def test_shipped_policy_is_proved_disjoint_over_every_pair(self) -> None:
        policy = load_policy(None)
        assert prove_quarantine_disjoint(policy) == []
        assert len(quarantine_pairs(policy)) == 2  # 2 quarantine filters x 1 control filter

    def test_quarantine_granting_the_whole_unit_namespace_is_refused_with_both_filters_and_a_witness(
        self,
    ) -> None:
        data = base()
        data["roles"]["unit"]["publish"].append("fleet/{id}/#")
        data["quarantine"]["unit"]["publish"] = ["fleet/{id}/diag/#", "fleet/{id}/#"]
        error = refused(data)
        assert error.path == "quarantine.unit.publish[1]"
        assert "'fleet/{id}/#'" in error.problem
        assert "'fleet/{unit}/control/#'" in error.problem
        assert "'fleet/x/control'" in error.problem  # a topic both filters match
        assert topic_matches("fleet/+/#", "fleet/x/control")
        assert topic_matches("fleet/+/control/#", "fleet/x/control")

    def test_overlap_through_a_second_control_filter_is_found(self) -> None:
        data = base()
        data["control_namespace"].append("fleet/{unit}/diag/brakes/#")
        error = refused(data)
        assert error.path == "quarantine.unit.publish[0]"
        assert "fleet/{unit}/diag/brakes/#" in error.problem
        assert "'fleet/x/diag/brakes'" in error.problem

    def test_overlaps_are_listed_one_per_pair(self) -> None:
        policy = load_policy(None)
        sneaky = Grant("quarantine/unit/publish/9", "fleet/+/control/+/ack", "quarantine.unit.publish[9]")
        quarantine = policy.quarantine["unit"]
        widened = type(quarantine)(
            quarantine.name, quarantine.path, (*quarantine.publish, sneaky), quarantine.subscribe
        )
        policy = type(policy)(
            source=policy.source,
            version=1,
            control_namespace=policy.control_namespace,
            unit=policy.unit,
            operators=policy.operators,
            services=policy.services,
            partner_tiers=policy.partner_tiers,
            quarantine={"unit": widened},
        )
        overlaps = prove_quarantine_disjoint(policy)
        assert [(o.quarantine.rule, o.control.rule, o.witness) for o in overlaps] == [
            ("quarantine/unit/publish/9", "control/0", "fleet/x/control/x/ack")
        ]

    def test_quarantine_may_only_narrow_the_normal_grants(self) -> None:
        data = base()
        data["quarantine"]["unit"]["publish"].append("fleet/{id}/firmware/#")
        error = refused(data)
        assert error.path == "quarantine.unit.publish[2]"
        assert "only narrow" in error.problem


class TestExampleTopic:
    @pytest.mark.parametrize(
        ("a", "b", "witness"),
        [
            ("fleet/+/#", "fleet/+/control/#", "fleet/x/control"),
            ("#", "#", "x"),
            ("/#", "#", "/x"),
            ("a/+", "+/b", "a/b"),
            ("a/#", "a/b/c", "a/b/c"),
            ("$SYS/#", "$SYS/+", "$SYS/x"),
            ("a", "b", None),
            ("+/x", "$SYS/x", None),
            ("fleet/+/diag/#", "fleet/+/control/#", None),
        ],
    )
    def test_table(self, a: str, b: str, witness: str | None) -> None:
        assert example_topic(a, b) == witness

    LEVEL = st.sampled_from(["a", "b", "", "$S", "+"])

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(LEVEL, min_size=1, max_size=4),
        st.booleans(),
        st.lists(LEVEL, min_size=1, max_size=4),
        st.booleans(),
    )
    def test_a_witness_exists_exactly_when_the_filters_intersect_and_it_matches_both(
        self, la: list[str], ma: bool, lb: list[str], mb: bool
    ) -> None:
        a = "/".join([*la, "#"] if ma else la)
        b = "/".join([*lb, "#"] if mb else lb)
        assume(a and b)  # "" is not a filter
        witness = example_topic(a, b)
        assert (witness is not None) == filters_intersect(a, b)
        if witness is not None:
            assert witness and topic_matches(a, witness) and topic_matches(b, witness)


class TestLint:
    @pytest.mark.parametrize(
        "grant", ["fleet/+/telemetry/#", "#", "fleet/#", "fleet/TRK-2/cmd/#", "+/{id}/state", "other/{id}"]
    )
    def test_unit_grants_escaping_their_namespace_are_errors(self, grant: str) -> None:
        data = base()
        data["roles"]["unit"]["subscribe"].append(grant)
        error = refused(data)
        assert error.path == "roles.unit.subscribe[2]"
        assert "outside the unit's own namespace" in error.problem

    @pytest.mark.parametrize(
        ("role", "grant"),
        [
            ("unit", "fleet/{id}/cmd/mode"),
            ("service.dispatch", "fleet/+/cmd/mode"),
        ],
    )
    def test_a_publish_grant_naming_only_the_mode_command_is_an_error(self, role: str, grant: str) -> None:
        data = base()
        profile = data["roles"]
        for key in role.split("."):
            profile = profile[key]
        index = len(profile["publish"])
        profile["publish"].append(grant)
        error = refused(data)
        assert error.path == f"roles.{role}.publish[{index}]"
        assert "the gateway's own mode command, which no client may publish" in error.problem

    def test_broader_cmd_grants_stay_valid_and_subscribing_to_the_mode_command_too(self) -> None:
        data = base()
        data["roles"]["service"]["analytics"]["publish"] = ["fleet/+/cmd/#"]  # the engine's rule wins there
        data["roles"]["service"]["analytics"]["subscribe"].append("fleet/+/cmd/mode")
        policy = policy_from_mapping(data, "p.yaml")
        assert [f for f in lint_policy(policy) if f.severity == "error"] == []

    def test_dollar_grant_to_a_non_operator_is_an_error(self) -> None:
        data = base()
        data["roles"]["service"]["analytics"]["subscribe"].append("$SYS/broker/#")
        error = refused(data)
        assert error.path == "roles.service.analytics.subscribe[1]"
        assert "only operators" in error.problem

    def test_dollar_subscribe_grant_to_operators_is_allowed(self) -> None:
        data = base()
        data["roles"]["operator"]["security"]["subscribe"].append("$SYS/#")
        policy = policy_from_mapping(data, "p.yaml")
        assert [f for f in lint_policy(policy) if f.severity == "error"] == []

    def test_warnings_for_everything_grants_and_partner_reach_into_cmd(self) -> None:
        data = base()
        data["roles"]["operator"]["ops"]["subscribe"].append("#")
        data["roles"]["partner"]["tier1"]["subscribe"].append("fleet/+/cmd/#")
        data["roles"]["operator"]["ops"]["publish"].append("$SYS/x")
        data["roles"]["unit"]["limits"]["bytes_burst"] = 1000
        policy = policy_from_mapping(data, "p.yaml")
        found = {(f.severity, f.path) for f in lint_policy(policy)}
        assert found == {
            ("warning", "roles.operator.ops.subscribe[4]"),
            ("warning", "roles.partner.tier1.subscribe[1]"),
            ("warning", "roles.operator.ops.publish[1]"),
            ("warning", "roles.unit.limits.bytes_burst"),
        }

    def test_plus_hash_is_as_broad_as_hash(self) -> None:
        data = base()
        data["roles"]["service"]["analytics"]["subscribe"] = ["+/#"]
        messages = [f.message for f in lint_policy(policy_from_mapping(data, "p.yaml"))]
        assert any("matches every topic" in m for m in messages)
        assert any("diag/cmd/control" in m for m in messages) is False  # not a partner

    def test_a_burst_below_one_message_is_an_error(self) -> None:
        data = base()
        data["roles"]["unit"]["limits"]["burst"] = 0.5
        assert refused(data).path == "roles.unit.limits.burst"

    def test_shipped_policy_has_no_findings(self) -> None:
        assert lint_policy(load_policy(None)) == []
