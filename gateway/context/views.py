"""Partner views: project a unit message onto what one tier may see. Pure; no I/O.

The gateway's publish observer hands every accepted unit PUBLISH to `ViewRepublisher.on_publish`, which
returns the view messages to publish internally, one per configured tier that has something to see.

Theory of operation, per source message:

1. The topic must match a `views.sources` template and its `{unit}` level must be the publishing unit
   (anything else is not a view source, counted as `ignored`).
2. The payload is parsed once: UTF-8 JSON whose top level is an object, without NaN/Infinity and without
   duplicate keys (two parsers could disagree on which duplicate wins). Anything else is `Malformed` and
   is never forwarded, to any tier.
3. For each tier (`project_object`): a topic class the tier lacks withholds the whole message; otherwise
   the payload is walked as an allow-list at every depth (policy/data_classes.py says how fields are
   classified): a scalar (or an array of scalars) is kept only if the class of its path is one of the
   tier's; an object is never kept as a whole, each key inside it is judged by its own path; a key named
   like a field of a `names_anywhere` class the tier lacks (the PII backstop) is dropped at any depth
   with everything under it; coarsened classes keep numbers only, floored to their grid.
4. In pseudonymised tiers the unit id becomes `u-<HMAC-SHA256(key, "tier|unit")[:16 hex]>` in the topic;
   a kept string or key that *is* the unit id becomes the alias too, and one that merely *contains* it
   (compared case-insensitively) is dropped. Dropped rather than rewritten: replacing inside free text
   can rebuild the id where the alias meets its neighbours, misses other spellings, and a note that
   names the unit usually names more (driver, depot); the structured case (`"unit": "TRK-1"`) keeps
   its use. A source topic whose other levels contain the unit id is withheld (`unit_in_topic`).
   Numbers are not searched: an all-digit unit id would make every timestamp suspect.
5. A projection with no field left is `Withheld("nothing_left")`: a partner gets no empty messages. A
   payload deeper than `MAX_DEPTH` is `Malformed("too_deep")` for every tier.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from gateway.policy.data_classes import (
    LEAF,
    MAX_DEPTH,
    UNCLASSIFIED,
    FieldNode,
    ViewPolicy,
    ViewTier,
    normal_key,
)

__all__ = [
    "Malformed",
    "Projection",
    "ViewRepublisher",
    "ViewStats",
    "Withheld",
    "match_source",
    "parse_object",
    "project",
    "project_object",
    "pseudonym",
    "view_topic",
    "view_topics_for",
]

_ALIAS_CACHE = 200_000  # (tier, unit) aliases kept; a fleet of 10,000 units in 3 tiers needs 30,000


@dataclass(frozen=True, slots=True)
class Projection:
    tier: int
    topic: str
    payload: bytes
    classes: frozenset[str]  # the data classes present in the projected payload (and topic)


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str  # not_utf8, not_json, not_an_object, duplicate_key, non_finite_number, too_deep,
    # invalid_unicode


@dataclass(frozen=True, slots=True)
class Withheld:
    reason: str  # not_a_source, unit_mismatch, no_such_tier, topic_class_not_allowed, unit_in_topic,
    # nothing_left


class _Reject(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def pseudonym(key: bytes, tier: int, unit_id: str) -> str:
    """A stable per-tier alias: the same key and unit give the same alias; tiers cannot join theirs."""
    return "u-" + hmac.digest(key, f"{tier}|{unit_id}".encode(), "sha256").hex()[:16]


def match_source(views: ViewPolicy, topic: str) -> dict[str, str] | None:
    """The placeholder values of the first source template the topic matches, e.g. {unit, stream}."""
    levels = topic.split("/")
    for template in views.sources:
        parts = template.split("/")
        if len(parts) != len(levels):
            continue
        values: dict[str, str] = {}
        for part, level in zip(parts, levels, strict=True):
            if part.startswith("{"):
                if not level:
                    break
                values[part[1:-1]] = level
            elif part != level:
                break
        else:
            return values
    return None


def view_topic(views: ViewPolicy, source_topic: str, tier: int, key: bytes) -> str | None:
    """The view topic of `source_topic` for one tier; None if it is not a source or the tier is unknown."""
    values = match_source(views, source_topic)
    spec = views.tiers.get(tier)
    if values is None or spec is None:
        return None
    return _fill(views, values, spec, _unit_level(key, spec, values["unit"]))


def view_topics_for(views: ViewPolicy, source_topic: str, key: bytes) -> dict[int, str]:
    """The view topic of `source_topic` for every configured tier (empty if it is not a source)."""
    values = match_source(views, source_topic)
    if values is None:
        return {}
    return {
        n: _fill(views, values, spec, _unit_level(key, spec, values["unit"]))
        for n, spec in sorted(views.tiers.items())
    }


def _unit_level(key: bytes, spec: ViewTier, unit_id: str) -> str:
    return pseudonym(key, spec.tier, unit_id) if spec.pseudonymise_units else unit_id


def _fill(views: ViewPolicy, values: Mapping[str, str], spec: ViewTier, unit_level: str) -> str:
    filled = {**values, "tier": str(spec.tier), "unit": unit_level}
    return "/".join(filled[p[1:-1]] if p.startswith("{") else p for p in views.topic.split("/"))


def parse_object(payload: bytes) -> dict[str, Any] | Malformed:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed("not_utf8")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Reject as exc:
        return Malformed(exc.reason)
    except RecursionError:
        return Malformed("too_deep")
    except ValueError:  # JSONDecodeError, and ints longer than Python will convert
        return Malformed("not_json")
    return obj if isinstance(obj, dict) else Malformed("not_an_object")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Reject("duplicate_key")
    return obj


def _no_constants(name: str) -> Any:
    raise _Reject("non_finite_number")  # NaN, Infinity, -Infinity: not JSON, and not coarsenable


def project(
    payload: bytes, tier: int, unit_id: str, views: ViewPolicy, key: bytes, *, source_topic: str
) -> Projection | Malformed | Withheld:
    """One message for one tier (the republisher parses once and calls `project_object` per tier)."""
    obj = parse_object(payload)
    if isinstance(obj, Malformed):
        return obj
    return project_object(obj, source_topic, tier, unit_id, views, key)


def project_object(
    obj: Mapping[str, Any], source_topic: str, tier: int, unit_id: str, views: ViewPolicy, key: bytes
) -> Projection | Malformed | Withheld:
    values = match_source(views, source_topic)
    spec = views.tiers.get(tier)
    if values is None:
        return Withheld("not_a_source")
    if values["unit"] != unit_id:
        return Withheld("unit_mismatch")  # only a unit's own messages become its views
    if spec is None:
        return Withheld("no_such_tier")
    topic_classes = views.data_classes.topic_classes(source_topic)
    return _project(obj, values, topic_classes, spec, _unit_level(key, spec, unit_id), views)


def _project(
    obj: Mapping[str, Any],
    values: Mapping[str, str],
    topic_classes: frozenset[str],
    spec: ViewTier,
    unit_level: str,
    views: ViewPolicy,
) -> Projection | Malformed | Withheld:
    """The projection proper, with what does not depend on the tier worked out once by the caller."""
    if not topic_classes <= spec.classes:
        return Withheld("topic_class_not_allowed")
    unit = values["unit"]
    walk = _Walk(spec, views, set(topic_classes))
    if unit_level != unit:
        walk.unit, walk.folded, walk.alias = unit, unit.casefold(), unit_level
        if any(walk.folded in v.casefold() for k, v in values.items() if k != "unit"):
            return Withheld("unit_in_topic")
    try:
        kept = _object(obj, views.data_classes.tree, walk, 0)
    except _Reject as exc:
        return Malformed(exc.reason)
    if not kept:
        return Withheld("nothing_left")
    try:
        body = json.dumps(kept, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:  # a "\ud800" escape parses to a lone surrogate, which is not UTF-8
        return Malformed("invalid_unicode")
    return Projection(spec.tier, _fill(views, values, spec, unit_level), body, frozenset(walk.present))


@dataclass(slots=True)
class _Walk:
    """One tier's walk over one payload: its rules, and the classes of what it kept."""

    spec: ViewTier
    views: ViewPolicy
    present: set[str]
    unit: str | None = None  # the real unit id, in pseudonymised tiers only
    folded: str = ""  # the unit id, case-folded
    alias: str = ""


