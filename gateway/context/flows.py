"""Discovery: the live map of who sends which data class to whom. Pure; `now` is an argument.

The gateway feeds a `FlowRecorder` one event per judged action: a publish (allowed or denied), a
subscribe (allowed or denied) and each delivery to a subscriber ("receive"), with the data classes the
message carries (policy/data_classes.py `classify`). Where a delivery decision does not see the
payload, pass `data_classes=None`: the row then takes the classes published on the same template in the
window (units' publishes for raw topics; the gateway's own view publishes for views). The recorder
aggregates per (identity group, action, topic template) over a sliding window, and `snapshot(now)`
returns a `FlowMap` value the renderers (flows_render.py) turn into a table, JSON, Mermaid and PNG.

Why templates: 10,000 units publishing `fleet/<unit>/telemetry/gps` are one flow, so the unit level of
`fleet/<unit>/...` (and of view topics `views/<tier>/fleet/<unit>/...`) becomes `{unit}`; other levels
stay, since streams are few and meaningful. Why bounds: topics of *denied* attempts are chosen by the
client, so the number of rows (`max_rows`) and the identities remembered per row are capped; an event
that would open a row past the cap is folded into its (group, action)'s `(other)` row and counted in
`FlowMap.overflow`.

The window is kept as fixed-width buckets (window / 30 each), so memory per row is bounded and old
traffic falls out without a timer; a snapshot therefore covers the last 29-30 buckets, not an exact
`window` to the millisecond.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DEFAULT_UNIT_TEMPLATES",
    "SENSITIVE_CLASSES",
    "FlowMap",
    "FlowRecorder",
    "FlowRow",
    "ProtectEntry",
    "topic_template",
]

Action = Literal["publish", "subscribe", "receive"]
ACTIONS: tuple[Action, ...] = ("publish", "subscribe", "receive")
SENSITIVE_CLASSES = frozenset({"pii", "commercial"})
# Where the unit id sits: "{unit}" marks the level, "+" matches any level before it.
DEFAULT_UNIT_TEMPLATES = ("fleet/{unit}/#", "views/+/fleet/{unit}/#")
OTHER = "(other)"
_BUCKETS = 30
_MAX_TEMPLATE = 200  # characters; longer (client-chosen) topics are cut
_TEMPLATE_CACHE = 65536  # topics remembered with their template (10,000 units x a few streams fit)


def topic_template(topic: str, unit_templates: Sequence[str] = DEFAULT_UNIT_TEMPLATES) -> str:
    """`fleet/TRK-1/telemetry/gps` -> `fleet/{unit}/telemetry/gps`; filters keep their wildcards."""
    if topic.startswith("$share/"):
        parts = topic.split("/", 2)
        topic = parts[2] if len(parts) == 3 else topic
    levels = topic.split("/")
    for pattern in unit_templates:
        spec = pattern.split("/")
        at = spec.index("{unit}")
        if len(levels) <= at or levels[at] in ("+", "#", ""):
            continue
        if all(s in ("+", levels[i]) for i, s in enumerate(spec[:at])):
            levels[at] = "{unit}"
            break
    text = "/".join(levels)
    return text if len(text) <= _MAX_TEMPLATE else text[: _MAX_TEMPLATE - 1] + "…"


@dataclass(frozen=True, slots=True)
class FlowRow:
    group: str  # "unit", "operator", "service/dispatch", "partner/acme", ... as the gateway names it
    kind: str  # identity kind: unit, operator, service, partner
    action: Action
    template: str
    messages: int  # allowed events in the window
    denied: int  # denied attempts in the window
    bytes: int  # payload bytes of allowed events
    rate: float  # allowed events per second over the window
    identities: int  # distinct identities in the window (capped at FlowRecorder.max_identities)
    data_classes: frozenset[str]  # classes carried by allowed events
    protect: bool  # a receive row carrying a sensitive class: part of the protect surface


@dataclass(frozen=True, slots=True)
class ProtectEntry:
    group: str
    classes: frozenset[str]  # sensitive classes received
    templates: tuple[str, ...]
    messages: int


@dataclass(frozen=True, slots=True)
class FlowMap:
    generated_at: float
    window: float
    rows: tuple[FlowRow, ...]  # sorted by group, action, template
    protect_surface: tuple[ProtectEntry, ...]  # who receives sensitive classes, most messages first
    sensitive: frozenset[str]
    overflow: int  # events folded into (other) rows because of the row cap


@dataclass
class _Bucket:
    messages: int = 0
    denied: int = 0
    bytes: int = 0
    classes: set[str] = field(default_factory=set)


@dataclass
class _Row:
    kind: str
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    inherit: bool = False  # some event came without classes: take those published on the template
    seen: dict[str, float] = field(default_factory=dict)  # identity id -> last event time


@dataclass
class FlowRecorder:
    window: float = 300.0
    unit_templates: Sequence[str] = DEFAULT_UNIT_TEMPLATES
    sensitive: frozenset[str] = SENSITIVE_CLASSES
    max_rows: int = 5000
    max_identities: int = 100_000
    _rows: dict[tuple[str, Action, str], _Row] = field(default_factory=dict, repr=False)
    _templates: dict[str, str] = field(default_factory=dict, repr=False)  # topic -> template, bounded
    _started: float | None = None
    _pruned: float = 0.0
    _width: float = field(init=False, repr=False)
    _overflow: int = 0

    def __post_init__(self) -> None:
        self._width = self.window / _BUCKETS

    def template_of(self, topic: str) -> str:
        """The topic's template (`fleet/{unit}/telemetry/gps`), remembered for the next time."""
        template = self._templates.get(topic)
        if template is None:
            if len(self._templates) >= _TEMPLATE_CACHE:
                self._templates.clear()
            template = self._templates[topic] = topic_template(topic, self.unit_templates)
        return template

    def record(
        self,
        identity_kind: str,
        identity_id: str,
        group: str,
        action: Action,
        topic: str,
        data_classes: Iterable[str] | None,
        allowed: bool,
        size: int,
        now: float,
        count: int = 1,
    ) -> None:
        """`count` messages of `size` bytes in all (the feed folds a tick's repeats into one call)."""
        if self._started is None:
            self._started = self._pruned = now
        if now - self._pruned >= self._width * 3:  # amortised: old buckets go without a timer
            self._prune(now)
        template = self.template_of(topic)
        key = (group, action, template)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= self.max_rows:
                self._overflow += 1
                key = (group, action, OTHER)
            row = self._rows.setdefault(key, _Row(identity_kind))
        index = int(now // self._width)
        bucket = row.buckets.get(index)
        if bucket is None:
            bucket = row.buckets[index] = _Bucket()
        if allowed:
            bucket.messages += count
            bucket.bytes += size
            if data_classes is None:
                row.inherit = True
            elif not bucket.classes.issuperset(data_classes):
                bucket.classes.update(data_classes)
        else:
            bucket.denied += count
        seen = row.seen
        if identity_id in seen or len(seen) < self.max_identities:
            seen[identity_id] = now

    def _prune(self, now: float) -> None:
        """Forget buckets, identities and rows that have left the window."""
        self._pruned = now
        oldest = int(now // self._width) - _BUCKETS + 1
        for key in list(self._rows):
            row = self._rows[key]
            for index in [i for i in row.buckets if i < oldest]:
                del row.buckets[index]
            row.seen = {i: t for i, t in row.seen.items() if t > now - self.window}
            if not row.buckets:
                del self._rows[key]

    def snapshot(self, now: float) -> FlowMap:
        self._prune(now)
        span = self.window if self._started is None else min(self.window, max(now - self._started, 0.0))
        span = max(span, self._width)  # a young recorder does not report absurd rates
        published: dict[str, set[str]] = {}  # template -> classes of allowed publishes on it
        for (_, action, template), row in self._rows.items():
            if action == "publish":
                published.setdefault(template, set()).update(
                    c for b in row.buckets.values() for c in b.classes
                )
        rows = [self._row(key, row, span, published) for key, row in sorted(self._rows.items())]
        return FlowMap(now, self.window, tuple(rows), self._protect(rows), self.sensitive, self._overflow)

    def _row(
        self, key: tuple[str, Action, str], row: _Row, span: float, published: Mapping[str, set[str]]
    ) -> FlowRow:
        group, action, template = key
        messages = sum(b.messages for b in row.buckets.values())
        classes = frozenset(c for b in row.buckets.values() for c in b.classes)
        if row.inherit and messages:
            classes |= published.get(template, set())
        return FlowRow(
            group=group,
            kind=row.kind,
            action=action,
            template=template,
            messages=messages,
            denied=sum(b.denied for b in row.buckets.values()),
            bytes=sum(b.bytes for b in row.buckets.values()),
            rate=messages / span,
            identities=len(row.seen),
            data_classes=classes,
            protect=action == "receive" and bool(classes & self.sensitive),
        )

    def _protect(self, rows: list[FlowRow]) -> tuple[ProtectEntry, ...]:
        by_group: dict[str, list[FlowRow]] = {}
        for row in rows:
            if row.protect:
                by_group.setdefault(row.group, []).append(row)
        entries = [
            ProtectEntry(
                group,
                frozenset(c for r in found for c in r.data_classes & self.sensitive),
                tuple(r.template for r in found),
                sum(r.messages for r in found),
            )
            for group, found in by_group.items()
        ]
        return tuple(sorted(entries, key=lambda e: (-e.messages, e.group)))
