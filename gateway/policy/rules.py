"""policy.yaml: the model, building it from the parsed file with one-sentence errors, and the proofs.

A policy is data: for each role a list of grant *templates* (topic filters with placeholders such as
`{id}`), rate and size limits, the safety-critical control namespace, and a quarantine profile. Building
one is strict: an unknown key, a wrong type, an invalid filter or an unknown placeholder fails with a
`PolicyError` naming the file, the key path (`roles.unit.publish[2]`) and what is wrong, because a typo
in an access policy silently granting or denying something is worse than a gateway that will not start.
`policy_from_mapping` takes the already parsed YAML; reading the file (or the embedded default) is
gateway/stores/policy_file.py's `load_policy`.

After the shape come the checks (the last section of this module), run on every load:

- quarantine ∩ control namespace = ∅, for every pair of filters, with a witness topic when it fails;
- lint: unit grants stay inside `fleet/{id}/#`, no `$` grants to non-operators, no publish grant
  that names only the gateway's mode command, quarantine only restricts, with views configured
  partners are granted views only, and the publish_rate detector fires only above the rates the roles
  it watches permit. Lint *errors* fail loading; *warnings* are shown by `fleetgate policy check`.

Sections: `_SECTIONS` maps each top-level key parsed here to its parser, which returns `Policy` fields.
`detectors:` is parsed in detector_rules.py; the four context sections (data_classes, views, posture,
second_factor) are parsed together by data_classes.py into `Policy.context`. Extending: add a parser to
`_SECTIONS` and a field to `Policy`; the strictness about unknown keys comes for free. Every parser
builds on schema.py (`At`, `PolicyError`), which imports nothing from the gateway, so this module imports
the section parsers and none of them imports it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.topics import (
    SHARE_PREFIX,
    filter_covers,
    filters_intersect,
    topic_matches,
    validate_topic_filter,
)
from gateway.policy.access import MODE_COMMAND_FILTER
from gateway.policy.data_classes import (
    CONTEXT_SECTIONS,
    ContextPolicy,
    parse_context_sections,
    partner_grant_problems,
)
from gateway.policy.detector_rules import DetectorSettings, parse_detectors
from gateway.policy.schema import At, PolicyError, kind, positive
from pki.names import IdentityError, validate_id

__all__ = [
    "OPERATOR_ROLES",
    "READ_ONLY_ROLES",
    "Grant",
    "Limits",
    "LintFinding",
    "Overlap",
    "Policy",
    "PolicyError",  # defined in schema.py; policy_from_mapping raises it
    "Profile",
    "example_topic",
    "lint_policy",
    "policy_from_mapping",
    "prove_quarantine_disjoint",
    "quarantine_pairs",
    "substitute",
]

# The admin roles of operators (`fleetgate operator add NAME --role ...`, kept in the registry). The
# admin API gives each its rights (gateway/admin/auth.py); on MQTT each is a profile under
# roles.operator. An auditor only reads: the loader refuses a publish grant for it. `metrics` (a
# Prometheus scraper) and `integrator` (a provisioning backend) work through HTTPS only: they have no
# MQTT profile, so they are granted nothing there unless the policy gives them one (subscriptions only).
OPERATOR_ROLES = ("ops", "security", "auditor", "metrics", "integrator")
READ_ONLY_ROLES = frozenset({"auditor", "metrics", "integrator"})

_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_TIER_KEY = re.compile(r"tier([1-9][0-9]?)")  # fullmatch: no trailing newline
# Placeholders each part of the file may use. `{unit}` names "any unit" and exists only in the control
# namespace; grants speak about the identity holding them, as `{id}` (`{partner}` is its alias).
_ROLE_PLACEHOLDERS = frozenset({"{id}"})
_PARTNER_PLACEHOLDERS = frozenset({"{id}", "{partner}", "{tier}"})
_CONTROL_PLACEHOLDERS = frozenset({"{unit}"})


# ------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Grant:
    rule: str  # stable id shown in decisions, e.g. "unit/publish/0"
    template: str  # the filter as written, e.g. "fleet/{id}/telemetry/#"
    path: str  # where it is written, e.g. "roles.unit.publish[0]"

    @property
    def wildcarded(self) -> str:
        """Every placeholder replaced by `+`: the template as the set of all its substitutions."""
        return _PLACEHOLDER.sub("+", self.template)


@dataclass(frozen=True, slots=True)
class Limits:
    messages_per_second: float | None = None  # None: not limited by the policy
    burst: float | None = None  # default: one second's worth (at least 1)
    bytes_per_second: float | None = None
    bytes_burst: float | None = None  # default: max(bytes_per_second, max_payload)
    max_payload: int | None = None
    max_subscriptions: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str  # the rule prefix: "unit", "service/dispatch", "partner/tier2", "quarantine/unit"
    path: str  # the key path it was read from, e.g. "roles.partner.tier2"
    publish: tuple[Grant, ...] = ()
    subscribe: tuple[Grant, ...] = ()
    limits: Limits = Limits()
    defined: bool = True  # False: a stand-in for a service or tier the policy does not list
    # `$share` group names every identity of this profile shares with the others; any other group
    # name is shared only among one identity's own subscriptions (PolicyEngine.share_scope).
    share_groups: tuple[str, ...] = ()

    def grants(self) -> Iterator[Grant]:
        yield from self.publish
        yield from self.subscribe


@dataclass(frozen=True, eq=False)
class Policy:
    source: str
    version: int
    control_namespace: tuple[Grant, ...]
    unit: Profile
    operators: Mapping[str, Profile]  # by admin role (OPERATOR_ROLES), from the operator's registry record
    services: Mapping[str, Profile]  # by service name (the service identity's id)
    partner_tiers: Mapping[int, Profile]  # by tier number
    quarantine: Mapping[str, Profile]  # by identity kind; only "unit" today
    max_denied_before_disconnect: int = 20
    detectors: DetectorSettings = field(default_factory=DetectorSettings)
    # The context sections: data classes, partner views, device posture, operator second factor.
    context: ContextPolicy = field(default_factory=ContextPolicy)
    digest: str = ""  # sha256 over the parsed content, to tell policies apart in logs and summaries
    _by_rule: dict[str, Grant] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_rule.update({g.rule: g for p in self.profiles() for g in p.grants()})
        self._by_rule.update({g.rule: g for g in self.control_namespace})

    def profiles(self) -> Iterator[Profile]:
        """Every role and quarantine profile, in file order."""
        yield self.unit
        yield from self.operators.values()
        yield from self.services.values()
        yield from self.partner_tiers.values()
        yield from self.quarantine.values()

    def profile_for(self, kind: str, ident: str, tier: int | None, role: str | None = None) -> Profile:
        """The normal profile of an identity; an empty stand-in (deny everything) when none is listed.

        An operator's profile is its admin role's (`role`, from its registry record, never from the
        client); an operator without a role, or with one the policy does not list, is granted nothing.
        """
        if kind == "unit":
            return self.unit
        if kind == "operator":
            name = role if role in OPERATOR_ROLES else "none"
            return self.operators.get(name) or Profile(
                f"operator/{name}", f"roles.operator.{name}", defined=False
            )
        if kind == "service":
            return self.services.get(ident) or Profile(
                f"service/{ident}", f"roles.service.{ident}", defined=False
            )
        if kind == "partner" and tier is not None:
            name = f"partner/tier{tier}"
            return self.partner_tiers.get(tier) or Profile(name, f"roles.partner.tier{tier}", defined=False)
        return Profile(kind, f"roles.{kind}", defined=False)

    def quarantine_profile(self, kind: str) -> Profile:
        return self.quarantine.get(kind) or Profile(f"quarantine/{kind}", f"quarantine.{kind}", defined=False)

    def grant(self, rule: str) -> Grant | None:
        return self._by_rule.get(rule)


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Fill placeholders (`{"{id}": "TRK-1"}`); ids cannot contain `/`, `+`, `#`, so levels stay levels."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), template)


# ---------------------------------------------------------------------------------------- building


def policy_from_mapping(data: Any, source: str) -> Policy:
    """Build a Policy from parsed YAML; raises PolicyError for shape errors, overlaps and lint errors."""
    at = At(source, "")
    top = at.mapping(data, allowed=_TOP_LEVEL_KEYS, required=("version", "control_namespace", "roles"))
    parts: dict[str, Any] = {}
    for key, parse in _SECTIONS.items():
        parts.update(parse(at.key(key), top.get(key)))
    parts["context"] = parse_context_sections(top, source)  # after _SECTIONS, as one (see _TOP_LEVEL_KEYS)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    policy = Policy(source=source, digest=digest, **parts)
    enforce(policy)
    return policy


# --------------------------------------------------------------------------------- section parsers


def _parse_version(at: At, value: Any) -> dict[str, Any]:
    if value != 1 or isinstance(value, bool):
        at.fail(f"must be 1 (the only policy format there is), not {value!r}")
    return {"version": 1}


def _parse_control(at: At, value: Any) -> dict[str, Any]:
    if not isinstance(value, list) or not value:
        at.fail(f"must be a non-empty list of topic filters, not {kind(value)}")
    grants = []
    for i, item in enumerate(value):
        grants.append(
            Grant(f"control/{i}", _filter(at.index(i), item, _CONTROL_PLACEHOLDERS), at.index(i).path)
        )
        levels = item.split("/")
        if "{unit}" in levels[:1] + levels[2:]:
            at.index(i).fail("{unit} may only be the second level, the unit id, as in fleet/{unit}/control/#")
    return {"control_namespace": tuple(grants)}


def _parse_roles(at: At, value: Any) -> dict[str, Any]:
    roles = at.mapping(value, allowed=frozenset({"unit", "operator", "service", "partner"}))
    services = at.key("service").names(roles.get("service", {}))
    tiers = at.key("partner").names(roles.get("partner", {}))
    operators = _operator_roles(at.key("operator"), roles.get("operator", {}))
    return {
        "unit": _profile(at.key("unit"), roles.get("unit", {}), "unit", _ROLE_PLACEHOLDERS),
        "operators": {
            role: _profile(at.key("operator").key(role), body, f"operator/{role}", _ROLE_PLACEHOLDERS)
            for role, body in operators.items()
        },
        "services": {
            name: _service(at.key("service").key(str(name)), name, body) for name, body in services.items()
        },
        "partner_tiers": dict(
            _tier(at.key("partner").key(str(name)), name, body) for name, body in tiers.items()
        ),
    }


def _operator_roles(at: At, value: Any) -> dict[str, Any]:
    """roles.operator: one profile per admin role; a role not listed is granted nothing on MQTT."""
    body = at.names(value)
    roles = ", ".join(OPERATOR_ROLES)
    for key in body:
        if key not in OPERATOR_ROLES:
            # The shape before roles had publish/subscribe/limits straight under roles.operator.
            hint = (
                " (grants now go under a role, e.g. roles.operator.ops.publish)"
                if key in _PROFILE_KEYS
                else ""
            )
            at.fail(f"{key!r} is not an admin role; operators are granted by role: {roles}{hint}")
    return body


def _service(at: At, name: Any, body: Any) -> Profile:
    try:
        validate_id("service", str(name))
    except IdentityError as exc:
        at.fail(f"is not a service name: {exc}")
    return _profile(at, body, f"service/{name}", _ROLE_PLACEHOLDERS)


def _tier(at: At, name: Any, body: Any) -> tuple[int, Profile]:
    match = _TIER_KEY.fullmatch(str(name))
    if match is None:
        at.fail("partner tiers are named tier1, tier2, ... (tier<N>, N from 1 to 99)")
    return int(match.group(1)), _profile(at, body, f"partner/{name}", _PARTNER_PLACEHOLDERS)


def _parse_quarantine(at: At, value: Any) -> dict[str, Any]:
    body = at.mapping(value if value is not None else {}, allowed=frozenset({"unit"}))
    profiles = {}
    if "unit" in body:
        fields = at.key("unit").mapping(body["unit"], allowed=frozenset({"publish"}), required=("publish",))
        profiles["unit"] = _profile(at.key("unit"), fields, "quarantine/unit", _ROLE_PLACEHOLDERS)
    return {"quarantine": profiles}


def _parse_violations(at: At, value: Any) -> dict[str, Any]:
    body = at.mapping(value if value is not None else {}, allowed=frozenset({"max_denied_before_disconnect"}))
    limit = body.get("max_denied_before_disconnect", 20)
    return {
        "max_denied_before_disconnect": positive(at.key("max_denied_before_disconnect"), limit, whole=True)
    }


def _parse_detectors(at: At, value: Any) -> dict[str, Any]:
    return {"detectors": parse_detectors(at, value)}


_PROFILE_KEYS = frozenset({"publish", "subscribe", "limits", "share_groups"})
_SHARE_NAME = re.compile(r"^[^/+#\x00]+$")  # MQTT 5 §4.8.2: no "/", "+" or "#" in a share name
_LIMIT_KEYS = {f: f in ("max_payload", "max_subscriptions") for f in Limits.__dataclass_fields__}


def _profile(at: At, value: Any, name: str, placeholders: frozenset[str]) -> Profile:
    body = at.mapping(value if value is not None else {}, allowed=_PROFILE_KEYS)
    grants: dict[str, tuple[Grant, ...]] = {}
    for action in ("publish", "subscribe"):
        items = body.get(action, [])
        if not isinstance(items, list):
            at.key(action).fail(f"must be a list of topic filters, not {kind(items)}")
        grants[action] = tuple(
            Grant(
                f"{name}/{action}/{i}",
                _filter(at.key(action).index(i), item, placeholders),
                at.key(action).index(i).path,
            )
            for i, item in enumerate(items)
        )
    return Profile(
        name,
        at.path,
        grants["publish"],
        grants["subscribe"],
        _limits(at.key("limits"), body.get("limits")),
        share_groups=_share_groups(at.key("share_groups"), body.get("share_groups")),
    )


def _share_groups(at: At, value: Any) -> tuple[str, ...]:
    names = at.strings(value if value is not None else [], "share group names")
    for i, name in enumerate(names):
        if not _SHARE_NAME.match(name):
            at.index(i).fail(
                f"{name!r} is not a share group name: one or more characters, no '/', '+' or '#'"
            )
    return tuple(dict.fromkeys(names))


def _limits(at: At, value: Any) -> Limits:
    body = at.mapping(value if value is not None else {}, allowed=frozenset(_LIMIT_KEYS))
    values = {key: positive(at.key(key), raw, whole=_LIMIT_KEYS[key]) for key, raw in body.items()}
    for extra, base in (("burst", "messages_per_second"), ("bytes_burst", "bytes_per_second")):
        if extra in values and base not in values:
            at.key(extra).fail(f"needs {base} beside it: a burst is the capacity of that rate's bucket")
    return Limits(**values)


def _filter(at: At, value: Any, placeholders: frozenset[str]) -> str:
    if not isinstance(value, str):
        at.fail(f"must be a topic filter string, not {kind(value)}")
    if value.startswith(SHARE_PREFIX):
        at.fail(f"{value!r} is a shared subscription; grant the plain filter (shares are judged on it)")
    for level in value.split("/"):
        for found in _PLACEHOLDER.findall(level):
            if found not in placeholders:
                at.fail(f"{found} is not a placeholder here; use {' or '.join(sorted(placeholders))}")
            if found != level:
                at.fail(f"placeholder {found} must be a whole topic level, as in fleet/{found}/state")
        if "{" in _PLACEHOLDER.sub("", level) or "}" in _PLACEHOLDER.sub("", level):
            at.fail(f"{value!r} has an unmatched brace; placeholders are written like {{id}}")
    try:
        validate_topic_filter(_PLACEHOLDER.sub("+", value))
    except TopicFilterInvalid as exc:
        at.fail(f"{value!r} is not a valid topic filter: {exc}")
    return value


# Top-level sections in file order, each parsed on its own; each parser returns Policy fields.
_SECTIONS: dict[str, Callable[[At, Any], dict[str, Any]]] = {
    "version": _parse_version,
    "control_namespace": _parse_control,
    "roles": _parse_roles,
    "quarantine": _parse_quarantine,
    "violations": _parse_violations,
    "detectors": _parse_detectors,
}
# Every top-level key a policy may have; any other fails. The context sections (data_classes, views,
# posture, second_factor) are not in _SECTIONS because they are parsed as one, views referring to data
# classes: policy_from_mapping hands the whole mapping to data_classes.parse_context_sections.
_TOP_LEVEL_KEYS = frozenset({*_SECTIONS, *CONTEXT_SECTIONS})


# ------------------------------------------------------------------------------------------ checks
#
# Placeholders are replaced by "+" before asking whether two filters meet: that stands for every
# possible substitution at once, so "disjoint" holds for every identity (a proof), while an overlap may
# be one only some identity would hit (still refused: the promise is "could match"). Same-identity
# questions (does a unit grant stay inside fleet/{id}/#?) keep "{id}" as literal text on both sides,
# which is exact because both sides are filled with the same id.

UNIT_NAMESPACE = "fleet/{id}/#"
_PARTNER_SENSITIVE = ("fleet/+/diag/#", "fleet/+/cmd/#", "fleet/+/control/#")
_EVERYTHING = "+/#"  # every topic outside the gateway's $-space


@dataclass(frozen=True, slots=True)
class Overlap:
    quarantine: Grant
    control: Grant
    witness: str  # a topic both filters match

    def sentence(self) -> str:
        return (
            f"quarantine filter {self.quarantine.template!r} overlaps control filter "
            f"{self.control.template!r} ({self.control.path}); both match {self.witness!r}, and quarantine "
            "must never touch a vehicle-control topic: narrow it, e.g. to fleet/{id}/diag/#"
        )


@dataclass(frozen=True, slots=True)
class LintFinding:
    severity: str  # "error" fails loading; "warning" is reported by `fleetgate policy check`
    path: str
    message: str


def quarantine_pairs(policy: Policy) -> list[tuple[Grant, Grant]]:
    """Every (quarantine filter, control filter) pair the disjointness proof examines."""
    quarantined = [g for p in policy.quarantine.values() for g in p.grants()]
    return [(q, c) for q in quarantined for c in policy.control_namespace]


def prove_quarantine_disjoint(policy: Policy) -> list[Overlap]:
    """The pairs whose filters share at least one topic; empty means quarantine ∩ control = ∅."""
    overlaps = []
    for q, c in quarantine_pairs(policy):
        a, b = q.wildcarded, c.wildcarded
        if filters_intersect(a, b):
            overlaps.append(Overlap(q, c, example_topic(a, b) or "(none found)"))
    return overlaps


def example_topic(a: str, b: str, filler: str = "x") -> str | None:
    """A topic name both plain filters match (a witness), or None when they are disjoint.

    Per level a literal from either filter wins, otherwise `filler`; lengths from the longer filter's
    fixed levels up, because a trailing `#` also matches its parent. Each candidate is checked with
    `topic_matches`, so a wrong guess can only make this return None, never a false witness.
    """
    if not filters_intersect(a, b):
        return None
    fixed = [f.split("/")[:-1] if f.endswith("#") else f.split("/") for f in (a, b)]
    open_ended = [f == "#" or f.endswith("/#") for f in (a, b)]
    shortest = max(1, *(len(levels) for levels in fixed))
    for n in range(shortest, shortest + 2):
        if not all(multi or len(levels) == n for levels, multi in zip(fixed, open_ended, strict=True)):
            continue
        topic = "/".join(_witness_level(fixed, i, filler) for i in range(n))
        if topic and topic_matches(a, topic) and topic_matches(b, topic):
            return topic
    return None


def _witness_level(fixed: list[list[str]], i: int, filler: str) -> str:
    literals = [levels[i] for levels in fixed if i < len(levels) and levels[i] != "+"]
    return literals[0] if literals else filler


def lint_policy(policy: Policy) -> list[LintFinding]:
    """Errors (loading fails) and warnings (shown by `policy check`), in a stable order."""
    return [finding for lint in _LINTS for finding in lint(policy)]


def _unit_escapes(policy: Policy) -> Iterator[LintFinding]:
    for grant in (*policy.unit.grants(), *policy.quarantine_profile("unit").grants()):
        if not filter_covers(UNIT_NAMESPACE, grant.template):
            yield LintFinding(
                "error",
                grant.path,
                f"{grant.template!r} reaches outside the unit's own namespace {UNIT_NAMESPACE}; "
                "a unit may only be granted fleet/{id}/... topics",
            )


def _dollar_grants(policy: Policy) -> Iterator[LintFinding]:
    for grant in policy.control_namespace:
        if grant.template.startswith("$"):
            yield LintFinding(
                "error", grant.path, "the control namespace cannot be a $-topic (the gateway's own)"
            )
    for profile in policy.profiles():
        for grant in profile.grants():
            if not grant.template.startswith("$"):
                continue
            if not profile.name.startswith("operator/"):
                message = (
                    f"{grant.template!r} is a $-topic, the gateway's own; only operators may be granted one"
                )
                yield LintFinding("error", grant.path, message)
            elif grant in profile.publish:
                message = f"{grant.template!r} never takes effect: nobody publishes $-topics but the gateway"
                yield LintFinding("warning", grant.path, message)


def _read_only_roles(policy: Policy) -> Iterator[LintFinding]:
    for role in sorted(READ_ONLY_ROLES):
        profile = policy.operators.get(role)
        for grant in profile.publish if profile is not None else ():
            message = (
                f"an {role} only reads: it may be granted subscriptions, never a publish ({grant.template!r})"
            )
            yield LintFinding("error", grant.path, message)


def _gateway_only_grants(policy: Policy) -> Iterator[LintFinding]:
    """A publish grant that names nothing but the mode command would never take effect: the engine's
    built-in rule denies every client publish there. Broader grants (fleet/+/cmd/#) stay valid for
    their other topics; the built-in rule wins on the mode command itself."""
    for profile in policy.profiles():
        for grant in profile.publish:
            if filter_covers(MODE_COMMAND_FILTER, grant.wildcarded):
                message = (
                    f"{grant.template!r} only names fleet/{{unit}}/cmd/mode, the gateway's own mode command, "
                    "which no client may publish; remove it"
                )
                yield LintFinding("error", grant.path, message)


def _quarantine_restricts(policy: Policy) -> Iterator[LintFinding]:
    for grant in policy.quarantine_profile("unit").publish:
        if not any(filter_covers(normal.template, grant.template) for normal in policy.unit.publish):
            yield LintFinding(
                "error",
                grant.path,
                f"{grant.template!r} is not within any roles.unit.publish grant; quarantine may only narrow "
                "what a unit may publish, never add to it",
            )


def _broad_grants(policy: Policy) -> Iterator[LintFinding]:
    for profile in policy.profiles():
        for grant in profile.grants():
            if filter_covers(grant.template, _EVERYTHING):
                message = f"{grant.template!r} matches every topic; grant {profile.name} only what it needs"
                yield LintFinding("warning", grant.path, message)


def _partner_sensitive(policy: Policy) -> Iterator[LintFinding]:
    for profile in policy.partner_tiers.values():
        for grant in profile.subscribe:
            reached = [s.split("/")[2] for s in _PARTNER_SENSITIVE if filters_intersect(grant.wildcarded, s)]
            if reached:
                seen = "/".join(reached)
                message = f"{grant.template!r} lets partners see {seen} topics, beyond telemetry"
                yield LintFinding("warning", grant.path, message)


def _partner_views_only(policy: Policy) -> Iterator[LintFinding]:
    """With views configured, partners see unit data only through them: a raw grant is an error."""
    views = policy.context.views
    if views is None:
        return
    for tier, profile in policy.partner_tiers.items():
        for grant in profile.subscribe:
            for problem in partner_grant_problems(views, tier, [grant.template]):
                severity = "error" if "reaches" in problem else "warning"
                yield LintFinding(severity, grant.path, problem)


def _limit_sanity(policy: Policy) -> Iterator[LintFinding]:
    for profile in policy.profiles():
        limits, at = profile.limits, f"{profile.path}.limits"
        if limits.burst is not None and limits.burst < 1:
            yield LintFinding("error", f"{at}.burst", "must be at least 1, or no message could ever be sent")
        if (
            limits.bytes_burst is not None
            and limits.max_payload is not None
            and limits.bytes_burst < limits.max_payload
        ):
            message = "is below max_payload, so a maximum-size message could never be published"
            yield LintFinding("warning", f"{at}.bytes_burst", message)


def _profiles_of_kinds(policy: Policy, kinds: frozenset[str]) -> Iterator[Profile]:
    if "unit" in kinds:
        yield policy.unit
    if "operator" in kinds:
        yield from policy.operators.values()
    if "service" in kinds:
        yield from policy.services.values()
    if "partner" in kinds:
        yield from policy.partner_tiers.values()


def _rate_detector_above_role_rates(policy: Policy) -> Iterator[LintFinding]:
    """The publish_rate detector must not fire on traffic the role's rate limit permits.

    A profile with `messages_per_second` R and `burst` B lets through at most B + R·W messages in
    any window of W seconds. A detector bar at or below R fires on an identity sending steadily at
    the rate its role grants: the policy would grant a rate and contain units for using it. That is
    an *error* when the ladder does more than alert — it would throttle or quarantine a unit in good
    standing, much as the quarantine/control proof refuses a policy that contradicts itself — and a
    warning when it only alerts (noise, not harm: an early warning below the limit can be a choice).
    A bar above R but at or below R + B/W fires only on an identity that spends its whole burst on
    top of that rate within one window: allowed, but warned, since the burst exists for units that
    catch up after a coverage gap.
    """
    rate = policy.detectors.publish_rate
    if not rate.enabled:
        return
    at = "detectors.publish_rate.min_per_second"
    acts = [step for step in rate.plan.respond if step != "alert"]
    for profile in _profiles_of_kinds(policy, rate.kinds):
        sustained = profile.limits.messages_per_second
        if sustained is None:
            continue  # no rate to compare with: the detector is the only bar
        burst = profile.limits.burst if profile.limits.burst is not None else max(1.0, sustained)
        most = sustained + burst / rate.window
        limit = f"{profile.path}.limits.messages_per_second"
        if rate.min_per_second <= sustained:
            consequence = f"and {'/'.join(acts)} it" if acts else "and alert on it"
            yield LintFinding(
                "error" if acts else "warning",
                at,
                f"{rate.min_per_second:g}/s is not above {limit} ({sustained:g}/s): the detector would "
                f"fire on a {profile.name} publishing at the rate its role permits {consequence}; "
                f"set it above {sustained:g}/s (above {most:g}/s to spare a full burst too)",
            )
        elif rate.min_per_second <= most:
            yield LintFinding(
                "warning",
                at,
                f"{rate.min_per_second:g}/s fires on a {profile.name} that spends its burst ({burst:g}) on "
                f"top of its permitted {sustained:g}/s within one {rate.window:g} s window ({most:g}/s); "
                f"set it above {most:g}/s so that only traffic the rate limit refuses can fire",
            )


_LINTS: tuple[Callable[[Policy], Iterator[LintFinding]], ...] = (
    _unit_escapes,
    _dollar_grants,
    _read_only_roles,
    _gateway_only_grants,
    _quarantine_restricts,
    _broad_grants,
    _partner_sensitive,
    _partner_views_only,
    _limit_sanity,
    _rate_detector_above_role_rates,
)


def enforce(policy: Policy) -> None:
    """Refuse a policy whose quarantine could touch control, or that has a lint error."""
    overlaps = prove_quarantine_disjoint(policy)
    if overlaps:
        raise PolicyError(policy.source, overlaps[0].quarantine.path, overlaps[0].sentence())
    for finding in lint_policy(policy):
        if finding.severity == "error":
            raise PolicyError(policy.source, finding.path, finding.message)
