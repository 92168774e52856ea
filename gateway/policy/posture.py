"""Device posture: what a unit reports about itself, the policy's minimums, and the verdict.

A unit reports firmware version, security patch level and secure-boot state either as MQTT 5 user
properties on CONNECT (`firmware`, `patch_level`, `secure_boot`) or, for MQTT 3.1.1, in its retained
`fleet/{unit}/state` JSON (top-level keys, or inside a `posture` object). Posture is self-reported, so it
can only ever *lower* trust: a unit claiming to be current is judged by its certificate and grants as
usual, and one admitting to be behind is restricted (diagnostic-only, like quarantine without the ops
alert) or refused, as the policy says.

Verdicts are values: `PostureVerdict(outcome, shortfalls, rule)`; each shortfall has a stable code for
audit and metrics and a detail for people. A field the policy requires that is missing or unreadable
falls short like a value below the minimum (a unit cannot escape a minimum by garbling its report).
Posture not reported at all is judged by the explicit `when_unknown` choice; its default, `restricted`,
admits an MQTT 3.1.1 unit that reports only after it connects, and re-evaluation lifts the restriction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, Literal

from gateway.policy.schema import At, PolicyError

__all__ = [
    "PatchLevel",
    "Posture",
    "PostureRequirement",
    "PostureVerdict",
    "Shortfall",
    "Version",
    "evaluate",
    "parse_patch_level",
    "parse_posture_from_state",
    "parse_posture_from_user_properties",
    "parse_posture_policy",
    "parse_version",
]

Outcome = Literal["ok", "restricted", "refused"]
_ACTIONS: tuple[str, ...] = ("restricted", "refuse")
_UNKNOWN_ACTIONS: tuple[str, ...] = ("allow", "restricted", "refuse")
_KEYS = ("firmware", "patch_level", "secure_boot")
_MAX_TEXT = 64  # longer reports are refused as unreadable rather than parsed
_VERSION = re.compile(
    r"[vV]?(?P<core>\d{1,9}(?:\.\d{1,9}){0,5})"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?"
)
_PATCH = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?")  # fullmatch, as _VERSION


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Numeric components (trailing zeros ignored: 2.4 == 2.4.0), then pre-release (lower than none)."""

    core: tuple[int, ...]
    release: bool  # True when there is no pre-release part; sorts after any pre-release of the same core
    pre: tuple[tuple[int, int, str], ...]  # semver ordering: numeric ids before alphanumeric ones
    text: str = field(default="", compare=False)  # as reported ("v2.4.0" equals "2.4.0")

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> Version | None:
    """`2.4.0`, `v2.4`, `2.4.0-rc.1`, `2.4.0+build7`, or a product name then a version (`fleet-sim 1.4.2`)."""
    if len(text) > _MAX_TEXT:
        return None
    token = text.strip().rsplit(maxsplit=1)[-1] if text.strip() else ""
    match = _VERSION.fullmatch(token)
    if match is None:
        return None
    core = [int(p) for p in match.group("core").split(".")]
    while len(core) > 1 and core[-1] == 0:
        core.pop()
    pre = match.group("pre")
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return Version(tuple(core), pre is None, ids, token)


@dataclass(frozen=True, slots=True, order=True)
class PatchLevel:
    """A security patch level; a month-only level counts as the first of the month (the earliest)."""

    day: date
    text: str = field(default="", compare=False)


def parse_patch_level(text: str) -> PatchLevel | None:
    match = _PATCH.fullmatch(text.strip()) if len(text) <= _MAX_TEXT else None
    if match is None:
        return None
    year, month, day = match.groups()
    try:
        return PatchLevel(date(int(year), int(month), int(day or 1)), text.strip())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Posture:
    firmware: Version | None  # None: not reported, or unreadable (then the raw text is kept)
    patch_level: PatchLevel | None
    secure_boot: bool | None
    raw: Mapping[str, str]  # what was reported, for audit (values cut to 64 characters)
    source: Literal["connect", "state"]


