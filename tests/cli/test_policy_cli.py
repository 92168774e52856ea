"""`fleetgate policy check|explain`: exit codes, one-sentence errors, text and JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from gateway.cli.policy_commands import EXIT_DENIED, policy
from tests.harness import run_cli

EMBEDDED = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(policy, list(args), catch_exceptions=False)


def write_policy(tmp_path: Path, edit: Any) -> Path:
    data = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _overlapping(data: dict[str, Any]) -> None:
    data["roles"]["unit"]["publish"].append("fleet/{id}/#")
    data["quarantine"]["unit"]["publish"].append("fleet/{id}/#")


class TestCheck:
    def test_embedded_policy_summary(self) -> None:
        result = invoke("check")
        assert result.exit_code == 0, result.output
        assert "quarantine ∩ control = ∅ (proved over 2 filter pairs)" in result.stdout
        assert "partner/tier3" in result.stdout
        assert "warnings: none" in result.stdout

    def test_json_summary(self) -> None:
        result = invoke("check", "--json")
        assert result.exit_code == 0
        out = json.loads(result.stdout)
        assert out["valid"] is True
        assert out["quarantine_control_disjoint"] == {"proved": True, "filter_pairs": 2}
        assert [r["name"] for r in out["roles"]][:4] == [
            "unit",
            "operator/ops",
            "operator/security",
            "operator/auditor",
        ]

    def test_overlapping_quarantine_is_refused_in_one_sentence(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, _overlapping)
        result = invoke("check", str(path))
        assert result.exit_code == 1
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"error: {path}: quarantine.unit.publish[2]: ")
        assert "'fleet/{unit}/control/#'" in lines[0] and "'fleet/x/control'" in lines[0]

    def test_refusal_as_json(self, tmp_path: Path) -> None:
        result = invoke("check", "--json", str(write_policy(tmp_path, _overlapping)))
        assert result.exit_code == 1
        out = json.loads(result.stdout)
        assert out["valid"] is False and out["path"] == "quarantine.unit.publish[2]"

    def test_warnings_are_shown_but_the_policy_is_valid(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, lambda d: d["roles"]["operator"]["ops"]["subscribe"].append("#"))
        result = invoke("check", str(path))
        assert result.exit_code == 0
        assert "warning: roles.operator.ops.subscribe[4]: '#' matches every topic" in result.stdout

    def test_a_rate_detector_that_would_contain_units_at_their_permitted_rate_is_refused(
        self, tmp_path: Path
    ) -> None:
        path = write_policy(tmp_path, lambda d: d["detectors"]["publish_rate"].update(min_per_second=10))
        result = invoke("check", str(path))
        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {path}: detectors.publish_rate.min_per_second: 10/s is not above ")
        assert "roles.unit.limits.messages_per_second (20/s)" in line

    def test_a_rate_detector_within_the_units_burst_is_a_warning(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, lambda d: d["detectors"]["publish_rate"].update(min_per_second=25))
        result = invoke("check", str(path))
        assert result.exit_code == 0
        assert "warning: detectors.publish_rate.min_per_second: 25/s fires on a unit that spends" in (
            result.stdout
        )

    def test_missing_file(self, tmp_path: Path) -> None:
        result = invoke("check", str(tmp_path / "absent.yaml"))
        assert result.exit_code == 1
        assert "absent.yaml: cannot be read" in result.stderr


class TestExplain:
    def test_allowed_publish_shows_rule_and_grant(self) -> None:
        result = invoke("explain", "--id", "TRK-1", "--publish", "fleet/TRK-1/telemetry/gps")
        assert result.exit_code == 0
        assert result.stdout.startswith("ALLOW: unit/TRK-1")
        assert "rule:   unit/publish/0" in result.stdout
        assert "grant:  fleet/{id}/telemetry/#  (for this identity: fleet/TRK-1/telemetry/#)" in result.stdout

    def test_quarantined_telemetry_is_denied_with_exit_5(self) -> None:
        result = invoke("explain", "--id", "TRK-1", "--quarantined", "--publish", "fleet/TRK-1/telemetry/gps")
        assert result.exit_code == EXIT_DENIED == 5  # 3 is the admin API's refusal
        assert "reason: quarantined" in result.stdout
        assert "fleet/TRK-1/diag/#" in result.stdout  # what it may still publish

    def test_quarantined_control_ack_is_judged_by_the_normal_rule(self) -> None:
        args = (
            "explain",
            "--id",
            "TRK-1",
            "--quarantined",
            "--json",
            "--publish",
            "fleet/TRK-1/control/b/ack",
        )
        result = invoke(*args)
        assert result.exit_code == 0
        out = json.loads(result.stdout)
        assert (out["verdict"], out["rule"], out["control_namespace"]) == ("allow", "unit/publish/4", True)

    def test_partner_subscription_as_json(self) -> None:
        args = ("explain", "--id", "ACME", "--kind", "partner", "--tier", "3", "--json")
        result = invoke(*args, "--subscribe", "views/+/#")
        assert result.exit_code == EXIT_DENIED
        out = json.loads(result.stdout)
        assert (out["verdict"], out["reason"], out["rule"]) == (
            "deny",
            "wildcard_overreach",
            "partner/tier3/subscribe",
        )
        ok = invoke(*args, "--subscribe", "$share/acme/views/3/fleet/+/eta")
        assert ok.exit_code == 0 and json.loads(ok.stdout)["grant"] == "views/{tier}/#"

    def test_partner_without_tier_is_refused_at_connect(self) -> None:
        result = invoke(
            "explain", "--id", "ACME", "--kind", "partner", "--subscribe", "fleet/+/telemetry/eta"
        )
        assert result.exit_code == EXIT_DENIED
        assert "reason: partner_without_tier" in result.stdout

    @pytest.mark.parametrize(
        ("role", "code", "rule"),
        [
            (None, 0, "operator/ops/publish/0"),
            ("security", 0, "operator/security/publish/0"),
            ("auditor", EXIT_DENIED, ""),
        ],
    )
    def test_an_operator_is_judged_by_its_admin_role(self, role: str | None, code: int, rule: str) -> None:
        args = (
            "explain",
            "--id",
            "bob",
            "--kind",
            "operator",
            "--json",
            "--publish",
            "fleet/TRK-1/cmd/reboot",
        )
        result = invoke(*args, *(("--role", role) if role else ()))
        assert result.exit_code == code
        out = json.loads(result.stdout)
        if code == 0:
            assert out["rule"] == rule
        else:
            assert (out["reason"], out["profile"]) == ("topic_not_granted", "operator/auditor")

    def test_nobody_may_publish_the_mode_command(self) -> None:
        args = ("explain", "--id", "dispatch", "--kind", "service", "--publish", "fleet/TRK-1/cmd/mode")
        result = invoke(*args)
        assert result.exit_code == EXIT_DENIED
        assert "reason: reserved_for_gateway" in result.stdout

    def test_judges_the_given_policy_file(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, lambda d: d["roles"]["unit"]["publish"].remove("fleet/{id}/state"))
        args = ("explain", "--id", "TRK-1", "--publish", "fleet/TRK-1/state")
        assert invoke(*args).exit_code == 0
        assert invoke(*args, "--policy", str(path)).exit_code == EXIT_DENIED

    @pytest.mark.parametrize(
        ("args", "code", "words"),
        [
            (("--id", "TRK-1"), 2, "exactly one of --publish"),
            (("--id", "TRK-1", "--publish", "a", "--subscribe", "b"), 2, "exactly one of --publish"),
            (("--id", "bad/id", "--publish", "a"), 1, "unit id 'bad/id' is not valid"),
            (("--id", "TRK-1", "--publish", "fleet/+/x"), 1, "contains a wildcard"),
        ],
    )
    def test_usage_and_input_errors(self, args: tuple[str, ...], code: int, words: str) -> None:
        result = CliRunner().invoke(policy, ["explain", *args])
        assert result.exit_code == code
        assert words in result.stderr


def test_through_the_real_fleetgate_command() -> None:
    check = run_cli("policy", "check", "--json")
    assert check.code == 0, check.stderr
    assert json.loads(check.stdout)["valid"] is True
    denied = run_cli("policy", "explain", "--id", "TRK-1", "--publish", "fleet/TRK-2/telemetry/gps")
    assert denied.code == EXIT_DENIED
    assert "reason: topic_outside_namespace" in denied.stdout
