"""Feeding the flow map (gateway/context/flows.py) from the running gateway, off the hot path.

What is recorded, and where from:

- allowed publishes: the publish observer folds them per (identity, topic) as they come (a count,
  their bytes and the first payload of the tick, in a plain tuple the garbage collector does not
  track), and the event tick (every 0.25 s) records each (identity, topic) once. Classifying is a
  JSON parse (~15-30 µs) on the event loop, so each tick classifies at most `per_template` payloads
  of each topic template and `max_buffer` in all, taking turns among the identities publishing on a
  template from tick to tick; the others are recorded without classes, and their rows take the
  classes seen on the same template. The tick's cost is one step per (identity, topic), not one per
  message (at 20k msg/s from 1,000 units the feed's part of a tick went from ~8 ms to ~3 ms);
- the gateway's own view publishes (gateway/context/partner_views.py) as the group `gateway/views`;
- denied publishes and subscribes: the broker's PublishDenied / SubscribeDenied events;
- allowed subscriptions: new (session, filter) pairs in the broker's session list, which the gateway
  hands over only when `Broker.subscriptions_version` moved (an O(sessions) walk, not every tick);
- receives: per tick, each distinct published topic is matched against the live sessions'
  subscriptions (a unit's only against its own topics), counted once per message and recipient; the
  receivers of a topic are remembered until the subscriptions change. The
  broker does not report individual deliveries (that would cost the hot path), so a delivery the
  policy refused at the last moment is still counted here; grants make that rare, and the denials
  show up as DeliveryDenied events in the audit log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.broker.events import PublishDenied, SubscribeDenied
from gateway.broker.limits import SessionInfo
from gateway.context.flows import FlowMap, FlowRecorder
from gateway.mqtt.topics import topic_matches
from gateway.policy.data_classes import DataClasses
from gateway.policy.peer import Peer
from pki.names import Identity

VIEWS_GROUP = "gateway/views"


def group_of(identity: Identity | None) -> tuple[str, str, str]:
    """(kind, id, group) as the flow map names them: units together, others by name."""
    if identity is None:
        return "lab", "lab", "lab"
    return identity.kind, identity.id, _group(identity.kind, identity.id)


def _group(kind: str, ident: str) -> str:
    """group_of's group, from the kind and id (`gateway`/`views` is VIEWS_GROUP, `lab` is `lab`)."""
    if kind in ("unit", "operator", "lab"):
        return kind
    return f"{kind}/{ident}"


def _plain(topic_filter: str) -> str:
    """The filter a `$share/<group>/<filter>` subscription matches with."""
    return topic_filter.split("/", 2)[2] if topic_filter.startswith("$share/") else topic_filter


# What the hot path folds until the next tick, per (kind, id, topic): (messages, bytes, the first
# payload). Keys and values are plain tuples of strings, numbers and bytes, which the garbage
# collector stops tracking at its first look: tracked objects that live until the tick would be
# moved to the old generation and bring the next full collection (a long pause with many sessions)
# closer.
_Key = tuple[str, str, str]
_Tally = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class _Subscriber:
    kind: str
    ident: str
    group: str
    filters: tuple[str, ...]


_RECEIVERS_MEMO = 20_000  # distinct topics whose receivers are remembered (emptied when full)
# Rows recorded between two points where the running gateway lets the event loop serve reads
# (`tick_steps`): ~1.5 µs each, so a slice holds the loop for under a millisecond.
TICK_SLICE = 512


