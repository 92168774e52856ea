"""Data classes and partner views: the `data_classes` and `views` sections of policy.yaml.

A *data class* names what a piece of telemetry is about (`pii`, `commercial`, `location`, ...) by the
payload fields that carry it and, optionally, by whole topics. A *view* is what a partner tier may see
of a unit message: the gateway republishes each source message (`fleet/{unit}/telemetry/{stream}`) to
`views/{tier}/fleet/{unit}/{stream}` keeping only the fields of the tier's classes
(see gateway/context/views.py).

Decisions taken here, each the safe one:

- Views are an allow-list, at every depth. A field that no class lists is *unclassified* and dropped
  from every view, unless a tier lists the pseudo-class `unclassified` (meant for trusted tiers only).
- Fields are dotted paths from the top of the JSON object (`driver.name`); arrays do not count as a
  level (`stops.eta` is the `eta` of every object in the array `stops`). A path's class covers the
  *scalars* there (strings, numbers, booleans, null) and arrays of them, never an object as a whole:
  an object found at a path is walked with the same rules, so each key inside it is kept only if its
  own path is classified (`status.state`) — paths may nest for that, each claimed by one class only.
  A key that only leads to classified paths (`driver` when only `driver.name` is listed) carries no
  class itself: a scalar there is dropped from every view.
- A class with `names_anywhere: true` (the default for the class named `pii`) is also a deny-list
  backstop: the last key of each of its paths (`driver_phone`, and `phone` of `driver.phone`) is
  dropped wherever it appears, at any depth and whatever path leads there, from every tier without
  the class (keys compared case-insensitively, ignoring `_` and `-`). No other class may list a path
  ending in such a name, so the backstop never silently removes a field a tier was promised.
- A topic listed under a class makes every message on it carry that class as a whole: a tier without
  the class gets no view of that topic at all.
- The view namespace must be outside `fleet/` and disjoint from every source, so a partner grant on
  views can never reach a raw unit topic and a republished view can never be projected again.

- A tier pseudonymises unit ids unless it says `pseudonymise_units: false`.

Each parser takes the raw YAML value of its section and returns frozen values or raises `PolicyError`;
`parse_context_sections` parses the four context sections into one `ContextPolicy` for `Policy.context`:
`data_classes` and `views` with the parsers here, `posture` and `second_factor` with those in posture.py
and second_factor.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.topics import filters_intersect, topic_matches, validate_topic_filter
from gateway.policy.posture import PostureRequirement, parse_posture_policy
from gateway.policy.schema import At, boolean, kind
from gateway.policy.second_factor import SecondFactorPolicy, parse_second_factor

__all__ = [
    "CONTEXT_SECTIONS",
    "DEFAULT_UNIT_SHARE",
    "LEAF",
    "MAX_DEPTH",
    "NO_DATA_CLASSES",
    "PII",
    "UNCLASSIFIED",
    "ContextPolicy",
    "DataClass",
    "DataClasses",
    "FieldNode",
    "ViewPolicy",
    "ViewTier",
    "normal_key",
    "parse_context_sections",
    "parse_data_classes",
    "parse_views",
    "partner_grant_problems",
]

UNCLASSIFIED = "unclassified"
# One unit may take at most this share of its tier's view rate by default (`unit_share` per tier): a
# chatty unit cannot starve the tier (gateway/context/partner_views.py).
DEFAULT_UNIT_SHARE = 0.1
MAX_DEPTH = 64  # as deep as views walk a payload (gateway/context/views.py)
CONTEXT_SECTIONS = ("data_classes", "views", "posture", "second_factor")  # top-level keys parsed here
# Used with fullmatch: `$` would also match before a trailing newline.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_FIELD = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_TIER = re.compile(r"(?:tier)?([1-9][0-9]?)")


PII = "pii"  # the class whose field names are a backstop at any depth unless it says otherwise


@dataclass(frozen=True, slots=True)
class DataClass:
    name: str
    fields: tuple[str, ...]  # dotted paths
    topics: tuple[str, ...]  # topic templates; placeholders such as {unit} stand for one level
    coarsen_to: Decimal | None = None  # grid for numeric values when a tier coarsens this class
    names_anywhere: bool = False  # the last keys of its paths are denied at any depth (see above)

    @property
    def anywhere_names(self) -> frozenset[str]:
        """The normalised key names this class denies at any depth to tiers without it."""
        if not self.names_anywhere:
            return frozenset()
        return frozenset(normal_key(path.rsplit(".", 1)[-1]) for path in self.fields)


@lru_cache(maxsize=4096)
def normal_key(name: str) -> str:
    """A key as the backstop compares it: case-folded, without `_`, `-` or other non-alphanumerics."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


