"""Device posture: version and patch-level ordering, the two reporting paths, verdicts, the policy section."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.policy.posture import (
    PostureRequirement,
    evaluate,
    parse_patch_level,
    parse_posture_from_state,
    parse_posture_from_user_properties,
    parse_posture_policy,
    parse_version,
)
from gateway.policy.schema import PolicyError

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)

ORDERED_VERSIONS = [
    "0.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.2",
    "1.10",
    "2.3.9",
    "2.4.0-rc1",
    "2.4.0",
    "2.4.0.1",
    "2.4.1",
    "10.0",
]


@pytest.mark.parametrize("i", range(len(ORDERED_VERSIONS) - 1))
def test_versions_order_numerically_with_prereleases_lower(i: int) -> None:
    lower, higher = (parse_version(v) for v in ORDERED_VERSIONS[i : i + 2])
    assert lower is not None and higher is not None
    assert lower < higher and not higher < lower


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("2.4", "2.4.0"),
        ("v2.4.0", "2.4.0"),
        ("2.4.0+build7", "2.4.0"),
        ("fleet-sim 1.4.2", "1.4.2"),
        ("02.4", "2.4"),
    ],
)
def test_equal_versions(a: str, b: str) -> None:
    assert parse_version(a) == parse_version(b)


@pytest.mark.parametrize(
    "text", ["", "banana", "2.x", "2..4", "2.4-", "-2.4", "2.4.0-rc_1", "1" * 10, "1." * 40]
)
def test_unreadable_versions(text: str) -> None:
    assert parse_version(text) is None


@pytest.mark.parametrize(
    ("text", "iso"),
    [("2026-06", "2026-06-01"), ("2026-06-15", "2026-06-15"), (" 2026-06-05 ", "2026-06-05")],
)
def test_patch_levels(text: str, iso: str) -> None:
    level = parse_patch_level(text)
    assert level is not None and level.day.isoformat() == iso


@pytest.mark.parametrize("text", ["2026-13", "2026-02-30", "2026/06", "26-06", "June 2026", "2026-6-1", ""])
def test_unreadable_patch_levels(text: str) -> None:
    assert parse_patch_level(text) is None


class TestReports:
    def test_user_properties(self) -> None:
        posture = parse_posture_from_user_properties(
            [("firmware", "2.4.1"), ("site", "x"), ("patch_level", "2026-07"), ("secure_boot", "true")]
        )
        assert posture is not None and posture.source == "connect"
        assert str(posture.firmware) == "2.4.1" and posture.secure_boot is True
        assert posture.patch_level is not None and posture.patch_level.text == "2026-07"

    def test_no_posture_properties_is_no_report(self) -> None:
        assert parse_posture_from_user_properties([("site", "x")]) is None
        assert parse_posture_from_user_properties([]) is None

    def test_conflicting_repeats_count_as_unreadable(self) -> None:
        posture = parse_posture_from_user_properties(
            [("firmware", "9.9"), ("firmware", "1.0"), ("secure_boot", "1")]
        )
        assert posture is not None and posture.firmware is None and posture.raw["firmware"] == "1.0"
        same = parse_posture_from_user_properties([("firmware", "2.0"), ("firmware", "2.0")])
        assert same is not None and str(same.firmware) == "2.0"

    @pytest.mark.parametrize(
        ("payload", "firmware", "boot"),
        [
            (b'{"online": true, "firmware": "fleet-sim 1.4.2"}', "1.4.2", None),
            (b'{"online": true, "posture": {"firmware": "2.5", "secure_boot": true}}', "2.5", True),
            (b'{"firmware": "2.5", "secure_boot": "off"}', "2.5", False),
            (b'{"firmware": 2.5, "secure_boot": 0}', "2.5", False),
        ],
    )
    def test_state_messages(self, payload: bytes, firmware: str, boot: bool | None) -> None:
        posture = parse_posture_from_state(payload)
        assert posture is not None and posture.source == "state"
        assert str(posture.firmware) == firmware and posture.secure_boot is boot

    @pytest.mark.parametrize("payload", [b"online", b"[]", b'{"online": false}', b"\xff", b"", b"[" * 50_000])
    def test_state_without_posture(self, payload: bytes) -> None:
        assert parse_posture_from_state(payload) is None


REQ = PostureRequirement(
    "unit",
    min_firmware=parse_version("2.4.0"),
    min_patch_level=parse_patch_level("2026-06"),
    require_secure_boot=True,
)


def _report(**kw: str) -> Any:
    return parse_posture_from_user_properties(kw.items())


VERDICTS = [
    ({"firmware": "2.4.0", "patch_level": "2026-06", "secure_boot": "true"}, "ok", []),
    ({"firmware": "v3.0", "patch_level": "2026-08-05", "secure_boot": "yes"}, "ok", []),
    (
        {"firmware": "2.3.9", "patch_level": "2026-06", "secure_boot": "true"},
        "restricted",
        ["firmware_below_minimum"],
    ),
    (
        {"firmware": "2.4.0-rc.2", "patch_level": "2026-06", "secure_boot": "1"},
        "restricted",
        ["firmware_below_minimum"],
    ),
    (
        {"firmware": "2.4.0", "patch_level": "2026-05-31", "secure_boot": "true"},
        "restricted",
        ["patch_level_below_minimum"],
    ),
    (
        {"firmware": "2.4.0", "patch_level": "2026-06", "secure_boot": "false"},
        "restricted",
        ["secure_boot_off"],
    ),
    ({"firmware": "2.4.0", "patch_level": "2026-06"}, "restricted", ["secure_boot_unknown"]),
    (
        {"firmware": "latest", "patch_level": "soon", "secure_boot": "maybe"},
        "restricted",
        ["firmware_unknown", "patch_level_unknown", "secure_boot_unknown"],
    ),
    (
        {"firmware": "2.4.0", "patch_level": "2027-01", "secure_boot": "true"},
        "restricted",
        ["patch_level_in_future"],
    ),
    ({"secure_boot": "true"}, "restricted", ["firmware_unknown", "patch_level_unknown"]),
]


@pytest.mark.parametrize(("report", "outcome", "codes"), VERDICTS)
def test_verdicts(report: dict[str, str], outcome: str, codes: list[str]) -> None:
    verdict = evaluate(_report(**report), REQ, NOW)
    assert verdict.outcome == outcome
    assert [s.code for s in verdict.shortfalls] == codes
    assert verdict.rule == ("posture/unit/meets_minimum" if outcome == "ok" else "posture/unit/below_minimum")
    assert len(verdict.reasons) == len(codes)


def test_reasons_say_what_fell_short() -> None:
    verdict = evaluate(_report(firmware="2.3.9", patch_level="2026-06", secure_boot="true"), REQ, NOW)
    assert verdict.reasons == ["firmware_below_minimum: firmware 2.3.9 < 2.4.0"]


def test_refuse_instead_of_restrict() -> None:
    req = PostureRequirement("unit", min_firmware=parse_version("2.4"), below_minimum="refuse")
    assert evaluate(_report(firmware="2.3"), req, NOW).outcome == "refused"
    assert evaluate(_report(firmware="2.4"), req, NOW).outcome == "ok"


@pytest.mark.parametrize(
    ("choice", "outcome"), [("allow", "ok"), ("restricted", "restricted"), ("refuse", "refused")]
)
def test_unknown_posture_is_an_explicit_choice(choice: Any, outcome: str) -> None:
    verdict = evaluate(None, PostureRequirement("unit", require_secure_boot=True, when_unknown=choice), NOW)
    assert verdict.outcome == outcome and verdict.rule == "posture/unit/when_unknown"
    assert [s.code for s in verdict.shortfalls] == ([] if outcome == "ok" else ["posture_unknown"])


def test_no_requirement_means_ok() -> None:
    assert evaluate(None, None, NOW).outcome == "ok"


def test_rolling_patch_age_uses_now() -> None:
    req = PostureRequirement("unit", max_patch_age_days=90)
    report = _report(patch_level="2026-06-01")
    assert evaluate(report, req, datetime(2026, 8, 30, tzinfo=UTC)).outcome == "ok"
    late = evaluate(report, req, datetime(2026, 9, 1, tzinfo=UTC))
    assert late.reasons == ["patch_level_too_old: patch level 2026-06-01 is 92 days old"]


def test_posture_change_restores_normal_mode() -> None:
    assert (
        evaluate(_report(firmware="2.3.9", patch_level="2026-06", secure_boot="1"), REQ, NOW).outcome
        == "restricted"
    )
    assert (
        evaluate(_report(firmware="2.4.1", patch_level="2026-06", secure_boot="1"), REQ, NOW).outcome == "ok"
    )


class TestPolicySection:
    def test_parses(self) -> None:
        reqs = parse_posture_policy(
            {
                "unit": {
                    "min_firmware": "2.4.0",
                    "min_patch_level": "2026-06",
                    "require_secure_boot": True,
                    "below_minimum": "refuse",
                    "when_unknown": "allow",
                    "max_patch_age_days": 365,
                }
            },
            "p.yaml",
        )
        req = reqs["unit"]
        assert req.min_firmware == parse_version("2.4") and req.below_minimum == "refuse"
        assert req.when_unknown == "allow" and req.max_patch_age_days == 365
        assert parse_posture_policy(None, "p.yaml") == {}

    def test_defaults_restrict(self) -> None:
        req = parse_posture_policy({"unit": {"min_firmware": "2.4.0"}}, "p.yaml")["unit"]
        assert (req.below_minimum, req.when_unknown, req.require_secure_boot) == (
            "restricted",
            "restricted",
            False,
        )

    @pytest.mark.parametrize(
        ("body", "path", "problem"),
        [
            ([], "posture", "must be a mapping of roles"),
            ({"partner": {"min_firmware": "1"}}, "posture", "unknown role 'partner'"),
            ({"unit": []}, "posture.unit", "must be a mapping"),
            ({"unit": {"min_fw": "1"}}, "posture.unit", "unknown key 'min_fw'"),
            ({"unit": {"min_firmware": 2.4}}, "posture.unit.min_firmware", "quote it"),
            ({"unit": {"min_firmware": "two"}}, "posture.unit.min_firmware", "is not a version"),
            ({"unit": {"min_patch_level": "2026-13"}}, "posture.unit.min_patch_level", "not a patch level"),
            ({"unit": {"max_patch_age_days": 0}}, "posture.unit.max_patch_age_days", "positive whole"),
            ({"unit": {"require_secure_boot": "yes"}}, "posture.unit.require_secure_boot", "true or false"),
            (
                {"unit": {"min_firmware": "1", "below_minimum": "drop"}},
                "posture.unit.below_minimum",
                "one of",
            ),
            ({"unit": {"min_firmware": "1", "when_unknown": "ok"}}, "posture.unit.when_unknown", "one of"),
            ({"unit": {"below_minimum": "refuse"}}, "posture.unit", "sets no minimum"),
        ],
    )
    def test_mistakes(self, body: Any, path: str, problem: str) -> None:
        with pytest.raises(PolicyError) as info:
            parse_posture_policy(body, "p.yaml")
        assert info.value.path == path and problem in info.value.problem