def parse_posture_from_user_properties(pairs: Iterable[tuple[str, str]]) -> Posture | None:
    """From MQTT 5 CONNECT user properties; None when none of the posture names is present."""
    seen: dict[str, str] = {}
    conflicting: set[str] = set()
    for name, value in pairs:
        if name in _KEYS:
            if name in seen and seen[name] != value:
                conflicting.add(name)  # user properties may repeat; two answers are no answer
            seen[name] = value
    if not seen:
        return None
    fields = {k: v for k, v in seen.items() if k not in conflicting}
    return _posture(fields, {k: v[:_MAX_TEXT] for k, v in seen.items()}, "connect")


def parse_posture_from_state(payload: bytes) -> Posture | None:
    """From a retained `fleet/{unit}/state` JSON object; None when it says nothing about posture."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    nested = obj.get("posture")
    body = nested if isinstance(nested, dict) else obj
    found = {k: body[k] for k in _KEYS if k in body}
    if not found:
        return None
    fields = {k: _as_text(v) for k, v in found.items()}
    return _posture(fields, {k: v[:_MAX_TEXT] for k, v in fields.items()}, "state")


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)[:_MAX_TEXT]


def _posture(
    fields: Mapping[str, str], raw: Mapping[str, str], source: Literal["connect", "state"]
) -> Posture:
    boot = fields.get("secure_boot", "").strip().lower()
    return Posture(
        parse_version(fields["firmware"]) if "firmware" in fields else None,
        parse_patch_level(fields["patch_level"]) if "patch_level" in fields else None,
        True
        if boot in ("true", "1", "yes", "on")
        else False
        if boot in ("false", "0", "no", "off")
        else None,
        MappingProxyType(dict(raw)),
        source,
    )


# ------------------------------------------------------------------------------------ requirement


@dataclass(frozen=True, slots=True)
class PostureRequirement:
    role: str  # "unit"
    min_firmware: Version | None = None
    min_patch_level: PatchLevel | None = None
    max_patch_age_days: int | None = None  # a rolling minimum: patch level no older than this at `now`
    require_secure_boot: bool = False
    below_minimum: Literal["restricted", "refuse"] = "restricted"
    when_unknown: Literal["allow", "restricted", "refuse"] = "restricted"


@dataclass(frozen=True, slots=True)
class Shortfall:
    code: str  # firmware_below_minimum, firmware_unknown, patch_level_*, secure_boot_*, posture_unknown
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True, slots=True)
class PostureVerdict:
    outcome: Outcome
    shortfalls: tuple[Shortfall, ...] = ()
    rule: str = ""  # e.g. "posture/unit/below_minimum"

    @property
    def reasons(self) -> list[str]:
        return [str(s) for s in self.shortfalls]


_OUTCOME: Mapping[str, Outcome] = {"allow": "ok", "restricted": "restricted", "refuse": "refused"}


def evaluate(
    posture: Posture | None, requirement: PostureRequirement | None, now: datetime
) -> PostureVerdict:
    """Judge a reported posture (None: nothing reported) against a role's minimums at `now`."""
    if requirement is None:
        return PostureVerdict("ok", (), "posture/none")
    rule = f"posture/{requirement.role}"
    if posture is None:
        outcome = _OUTCOME[requirement.when_unknown]
        gap = () if outcome == "ok" else (Shortfall("posture_unknown", "the unit has not reported posture"),)
        return PostureVerdict(outcome, gap, f"{rule}/when_unknown")
    shortfalls = [*_firmware(posture, requirement), *_patch(posture, requirement, now.date())]
    if requirement.require_secure_boot and posture.secure_boot is not True:
        said = posture.raw.get("secure_boot")
        detail = "secure boot is off" if posture.secure_boot is False else f"secure_boot {said!r} unreadable"
        code = "secure_boot_off" if posture.secure_boot is False else "secure_boot_unknown"
        shortfalls.append(Shortfall(code, detail if said is not None else "secure_boot not reported"))
    if not shortfalls:
        return PostureVerdict("ok", (), f"{rule}/meets_minimum")
    outcome = _OUTCOME[requirement.below_minimum]
    return PostureVerdict(outcome, tuple(shortfalls), f"{rule}/below_minimum")


def _firmware(posture: Posture, req: PostureRequirement) -> list[Shortfall]:
    if req.min_firmware is None:
        return []
    if posture.firmware is None:
        said = posture.raw.get("firmware")
        detail = f"firmware {said!r} is not a version" if said is not None else "firmware not reported"
        return [Shortfall("firmware_unknown", detail)]
    if posture.firmware < req.min_firmware:
        return [Shortfall("firmware_below_minimum", f"firmware {posture.firmware} < {req.min_firmware}")]
    return []