@dataclass(frozen=True, slots=True)
class FieldNode:
    """One level of the field tree: the class of the scalars at this path (None: none) and the
    classified paths below it (keys of an object found here)."""

    cls: str | None
    children: Mapping[str, FieldNode]


LEAF = FieldNode(None, MappingProxyType({}))  # below an unclassified key: nothing is classified


@dataclass(frozen=True, slots=True)
class DataClasses:
    classes: Mapping[str, DataClass]
    tree: FieldNode  # the root: top-level payload keys

    def topic_classes(self, topic: str) -> frozenset[str]:
        """The classes a whole message carries because of its topic."""
        return frozenset(
            c.name for c in self.classes.values() if any(_template_matches(t, topic) for t in c.topics)
        )

    def classes_of(self, topic: str, obj: Mapping[str, Any] | None) -> frozenset[str]:
        """Every class present in a message (topic classes + fields present); `unclassified` if any."""
        found = set(self.topic_classes(topic))
        if obj is not None:
            anywhere = {name: c.name for c in self.classes.values() for name in c.anywhere_names}
            _collect_classes(obj, self.tree, found, anywhere)
        return frozenset(found)

    def classify(self, topic: str, payload: bytes) -> frozenset[str]:
        """`classes_of` for raw bytes (once per PUBLISH, for the flow map); non-JSON: topic classes only."""
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            obj = None
        return self.classes_of(topic, obj if isinstance(obj, dict) else None)


@dataclass(frozen=True, slots=True)
class ViewTier:
    tier: int
    classes: frozenset[str]  # may include UNCLASSIFIED
    coarsen: frozenset[str]  # classes whose numeric values are floored to their class grid
    pseudonymise_units: bool
    denied_names: frozenset[str] = frozenset()  # normal_key names dropped at any depth (the backstop)
    unit_share: float = DEFAULT_UNIT_SHARE  # one unit's share of the tier's view rate (partner_views)


@dataclass(frozen=True, slots=True)
class ViewPolicy:
    topic: str  # e.g. "views/{tier}/fleet/{unit}/{stream}"
    sources: tuple[str, ...]  # e.g. ("fleet/{unit}/telemetry/{stream}",)
    tiers: Mapping[int, ViewTier]
    data_classes: DataClasses

    @property
    def namespace_filter(self) -> str:
        """The view topics as one filter, e.g. `views/+/fleet/+/+`, for grants and proofs."""
        return _wildcarded(self.topic)


NO_DATA_CLASSES = DataClasses(MappingProxyType({}), FieldNode(None, MappingProxyType({})))


def partner_grant_problems(views: ViewPolicy, tier: int, templates: Iterable[str]) -> list[str]:
    """Why a tier's subscribe grants break "partners see views only" (empty: they keep to their views).

    Placeholders other than {tier} stand for any value, so a problem found holds for some partner.
    """
    own = _wildcarded(views.topic.replace("{tier}", str(tier)))
    problems = []
    for template in templates:
        grant = _wildcarded(template.replace("{tier}", str(tier)))
        raw = [src for src in views.sources if filters_intersect(grant, _wildcarded(src))]
        if raw:
            problems.append(f"{template!r} reaches raw unit topics ({raw[0]}); grant {own} instead")
        others = [t for t in views.tiers if t != tier and _other_tier(views, grant, t)]
        if others:
            problems.append(f"{template!r} reaches the views of tier {others[0]}")
        if not raw and not others and not filters_intersect(grant, own):
            problems.append(f"{template!r} is outside this tier's views ({own})")
    return problems


def _other_tier(views: ViewPolicy, grant: str, tier: int) -> bool:
    return filters_intersect(grant, _wildcarded(views.topic.replace("{tier}", str(tier))))


def _collect_classes(
    obj: Mapping[str, Any], node: FieldNode, found: set[str], anywhere: Mapping[str, str], depth: int = 0
) -> None:
    """The classes of the values in `obj`, by the rules views apply (a bounded walk)."""
    if depth > MAX_DEPTH:
        found.add(UNCLASSIFIED)
        return
    for key, value in obj.items():
        named = anywhere.get(normal_key(key)) if anywhere else None
        if named is not None:
            found.add(named)  # a backstop name carries its class wherever it is
            continue
        child = node.children.get(key)
        _collect_value(value, (child.cls if child else UNCLASSIFIED), child or LEAF, found, anywhere, depth)


