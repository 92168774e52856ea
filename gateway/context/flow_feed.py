"""Feeding the flow map (gateway/context/flows.py) from the running gateway, off the hot path.

What is recorded, and where from:

- allowed publishes: the publish observer notes (identity, topic, size, payload) in a list (an append
  inside the broker's receive); the event tick (every 0.25 s) classifies them with the policy's data
  classes and records them. Classifying is a JSON parse (~15-30 µs) on the event loop, so only the
  first `max_buffer` payloads per tick are kept and classified (<= 1,000/s, <= ~8 ms per tick); the
  rest are folded per (identity, topic) and recorded once per tick without classes, and their rows
  take the classes seen on the same template, which the sampled messages of a busy template provide;
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
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.broker.events import PublishDenied, SubscribeDenied
from gateway.broker.limits import SessionInfo
from gateway.context.flows import FlowMap, FlowRecorder
from gateway.mqtt.topics import topic_matches
from gateway.policy.access import Peer
from gateway.policy.data_classes import DataClasses
from pki.names import Identity

VIEWS_GROUP = "gateway/views"


def group_of(identity: Identity | None) -> tuple[str, str, str]:
    """(kind, id, group) as the flow map names them: units together, others by name."""
    if identity is None:
        return "lab", "lab", "lab"
    if identity.kind in ("unit", "operator"):
        return identity.kind, identity.id, identity.kind
    return identity.kind, identity.id, f"{identity.kind}/{identity.id}"


def _plain(topic_filter: str) -> str:
    """The filter a `$share/<group>/<filter>` subscription matches with."""
    return topic_filter.split("/", 2)[2] if topic_filter.startswith("$share/") else topic_filter


# One PUBLISH noted on the hot path until the next tick: (kind, ident, group, topic, size, payload,
# at), payload None past the buffer cap (recorded without classes). A plain tuple of strings, numbers
# and bytes, which the garbage collector stops tracking at its first look: thousands are noted a
# second, and tracked objects that live until the tick would be moved to the old generation and
# bring the next full collection (a long pause with many sessions) closer.
_Noted = tuple[str, str, str, str, int, bytes | None, float]


@dataclass(frozen=True, slots=True)
class _Subscriber:
    kind: str
    ident: str
    group: str
    filters: tuple[str, ...]


_RECEIVERS_MEMO = 20_000  # distinct topics whose receivers are remembered (emptied when full)


class FlowFeed:
    def __init__(self, classes: DataClasses, window: float = 300.0, max_buffer: int = 250) -> None:
        self.classes = classes
        self.recorder = FlowRecorder(window=window)
        self.max_buffer = max_buffer
        self._noted: list[_Noted] = []
        self._subscribed: set[tuple[str, str]] = set()
        self._units: dict[str, list[_Subscriber]] = {}  # unit id -> its subscribing sessions
        self._others: list[_Subscriber] = []  # every other subscribing session
        self._receivers: dict[str, list[tuple[str, str, str]]] = {}  # topic -> receivers (memo)

    def reload(self, classes: DataClasses) -> None:
        self.classes = classes

    # --- hot path -------------------------------------------------------------------------------

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        kind, ident, group = group_of(peer.identity)
        keep = payload if len(self._noted) < self.max_buffer else None
        self._noted.append((kind, ident, group, topic, len(payload), keep, now))

    def view_published(self, topic: str, payload: bytes, now: float) -> None:
        keep = payload if len(self._noted) < self.max_buffer else None
        self._noted.append(("gateway", "views", VIEWS_GROUP, topic, len(payload), keep, now))

    # --- the event tick ---------------------------------------------------------------------------

    def tick(self, events: Iterable[object], now: float, sessions: list[SessionInfo] | None = None) -> None:
        """Record what happened since the last tick. `sessions`: the broker's sessions when their
        subscriptions changed since the last tick (None: unchanged, the feed keeps its own copy)."""
        record = self.recorder.record
        if sessions is not None:
            self._follow_subscriptions(sessions, now)
        noted, self._noted = self._noted, []
        topics: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        unsampled: dict[tuple[str, str, str, str], list[int]] = {}
        for kind, ident, group, topic, size, payload, at in noted:
            topics[topic] += 1
            sizes[topic] += size
            if payload is not None:
                classes = self.classes.classify(topic, payload)
                record(kind, ident, group, "publish", topic, classes, True, size, at)
                continue
            key = (kind, ident, group, topic)
            tally = unsampled.get(key)
            if tally is None:
                unsampled[key] = [1, size]
            else:
                tally[0] += 1
                tally[1] += size
        for (kind, ident, group, topic), (count, size) in unsampled.items():
            record(kind, ident, group, "publish", topic, None, True, size, now, count)
        for event in events:
            if isinstance(event, PublishDenied):
                kind, ident, group = group_of(event.peer.identity)
                record(kind, ident, group, "publish", event.topic, (), False, 0, now)
            elif isinstance(event, SubscribeDenied) and not event.revoked:
                kind, ident, group = group_of(event.peer.identity)
                record(kind, ident, group, "subscribe", event.topic_filter, (), False, 0, now)
        for topic, count in topics.items():
            for kind, ident, group in self._receivers_of(topic):
                record(kind, ident, group, "receive", topic, None, True, sizes[topic], now, count)

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
            (c.kind, c.ident, c.group)
            for c in candidates
            if any(topic_matches(f, topic) for f in c.filters)
        ]
        if len(self._receivers) >= _RECEIVERS_MEMO:
            self._receivers.clear()
        self._receivers[topic] = found
        return found

    def snapshot(self, now: float) -> FlowMap:
        return self.recorder.snapshot(now)