class FlowFeed:
    def __init__(
        self, classes: DataClasses, window: float = 300.0, max_buffer: int = 250, per_template: int = 4
    ) -> None:
        self.classes = classes
        self.recorder = FlowRecorder(window=window)
        self.max_buffer = max_buffer  # payloads classified per tick, in all
        self.per_template = per_template  # ... and per topic template
        self._tallies: dict[_Key, _Tally] = {}
        self._turn = 0  # moves every tick, so each identity on a busy template has its payload read
        self._subscribed: set[tuple[str, str]] = set()
        self._units: dict[str, list[_Subscriber]] = {}  # unit id -> its subscribing sessions
        self._others: list[_Subscriber] = []  # every other subscribing session
        self._receivers: dict[str, list[tuple[str, str, str]]] = {}  # topic -> receivers (memo)

    def reload(self, classes: DataClasses) -> None:
        self.classes = classes

    # --- hot path -------------------------------------------------------------------------------

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        identity = peer.identity
        key = (identity.kind, identity.id, topic) if identity is not None else ("lab", "lab", topic)
        tallies = self._tallies
        tally = tallies.get(key)
        if tally is None:
            tallies[key] = (1, len(payload), payload)
        else:
            tallies[key] = (tally[0] + 1, tally[1] + len(payload), tally[2])

    def view_published(self, topic: str, payload: bytes, now: float) -> None:
        key = ("gateway", "views", topic)  # group_of names it VIEWS_GROUP
        tally = self._tallies.get(key)
        self._tallies[key] = (
            (1, len(payload), payload) if tally is None else (tally[0] + 1, tally[1] + len(payload), tally[2])
        )

    # --- the event tick ---------------------------------------------------------------------------

    def tick(self, events: Iterable[object], now: float, sessions: list[SessionInfo] | None = None) -> None:
        """Record what happened since the last tick. `sessions`: the broker's sessions when their
        subscriptions changed since the last tick (None: unchanged, the feed keeps its own copy)."""
        for _ in self.tick_steps(events, now, sessions):
            pass

    def tick_steps(
        self,
        events: Iterable[object],
        now: float,
        sessions: list[SessionInfo] | None = None,
        size: int = TICK_SLICE,
    ) -> Iterator[None]:
        """`tick`, pausing (a bare `yield`) after every `size` (identity, topic)s and published topics,
        where the caller may let other work run. What is published during a pause is folded for the
        next tick (the tallies in hand are taken at the start)."""
        record = self.recorder.record
        if sessions is not None:
            self._follow_subscriptions(sessions, now)
        tallies, self._tallies = self._tallies, {}
        topics: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        read = self._to_classify(tallies)
        for done, (key, (count, nbytes, payload)) in enumerate(tallies.items(), 1):
            kind, ident, topic = key
            topics[topic] += count
            sizes[topic] += nbytes
            classes = self.classes.classify(topic, payload) if key in read else None
            record(kind, ident, _group(kind, ident), "publish", topic, classes, True, nbytes, now, count)
            if done % size == 0:
                yield
        for event in events:
            if isinstance(event, PublishDenied):
                kind, ident, group = group_of(event.peer.identity)
                record(kind, ident, group, "publish", event.topic, (), False, 0, now)
            elif isinstance(event, SubscribeDenied) and not event.revoked:
                kind, ident, group = group_of(event.peer.identity)
                record(kind, ident, group, "subscribe", event.topic_filter, (), False, 0, now)
        for done, (topic, count) in enumerate(topics.items(), 1):
            for kind, ident, group in self._receivers_of(topic):
                record(kind, ident, group, "receive", topic, None, True, sizes[topic], now, count)
            if done % size == 0:
                yield

    def _to_classify(self, tallies: dict[_Key, _Tally]) -> set[_Key]:
        """Whose payload this tick reads: up to `per_template` (identity, topic)s of each template,
        `max_buffer` in all, starting further along each template's list every tick."""
        by_template: dict[str, list[_Key]] = {}
        template_of = self.recorder.template_of
        for key in tallies:
            by_template.setdefault(template_of(key[2]), []).append(key)
        self._turn += 1
        chosen: set[_Key] = set()
        for keys in by_template.values():
            n = len(keys)
            start = (self._turn * self.per_template) % n
            for i in range(min(n, self.per_template, self.max_buffer - len(chosen))):
                chosen.add(keys[(start + i) % n])
            if len(chosen) >= self.max_buffer:
                break
        return chosen

    def _follow_subscriptions(self, sessions: list[SessionInfo], now: float) -> None:
        """Record new (session, filter) pairs and rebuild who may receive what."""
        live: set[tuple[str, str]] = set()
        self._units.clear()
        self._others.clear()
        self._receivers.clear()
        for session in sessions:
            identity = session.peer.identity if session.peer is not None else None
            kind, ident, group = group_of(identity)
            for topic_filter in session.subscriptions:
                live.add((session.client_id, topic_filter))
                if (session.client_id, topic_filter) not in self._subscribed:
                    self.recorder.record(kind, ident, group, "subscribe", topic_filter, (), True, 0, now)
            if not session.subscriptions:
                continue
            entry = _Subscriber(kind, ident, group, tuple(_plain(f) for f in session.subscriptions))
            # Grants confine a unit to its own subtree: it is only ever matched against its own topics.
            (self._units.setdefault(ident, []) if kind == "unit" else self._others).append(entry)
        self._subscribed = live

    def _receivers_of(self, topic: str) -> list[tuple[str, str, str]]:
        """(kind, id, group) of each subscriber with a filter matching `topic`, memoised until the
        subscriptions change."""
        found = self._receivers.get(topic)
        if found is not None:
            return found
        levels = topic.split("/", 2)
        candidates = self._others
        if len(levels) > 2 and levels[0] == "fleet" and levels[1] in self._units:
            candidates = [*self._others, *self._units[levels[1]]]
        found = [
            (c.kind, c.ident, c.group) for c in candidates if any(topic_matches(f, topic) for f in c.filters)
        ]
        if len(self._receivers) >= _RECEIVERS_MEMO:
            self._receivers.clear()
        self._receivers[topic] = found
        return found

    def snapshot(self, now: float) -> FlowMap:
        return self.recorder.snapshot(now)