_DROP = object()


def _object(obj: Mapping[str, Any], node: FieldNode, walk: _Walk, depth: int) -> dict[str, Any]:
    """The kept part of an object whose keys sit at `node` of the field tree."""
    if depth > MAX_DEPTH:
        raise _Reject("too_deep")  # cannot prove what is below is harmless, so nobody gets any of it
    denied = walk.spec.denied_names
    out: dict[str, Any] = {}
    for name, value in obj.items():
        if denied and normal_key(name) in denied:
            continue  # the backstop: a PII-named key goes, with everything under it, at any depth
        out_name = name
        if walk.unit is not None:
            renamed = _without_unit(name, walk)
            if renamed is None:
                continue
            out_name = renamed
        child = node.children.get(name)
        kept = _value(value, UNCLASSIFIED if child is None else child.cls, child or LEAF, walk, depth + 1)
        if kept is not _DROP:
            out[out_name] = kept
    return out


def _value(value: Any, cls: str | None, node: FieldNode, walk: _Walk, depth: int) -> Any:
    """A value at a path of class `cls` (None: a path with no class of its own): kept, or _DROP."""
    if isinstance(value, dict):
        return _object(value, node, walk, depth) or _DROP
    if isinstance(value, list):
        if depth > MAX_DEPTH:
            raise _Reject("too_deep")
        # Arrays are no level of a path: their items are judged as the array's value would be.
        items = [v for v in (_value(item, cls, node, walk, depth + 1) for item in value) if v is not _DROP]
        return items or _DROP
    spec = walk.spec
    if cls is None or cls not in spec.classes:
        return _DROP
    if cls in spec.coarsen:
        grid = walk.views.data_classes.classes[cls].coarsen_to
        assert grid is not None  # the parser allows coarsen only for classes with a grid
        value = _coarsen(value, grid)
    elif walk.unit is not None and isinstance(value, str):
        value = _without_unit(value, walk)
        if value is None:
            return _DROP
    if value is not _DROP:
        walk.present.add(cls)
    return value