def _collect_value(
    value: Any, cls: str | None, node: FieldNode, found: set[str], anywhere: Mapping[str, str], depth: int
) -> None:
    if isinstance(value, Mapping):
        _collect_classes(value, node, found, anywhere, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _collect_value(item, cls, node, found, anywhere, depth + 1)
    else:
        found.add(UNCLASSIFIED if cls is None else cls)  # a scalar where none is expected: views drop it


def _wildcarded(template: str) -> str:
    return "/".join("+" if _PLACEHOLDER.fullmatch(level) else level for level in template.split("/"))


def _template_matches(template: str, topic: str) -> bool:
    return topic_matches(_wildcarded(template), topic)


# ------------------------------------------------------------------------------------------ parsing


def parse_data_classes(value: Any, source: str, path: str = "data_classes") -> DataClasses:
    """The `data_classes` section; absent (None) means no classes, so views keep nothing classified."""
    at = At(source, path)
    body = at.mapping(value) if value is not None else {}
    classes: dict[str, DataClass] = {}
    for name, spec in body.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == UNCLASSIFIED:
            at.fail(f"{name!r} is not a class name; use lower_snake_case (and not {UNCLASSIFIED!r})")
        classes[name] = _data_class(at.key(name), name, spec)
    return DataClasses(MappingProxyType(classes), _field_tree(at, classes))


def _data_class(at: At, name: str, spec: Any) -> DataClass:
    body = at.mapping(spec, frozenset({"fields", "topics", "coarsen_to", "names_anywhere"}))
    fields = at.key("fields").strings(body.get("fields", []), "dotted field paths")
    for i, path in enumerate(fields):
        if not _FIELD.fullmatch(path):
            at.key("fields").index(i).fail(f"{path!r} is not a field path; write keys joined by dots")
    topics = at.key("topics").strings(body.get("topics", []), "topic templates")
    for i, topic in enumerate(topics):
        _check_template(at.key("topics").index(i), topic, allow_wildcards=True)
    if not fields and not topics:
        at.fail("names no fields and no topics; a class must say what it covers")
    grid = body.get("coarsen_to")
    if grid is not None:
        ok = isinstance(grid, int | float) and not isinstance(grid, bool) and math.isfinite(grid) and grid > 0
        if not ok:
            at.key("coarsen_to").fail(f"must be a positive number (a grid such as 0.1), not {kind(grid)}")
        grid = Decimal(repr(grid))
    anywhere = boolean(at.key("names_anywhere"), body.get("names_anywhere", name == PII))
    if anywhere and not fields:
        at.key("names_anywhere").fail("needs fields: it denies the names of this class's fields anywhere")
    return DataClass(name, tuple(fields), tuple(topics), grid, anywhere)


def _field_tree(at: At, classes: Mapping[str, DataClass]) -> FieldNode:
    """Build the tree of classified paths; refuse a path claimed twice, or one the backstop would eat."""
    owner: dict[tuple[str, ...], str] = {}
    denied = {name: c.name for c in classes.values() for name in c.anywhere_names}
    for cls in classes.values():
        for path in cls.fields:
            parts = tuple(path.split("."))
            if parts in owner:
                other = owner[parts]
                at.key(cls.name).fail(
                    f"field {path!r} is also listed under class {other!r}; a value belongs to one class only"
                )
            backstop = denied.get(normal_key(parts[-1]))
            if backstop is not None and backstop != cls.name:
                at.key(cls.name).fail(
                    f"field {path!r} ends in {parts[-1]!r}, a name class {backstop!r} denies anywhere "
                    f"(names_anywhere); rename the field or set names_anywhere: false on {backstop!r}"
                )
            owner[parts] = cls.name
    return _node(owner, ())


def _node(owner: Mapping[tuple[str, ...], str], prefix: tuple[str, ...]) -> FieldNode:
    depth = len(prefix)
    keys = {p[depth] for p in owner if len(p) > depth and p[:depth] == prefix}
    children = MappingProxyType({k: _node(owner, (*prefix, k)) for k in sorted(keys)})
    return FieldNode(owner.get(prefix), children)


def _check_template(at: At, template: str, allow_wildcards: bool) -> list[str]:
    """Validate a topic template; return its placeholder names, in order."""
    if template.startswith("$"):
        at.fail(f"{template!r} is a $-topic; those are the gateway's own")
    names = []
    for level in template.split("/"):
        match = _PLACEHOLDER.fullmatch(level)
        if match:
            names.append(match.group(1))
        elif "{" in level or "}" in level:
            at.fail(f"{template!r}: a placeholder is a whole level, as in fleet/{{unit}}/state")
        elif not allow_wildcards and level in ("+", "#"):
            at.fail(f"{template!r}: use a named placeholder such as {{stream}} instead of a wildcard")
    if len(names) != len(set(names)):
        at.fail(f"{template!r} repeats a placeholder")
    try:
        validate_topic_filter(_wildcarded(template))
    except TopicFilterInvalid as exc:
        at.fail(f"{template!r} is not a valid topic template: {exc}")
    return names


def parse_views(value: Any, classes: DataClasses, source: str, path: str = "views") -> ViewPolicy | None:
    """The `views` section, checked against the parsed data classes; None when the section is absent."""
    if value is None:
        return None
    at = At(source, path)
    body = at.mapping(value, frozenset({"topic", "sources", "tiers"}), required=("topic", "sources", "tiers"))
    sources = at.key("sources").strings(body["sources"], "topic templates")
    if not sources:
        at.key("sources").fail("must name at least one source topic template")
    captured: list[set[str]] = []
    for i, src in enumerate(sources):
        names = _check_template(at.key("sources").index(i), src, allow_wildcards=False)
        if "unit" not in names or "tier" in names:
            at.key("sources").index(i).fail(f"{src!r} must have a {{unit}} level and no {{tier}}")
        captured.append(set(names))
    topic = _view_topic(at.key("topic"), body["topic"], sources, captured)
    tiers_at = at.key("tiers")
    tiers: dict[int, ViewTier] = {}
    for name, spec in tiers_at.mapping(body["tiers"]).items():
        match = _TIER.fullmatch(str(name)) if not isinstance(name, bool) else None
        if match is None:
            tiers_at.fail(f"{name!r} is not a tier; write 1, 2, ... or tier1, tier2, ...")
        number = int(match.group(1))
        if number in tiers:
            tiers_at.fail(f"tier {number} is listed twice")
        tiers[number] = _tier(tiers_at.key(name), number, spec, classes)
    if not tiers:
        tiers_at.fail("lists no tiers; name at least one, as in 2: {classes: [tracking]}")
    return ViewPolicy(topic, tuple(sources), MappingProxyType(tiers), classes)


def _view_topic(at: At, topic: Any, sources: list[str], captured: list[set[str]]) -> str:
    if not isinstance(topic, str):
        at.fail(f"must be a topic template string, not {kind(topic)}")
    names = _check_template(at, topic, allow_wildcards=False)
    if "tier" not in names or "unit" not in names:
        at.fail(
            f"{topic!r} must have a {{tier}} and a {{unit}} level, so tiers and units never share a topic"
        )
    first = topic.split("/")[0]
    if _PLACEHOLDER.fullmatch(first) or first == "fleet":
        at.fail(f"{topic!r} must start with its own literal level outside fleet/, such as views/")
    for src, have in zip(sources, captured, strict=True):
        missing = set(names) - have - {"tier"}
        if missing:
            at.fail(f"{topic!r} uses {{{sorted(missing)[0]}}}, which source {src!r} does not provide")
        if filters_intersect(_wildcarded(topic), _wildcarded(src)):
            at.fail(f"{topic!r} overlaps source {src!r}; a view would be projected again")
    return topic


def _tier(at: At, number: int, spec: Any, classes: DataClasses) -> ViewTier:
    body = at.mapping(spec, frozenset({"classes", "coarsen", "pseudonymise_units", "unit_share"}))
    allowed = at.key("classes").strings(body.get("classes", []), "data class names")
    for i, name in enumerate(allowed):
        if name not in classes.classes and name != UNCLASSIFIED:
            known = ", ".join([*sorted(classes.classes), UNCLASSIFIED])
            at.key("classes").index(i).fail(f"{name!r} is not a data class; known: {known}")
    coarsen = at.key("coarsen").strings(body.get("coarsen", []), "data class names")
    for i, name in enumerate(coarsen):
        cls = classes.classes.get(name)
        if cls is None or cls.coarsen_to is None or name not in allowed:
            at.key("coarsen").index(i).fail(
                f"{name!r} must be one of this tier's classes with a coarsen_to grid"
            )
    pseudo = boolean(at.key("pseudonymise_units"), body.get("pseudonymise_units", True))
    share = body.get("unit_share", DEFAULT_UNIT_SHARE)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        at.key("unit_share").fail(f"must be a number above 0 and at most 1, such as 0.1, not {share!r}")
    denied = frozenset(
        name for c in classes.classes.values() if c.name not in allowed for name in c.anywhere_names
    )
    return ViewTier(number, frozenset(allowed), frozenset(coarsen), pseudo, denied, float(share))


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    """The context sections in one value: `Policy.context` (data classes, views, posture, 2FA)."""

    data_classes: DataClasses = NO_DATA_CLASSES
    views: ViewPolicy | None = None  # None: no views are republished
    posture: Mapping[str, PostureRequirement] = field(default_factory=lambda: MappingProxyType({}))  # by role
    second_factor: SecondFactorPolicy = field(default_factory=SecondFactorPolicy)


def parse_context_sections(top: Mapping[str, Any], source: str) -> ContextPolicy:
    """Parse `data_classes`, `views`, `posture` and `second_factor` from the whole policy mapping.

    One call for all four because views refer to data classes.
    """
    classes = parse_data_classes(top.get("data_classes"), source)
    return ContextPolicy(
        classes,
        parse_views(top.get("views"), classes, source),
        parse_posture_policy(top.get("posture"), source),
        parse_second_factor(top.get("second_factor"), source),
    )
