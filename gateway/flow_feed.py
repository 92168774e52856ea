"""Feeding the flow map (gateway/flows.py) from the running gateway, off the hot path (issue 10).

What is recorded, and where from:

- allowed publishes: the publish observer notes (identity, topic, size, payload) in a list (an append
  inside the broker's receive); the event tick (every 0.25 s) classifies them with the policy's data
  classes and records them. Classifying is a JSON parse (~15-30 µs) on the event loop, so only the
  first `max_buffer` payloads per tick are kept and classified (<= ~4,000/s, <= ~30 ms per tick); the
  rest are recorded without classes and their rows take the classes seen on the same template, which
  the sampled messages of a busy template provide;
- the gateway's own view publishes (gateway/partner_views.py) as the group `gateway/views`;
- denied publishes and subscribes: the broker's PublishDenied / SubscribeDenied events;
- allowed subscriptions: new (session, filter) pairs in the broker's session list;
- receives: per tick, each distinct published topic is matched against the live sessions'
  subscriptions (a unit's only against its own topics), counted once per message and recipient. The
  broker does not report individual deliveries (that would cost the hot path), so a delivery the
  policy refused at the last moment is still counted here; grants make that rare, and the denials
  show up as DeliveryDenied events in the audit log.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.broker.events import PublishDenied, SubscribeDenied
from gateway.broker.limits import SessionInfo
from gateway.flows import FlowMap, FlowRecorder
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


@dataclass(slots=True)
class _Noted:
    kind: str
    ident: str
    group: str
    topic: str
    size: int
    payload: bytes | None  # None past the buffer cap: recorded without classes
    at: float


class FlowFeed:
    def __init__(self, classes: DataClasses, window: float = 300.0, max_buffer: int = 1_000) -> None:
        self.classes = classes
        self.recorder = FlowRecorder(window=window)
        self.max_buffer = max_buffer
        self._noted: list[_Noted] = []
        self._subscribed: set[tuple[str, str]] = set()

    def reload(self, classes: DataClasses) -> None:
        self.classes = classes

    # --- hot path -------------------------------------------------------------------------------

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        kind, ident, group = group_of(peer.identity)
        keep = payload if len(self._noted) < self.max_buffer else None
        self._noted.append(_Noted(kind, ident, group, topic, len(payload), keep, now))

    def view_published(self, topic: str, payload: bytes, now: float) -> None:
        keep = payload if len(self._noted) < self.max_buffer else None
        self._noted.append(_Noted("gateway", "views", VIEWS_GROUP, topic, len(payload), keep, now))

    # --- the event tick ---------------------------------------------------------------------------

    def tick(self, events: Iterable[object], sessions: list[SessionInfo], now: float) -> None:
        record = self.recorder.record
        noted, self._noted = self._noted, []
        topics: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for n in noted:
            classes = None if n.payload is None else self.classes.classify(n.topic, n.payload)
            record(n.kind, n.ident, n.group, "publish", n.topic, classes, True, n.size, n.at)
            topics[n.topic] += 1
            sizes[n.topic] += n.size
        for event in events:
            if isinstance(event, PublishDenied):
                kind, ident, group = group_of(event.peer.identity)
                record(kind, ident, group, "publish", event.topic, (), False, 0, now)
            elif isinstance(event, SubscribeDenied) and not event.revoked:
                kind, ident, group = group_of(event.peer.identity)
                record(kind, ident, group, "subscribe", event.topic_filter, (), False, 0, now)
        live: set[tuple[str, str]] = set()
        by_unit: dict[str, list[str]] = {}
        for topic in topics:
            levels = topic.split("/", 2)
            if len(levels) > 2 and levels[0] == "fleet":
                by_unit.setdefault(levels[1], []).append(topic)
        for session in sessions:
            identity = session.peer.identity if session.peer is not None else None
            kind, ident, group = group_of(identity)
            for topic_filter in session.subscriptions:
                live.add((session.client_id, topic_filter))
                if (session.client_id, topic_filter) not in self._subscribed:
                    record(kind, ident, group, "subscribe", topic_filter, (), True, 0, now)
            filters = [_plain(f) for f in session.subscriptions]
            candidates = by_unit.get(ident, []) if kind == "unit" else topics
            for topic in candidates:
                if any(topic_matches(f, topic) for f in filters):
                    count = topics[topic]
                    for _ in range(count):
                        record(kind, ident, group, "receive", topic, None, True, sizes[topic] // count, now)
        self._subscribed = live

    def snapshot(self, now: float | None = None) -> FlowMap:
        return self.recorder.snapshot(time.time() if now is None else now)