def _patch(posture: Posture, req: PostureRequirement, today: date) -> list[Shortfall]:
    if req.min_patch_level is None and req.max_patch_age_days is None:
        return []
    level = posture.patch_level
    if level is None:
        said = posture.raw.get("patch_level")
        detail = (
            f"patch level {said!r} is not YYYY-MM[-DD]" if said is not None else "patch level not reported"
        )
        return [Shortfall("patch_level_unknown", detail)]
    if (level.day - today).days > 31:  # a patch from the future is a made-up report, not a fast vendor
        return [Shortfall("patch_level_in_future", f"patch level {level.text} is after {today.isoformat()}")]
    gaps = []
    if req.min_patch_level is not None and level < req.min_patch_level:
        gaps.append(
            Shortfall("patch_level_below_minimum", f"patch level {level.text} < {req.min_patch_level.text}")
        )
    age = (today - level.day).days
    if req.max_patch_age_days is not None and age > req.max_patch_age_days:
        gaps.append(Shortfall("patch_level_too_old", f"patch level {level.text} is {age} days old"))
    return gaps


# ----------------------------------------------------------------------------------------- policy

_ROLES = ("unit",)  # only units report posture today; a role added here needs a reporting path
_FIELDS = frozenset(
    {
        "min_firmware",
        "min_patch_level",
        "max_patch_age_days",
        "require_secure_boot",
        "below_minimum",
        "when_unknown",
    }
)


def parse_posture_policy(value: Any, source: str, path: str = "posture") -> Mapping[str, PostureRequirement]:
    """The `posture` section: minimums by role. Absent means no posture requirement at all."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise PolicyError(source, path, f"must be a mapping of roles, not {type(value).__name__}")
    out: dict[str, PostureRequirement] = {}
    for role, body in value.items():
        where = f"{path}.{role}"
        if role not in _ROLES:
            raise PolicyError(
                source, path, f"unknown role {role!r}; posture is reported by: {', '.join(_ROLES)}"
            )
        if not isinstance(body, dict):
            raise PolicyError(source, where, f"must be a mapping, not {type(body).__name__}")
        At(source, where).mapping(body, allowed=_FIELDS)
        out[role] = _requirement(source, where, role, body)
    return MappingProxyType(out)


def _requirement(source: str, where: str, role: str, body: Mapping[str, Any]) -> PostureRequirement:
    def fail(key: str, problem: str) -> PolicyError:
        return PolicyError(source, f"{where}.{key}", problem)

    firmware = body.get("min_firmware")
    version = parse_version(str(firmware)) if isinstance(firmware, str) else None
    if firmware is not None and version is None:
        raise fail("min_firmware", f'{firmware!r} is not a version; quote it, as in "2.4.0"')
    patch = body.get("min_patch_level")
    level = parse_patch_level(patch) if isinstance(patch, str) else None
    if patch is not None and level is None:
        raise fail("min_patch_level", f'{patch!r} is not a patch level; quote it, as in "2026-06"')
    age = body.get("max_patch_age_days")
    if age is not None and (not isinstance(age, int) or isinstance(age, bool) or age <= 0):
        raise fail("max_patch_age_days", f"must be a positive whole number of days, not {age!r}")
    boot = body.get("require_secure_boot", False)
    if not isinstance(boot, bool):
        raise fail("require_secure_boot", f"must be true or false, not {boot!r}")
    below = body.get("below_minimum", "restricted")
    if below not in _ACTIONS:
        raise fail("below_minimum", f"must be one of {', '.join(_ACTIONS)}, not {below!r}")
    unknown = body.get("when_unknown", "restricted")
    if unknown not in _UNKNOWN_ACTIONS:
        raise fail("when_unknown", f"must be one of {', '.join(_UNKNOWN_ACTIONS)}, not {unknown!r}")
    if version is None and level is None and age is None and not boot:
        raise PolicyError(
            source, where, "sets no minimum; remove it or set min_firmware, min_patch_level, ..."
        )
    return PostureRequirement(role, version, level, age, boot, below, unknown)
