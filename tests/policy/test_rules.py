"""Loading policy.yaml: the shipped defaults, and one precise sentence for every kind of mistake."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.admin.rights import ROLE_RIGHTS
from gateway.policy.rules import OPERATOR_ROLES, policy_from_mapping
from gateway.policy.schema import PolicyError
from gateway.stores.policy_file import EMBEDDED_SOURCE, load_policy

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "gateway" / "defaults" / "policy.yaml"


def base() -> dict[str, Any]:
    """A fresh copy of the shipped policy as data, to break one thing at a time."""
    data = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def refused(data: Any, source: str = "test.yaml") -> PolicyError:
    with pytest.raises(PolicyError) as info:
        policy_from_mapping(data, source)
    return info.value


class TestShippedPolicy:
    def test_embedded_default_loads_with_the_product_topic_table(self) -> None:
        policy = load_policy(None)
        assert policy.source == EMBEDDED_SOURCE
        assert [g.template for g in policy.control_namespace] == ["fleet/{unit}/control/#"]
        assert [g.template for g in policy.unit.publish] == [
            "fleet/{id}/telemetry/#",
            "fleet/{id}/diag/#",
            "fleet/{id}/state",
            "fleet/{id}/cmd/+/ack",
            "fleet/{id}/control/+/ack",
        ]
        assert set(policy.services) == {"dispatch", "analytics"}
        assert set(policy.partner_tiers) == {1, 2, 3}
        assert [g.template for g in policy.quarantine["unit"].publish] == [
            "fleet/{id}/diag/#",
            "fleet/{id}/cmd/+/ack",
        ]
        assert policy.unit.limits.max_subscriptions == 20
        assert policy.max_denied_before_disconnect == 20

    def test_configs_policy_is_byte_identical_to_the_embedded_default(self) -> None:
        assert (ROOT / "configs" / "policy.yaml").read_bytes() == EMBEDDED.read_bytes()

    def test_loading_a_file_names_it_as_the_source(self, tmp_path: Path) -> None:
        path = tmp_path / "p.yaml"
        path.write_bytes(EMBEDDED.read_bytes())
        policy = load_policy(path)
        assert policy.source == str(path)
        assert policy.digest == load_policy(None).digest

    def test_rules_are_stable_ids_that_lead_back_to_their_grant(self) -> None:
        policy = load_policy(None)
        grant = policy.grant("unit/publish/4")
        assert grant is not None
        assert (grant.template, grant.path) == ("fleet/{id}/control/+/ack", "roles.unit.publish[4]")
        assert policy.grant("service/dispatch/publish/0") is not None
        assert policy.grant("partner/tier2/subscribe/0") is not None
        assert policy.grant("quarantine/unit/publish/0") is not None

    def test_unlisted_service_and_tier_get_an_empty_profile(self) -> None:
        policy = load_policy(None)
        ghost = policy.profile_for("service", "billing", None)
        assert (ghost.name, ghost.defined, ghost.publish, ghost.subscribe) == (
            "service/billing",
            False,
            (),
            (),
        )
        assert policy.profile_for("partner", "ACME", 7).name == "partner/tier7"


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node: Any = data
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


# (what to change, value) → (key path named, words the sentence must contain)
MISTAKES = [
    ("extra", 1, "", "unknown key 'extra'"),
    ("version", 2, "version", "must be 1"),
    ("roles.unit.publish.2", 42, "roles.unit.publish[2]", "must be a topic filter string"),
    ("roles.unit.publish.1", "fleet/{id}/diag/#/x", "roles.unit.publish[1]", "not a valid topic filter"),
    (
        "roles.unit.publish.0",
        "fleet/{unit}/telemetry/#",
        "roles.unit.publish[0]",
        "{unit} is not a placeholder",
    ),
    (
        "roles.unit.subscribe.0",
        "fleet/{name}/cmd/#",
        "roles.unit.subscribe[0]",
        "{name} is not a placeholder",
    ),
    ("roles.unit.publish.2", "fleet/x{id}/state", "roles.unit.publish[2]", "must be a whole topic level"),
    ("roles.unit.publish.2", "fleet/{id/state", "roles.unit.publish[2]", "unmatched brace"),
    ("roles.unit.publish.2", "$share/g/fleet/{id}/state", "roles.unit.publish[2]", "shared subscription"),
    ("roles.unit.publish", "fleet/{id}/state", "roles.unit.publish", "must be a list"),
    ("roles.unit.limits.burst", -5, "roles.unit.limits.burst", "positive number"),
    ("roles.unit.limits.max_payload", 1.5, "roles.unit.limits.max_payload", "positive whole number"),
    ("roles.unit.limits.max_payload", True, "roles.unit.limits.max_payload", "positive whole number"),
    ("roles.unit.limits.messages_per_second", ".inf", "roles.unit.limits.messages_per_second", "positive"),
    ("roles.unit.limits.speed", 1, "roles.unit.limits", "unknown key 'speed'"),
    ("roles.unit.limit", {}, "roles.unit", "unknown key 'limit'"),
    ("roles.robot", {}, "roles", "unknown key 'robot'"),
    ("roles.partner.gold", {}, "roles.partner.gold", "tier<N>"),
    ("roles.service.bad name", {}, "roles.service.bad name", "not a service name"),
    ("roles.operator", [], "roles.operator", "must be a mapping"),
    (
        "roles.operator.admin",
        {},
        "roles.operator",
        "'admin' is not an admin role; operators are granted by role",
    ),
    # the shape before roles: grants straight under roles.operator
    ("roles.operator.publish", ["fleet/+/cmd/#"], "roles.operator", "e.g. roles.operator.ops.publish"),
    ("roles.operator.auditor.publish", ["fleet/+/cmd/#"], "roles.operator.auditor.publish[0]", "only reads"),
    ("roles.operator.ops.share", [], "roles.operator.ops", "unknown key 'share'"),
    ("roles.service.dispatch.share_groups", ["a/b"], "roles.service.dispatch.share_groups[0]", "no '/'"),
    ("roles.service.dispatch.share_groups", "workers", "roles.service.dispatch.share_groups", "list of"),
    ("quarantine.unit.share_groups", ["g"], "quarantine.unit", "unknown key 'share_groups'"),
    ("control_namespace", [], "control_namespace", "non-empty list"),
    ("control_namespace.0", "fleet/control/{unit}/#", "control_namespace[0]", "second level"),
    ("control_namespace.0", "fleet/{id}/control/#", "control_namespace[0]", "{id} is not a placeholder"),
    ("quarantine.operator", {"publish": []}, "quarantine", "unknown key 'operator'"),
    ("quarantine.unit", {"subscribe": []}, "quarantine.unit", "unknown key 'subscribe'"),
    ("violations.max_denied_before_disconnect", 0, "violations.max_denied_before_disconnect", "positive"),
    (
        "roles.partner.tier3.subscribe.0",
        "views/{tier}x/eta",
        "roles.partner.tier3.subscribe[0]",
        "whole topic level",
    ),
]


@pytest.mark.parametrize(("where", "value", "path", "words"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_key_path_and_problem(where: str, value: Any, path: str, words: str) -> None:
    data = base()
    if value == ".inf":
        value = float("inf")
    error = refused(_set(data, where, value), source="fleet/policy.yaml")
    assert error.source == "fleet/policy.yaml"
    assert error.path == path
    assert words in error.problem
    assert str(error).startswith(f"fleet/policy.yaml: {path}: " if path else "fleet/policy.yaml: ")
    assert "\n" not in str(error)


def test_missing_required_sections_are_named() -> None:
    data = base()
    del data["roles"]
    assert "missing required key 'roles'" in str(refused(data))


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert "must be a mapping" in str(refused(["version", 1]))


def test_burst_without_its_rate_is_refused() -> None:
    data = base()
    data["roles"]["operator"]["ops"]["limits"] = {"burst": 10}
    error = refused(data)
    assert error.path == "roles.operator.ops.limits.burst"
    assert "messages_per_second" in error.problem


def test_partner_placeholders_are_accepted_in_partner_grants() -> None:
    data = base()
    data["roles"]["partner"]["tier1"]["subscribe"].append("partners/{partner}/views/{tier}/#")
    policy = policy_from_mapping(data, "ok.yaml")
    assert policy.partner_tiers[1].subscribe[-1].template == "partners/{partner}/views/{tier}/#"


def test_unreadable_and_invalid_yaml_files_are_one_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot be read"):
        load_policy(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nroles: [unclosed\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"broken\.yaml: is not valid YAML at line \d+"):
        load_policy(broken)


def test_author_chosen_names_must_be_text_and_may_be_empty() -> None:
    data = base()
    data["roles"]["service"][7] = {}
    error = refused(data)
    assert (error.path, error.problem) == ("roles.service", "key 7 must be text (quote it)")
    data = base()
    data["roles"]["service"] = None
    assert policy_from_mapping(data, "p.yaml").services == {}


def test_the_policy_knows_exactly_the_admin_roles_the_admin_api_knows() -> None:
    assert set(OPERATOR_ROLES) == set(ROLE_RIGHTS)
    assert [p.name for p in load_policy(None).operators.values()] == [f"operator/{r}" for r in OPERATOR_ROLES]