def _coarsen(value: Any, grid: Decimal) -> Any:
    """Floor a number to the grid; drop what is not a number (a string could carry full precision)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        cells = (Decimal(repr(value)) / grid).to_integral_value(rounding=ROUND_FLOOR)
        snapped = cells * grid
        # A whole-number grid gives whole numbers; otherwise the float of an exact multiple of the grid,
        # whose shortest repr has no more decimals than the grid (52.123456 on 0.1 -> 52.1).
        return int(snapped) if grid == grid.to_integral_value() else float(snapped)
    return _DROP


def _without_unit(text: str, walk: _Walk) -> str | None:
    """In a pseudonymised tier: the alias for the unit id itself; None (drop) for text containing it."""
    if text == walk.unit:
        return walk.alias
    return None if walk.folded in text.casefold() else text


# ------------------------------------------------------------------------------------- republisher


@dataclass(frozen=True, slots=True)
class ViewStats:
    sources: int  # source messages seen (a view topic template matched, own unit)
    ignored: int  # messages on topics that are not view sources, or not the unit's own
    projected: Mapping[int, int]  # view messages produced, by tier
    withheld: Mapping[str, int]  # by reason, per tier and message
    malformed: Mapping[str, int]  # by reason, per message
    recent_malformed: tuple[tuple[float, str, str], ...]  # (now, unit, reason), newest last


@dataclass
class ViewRepublisher:
    """Turns accepted unit PUBLISHes into view messages; keeps the counters ops and /metrics show."""

    views: ViewPolicy
    key: bytes
    _sources: int = 0
    _ignored: int = 0
    _projected: Counter[int] = field(default_factory=Counter)
    _withheld: Counter[str] = field(default_factory=Counter)
    _malformed: Counter[str] = field(default_factory=Counter)
    _recent: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=20))
    _aliases: dict[tuple[int, str], str] = field(default_factory=dict, repr=False)
    _tiers: tuple[ViewTier, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tiers = tuple(spec for _, spec in sorted(self.views.tiers.items()))

    def on_publish(
        self, topic: str, payload: bytes, unit_id: str, now: float, tiers: Collection[int] | None = None
    ) -> list[tuple[str, bytes]]:
        """The view messages for one accepted unit PUBLISH; `tiers` limits the work to tiers that have
        subscribers right now (None: every configured tier)."""
        values = match_source(self.views, topic)
        if values is None or values["unit"] != unit_id:
            self._ignored += 1
            return []
        self._sources += 1
        obj = parse_object(payload)
        if isinstance(obj, Malformed):
            self._count_malformed(obj, unit_id, now)
            return []
        topic_classes = self.views.data_classes.topic_classes(topic)  # once per message, not per tier
        results = [
            _project(obj, values, topic_classes, spec, self._alias(spec, unit_id), self.views)
            for spec in self._tiers
            if tiers is None or spec.tier in tiers
        ]
        for result in results:
            if isinstance(result, Malformed):  # one tier could not walk it: none gets it, so tiers agree
                self._count_malformed(result, unit_id, now)
                return []
        out: list[tuple[str, bytes]] = []
        for result in results:
            if isinstance(result, Projection):
                self._projected[result.tier] += 1
                out.append((result.topic, result.payload))
            else:
                self._withheld[result.reason] += 1
        return out

    def _alias(self, spec: ViewTier, unit_id: str) -> str:
        """The unit's topic level in this tier's views; aliases are cached (one HMAC per unit and tier)."""
        if not spec.pseudonymise_units:
            return unit_id
        alias = self._aliases.get((spec.tier, unit_id))
        if alias is None:
            if len(self._aliases) >= _ALIAS_CACHE:
                self._aliases.clear()
            alias = self._aliases[(spec.tier, unit_id)] = pseudonym(self.key, spec.tier, unit_id)
        return alias

    def _count_malformed(self, result: Malformed, unit_id: str, now: float) -> None:
        self._malformed[result.reason] += 1
        self._recent.append((now, unit_id, result.reason))

    def stats(self) -> ViewStats:
        return ViewStats(
            self._sources,
            self._ignored,
            dict(self._projected),
            dict(self._withheld),
            dict(self._malformed),
            tuple(self._recent),
        )
