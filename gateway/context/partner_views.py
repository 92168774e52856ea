"""Partner views in the running gateway: accepted unit PUBLISHes republished per tier.

The projection itself is pure (gateway/context/views.py); this module is the wiring around it:

- *Only tiers with a subscriber are projected.* Projection costs ~40-50 microseconds per message and
  tier, so the set of tiers that currently have a session subscribed to their views is recomputed
  from the broker's sessions on the gateway's event tick (every 0.25 s); with none, the observer
  returns at once. A new partner subscription starts receiving views within one tick.
- *Nothing is projected or routed mid-routing.* The observer runs inside the broker's receive (the hot
  path) while it routes the source message, so it only notes the message (about a microsecond); a
  call on the next loop iteration (`BrokerDriver.later`) then projects and publishes through
  `publish_internal`, which still asks decide_delivery for every recipient: a partner only ever
  gets its own tier's views.
- *A tier is held to its rate.* Each tier's view stream passes a token bucket built from that tier's
  `limits` in the policy (messages_per_second/burst, bytes_per_second, max_payload); what does not fit
  is dropped and counted, so a tier-3 partner gets a trickle however busy the fleet is.
- *No unit can starve a tier.* Under the tier's message bucket each unit has a small one of its own,
  `views.tiers.N.unit_share` of the tier's rate and burst (default 0.1, burst at least one message): a
  unit over its share is refused before it spends the tier's tokens, so a chatty unit takes at most
  that share and the rest stays for the others. Buckets of units that went quiet are forgotten once
  there are many (a full bucket is the same as a new one).
- The pseudonymisation key is the gateway's own secret (DATA/views.key, 0600, kept by
  gateway/stores/views_key.py), so aliases are stable across restarts and unknowable to partners.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.broker.limits import SessionInfo
from gateway.context.views import ViewRepublisher, ViewStats
from gateway.edge.driver import BrokerDriver
from gateway.mqtt.packets import Publish
from gateway.mqtt.topics import filters_intersect
from gateway.policy.peer import Peer
from gateway.policy.rate import TokenBucket
from gateway.policy.rules import Limits, Policy

log = logging.getLogger("fleetgate.views")

VIEW_QOS = 1  # a partner asking for QoS 1 gets it; the subscription's QoS caps it as usual
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


_MAX_UNIT_BUCKETS = 50_000  # per tier; past this, the buckets of units back at full are dropped


@dataclass(slots=True)
class TierGate:
    """One tier's door: its policy limits applied to the view stream, and each unit held to its share."""

    messages: TokenBucket | None
    octets: TokenBucket | None
    max_payload: int | None
    unit_share: float = 1.0
    _units: dict[str, TokenBucket] = field(default_factory=dict)

    @staticmethod
    def of(limits: Limits, now: float, unit_share: float = 1.0) -> TierGate:
        messages = octets = None
        if limits.messages_per_second is not None:
            burst = limits.burst if limits.burst is not None else max(1.0, limits.messages_per_second)
            messages = TokenBucket(limits.messages_per_second, burst, now)
        if limits.bytes_per_second is not None:
            octets = TokenBucket(limits.bytes_per_second, limits.bytes_burst or limits.bytes_per_second, now)
        return TierGate(messages, octets, limits.max_payload, unit_share)

    def admits(self, unit_id: str, size: int, now: float) -> bool:
        if self.max_payload is not None and size > self.max_payload:
            return False
        if self.octets is not None and self.octets.available(now) < size:
            return False
        own = self._unit_bucket(unit_id, now)
        if own is not None and own.available(now) < 1:
            return False  # over its share: the tier's tokens stay for the other units
        if self.messages is not None and not self.messages.take(now):
            return False
        if own is not None:
            own.take(now)
        if self.octets is not None:
            self.octets.take(now, size)
        return True

    def _unit_bucket(self, unit_id: str, now: float) -> TokenBucket | None:
        tier = self.messages
        if tier is None or self.unit_share >= 1.0:
            return None
        own = self._units.get(unit_id)
        if own is None:
            if len(self._units) >= _MAX_UNIT_BUCKETS:
                self._units = {u: b for u, b in self._units.items() if b.available(now) < b.burst}
            own = TokenBucket(tier.rate * self.unit_share, max(1.0, tier.burst * self.unit_share), now)
            self._units[unit_id] = own
        return own


@dataclass(frozen=True, slots=True)
class ViewCounters:
    """For /metrics: by tier (as text) or by reason."""

    published: dict[str, int]
    rate_limited: dict[str, int]
    withheld: dict[str, int]
    malformed: dict[str, int]


class PartnerViews:
    def __init__(
        self,
        driver: BrokerDriver,
        policy: Policy,
        key: bytes,
        on_published: Callable[[str, bytes, float], None] | None = None,
    ) -> None:
        self._on_published = on_published  # the flow map records the views as the gateway's publishes
        self._driver = driver
        self._key = key
        self._pending: list[tuple[str, str, bytes, float]] = []  # (unit id, topic, payload, seen at)
        self._scheduled = False
        self._active: frozenset[int] = frozenset()
        self._covers: dict[str, frozenset[int]] = {}  # subscription filter -> tiers whose views it meets
        self.rate_limited: Counter[int] = Counter()
        self.published: Counter[int] = Counter()
        self._republisher: ViewRepublisher | None = None
        self._gates: dict[int, TierGate] = {}
        self._tier_level = 0
        self.reload(policy)

    def reload(self, policy: Policy) -> None:
        views = policy.context.views
        self._republisher = ViewRepublisher(views, self._key) if views is not None else None
        self._covers.clear()
        self._gates = {}
        if views is None:
            self._active = frozenset()
            return
        self._tier_level = views.topic.split("/").index("{tier}")
        now = self._driver.clock.now()
        for tier, spec in views.tiers.items():
            profile = policy.partner_tiers.get(tier)
            self._gates[tier] = TierGate.of(profile.limits if profile else Limits(), now, spec.unit_share)

    # --- which tiers to project ---------------------------------------------------------------

    def refresh_subscribers(self, sessions: Iterable[SessionInfo]) -> frozenset[int]:
        """Recompute the tiers that have at least one subscribed session (called on the event tick)."""
        rep = self._republisher
        if rep is None:
            return frozenset()
        active: set[int] = set()
        for session in sessions:
            for topic_filter in session.subscriptions:
                tiers = self._covers.get(topic_filter)
                if tiers is None:
                    if len(self._covers) > 10_000:
                        self._covers.clear()
                    tiers = self._covers[topic_filter] = self._tiers_met(topic_filter)
                active.update(tiers)
        self._active = frozenset(active)
        return self._active

    def _tiers_met(self, topic_filter: str) -> frozenset[int]:
        assert self._republisher is not None
        views = self._republisher.views
        plain = topic_filter.split("/", 2)[2] if topic_filter.startswith("$share/") else topic_filter
        return frozenset(
            tier
            for tier in views.tiers
            if filters_intersect(plain, _PLACEHOLDER.sub("+", views.topic.replace("{tier}", str(tier))))
        )

    # --- the observer (hot path) --------------------------------------------------------------

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        """Note a unit message for projection; the projection itself runs after routing (`flush`)."""
        if not self._active:
            return
        identity = peer.identity
        if identity is None or identity.kind != "unit":
            return
        self._pending.append((identity.id, topic, payload, now))
        if not self._scheduled:
            self._scheduled = self._driver.later(self.flush)  # no loop (a unit test): the caller flushes

    def flush(self) -> None:
        """Project the noted unit messages and publish the views (after the sources were routed)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        rep = self._republisher
        if rep is None:
            return
        active = self._active
        for unit_id, topic, payload, seen_at in pending:
            for view_topic, view_payload in rep.on_publish(topic, payload, unit_id, seen_at, active):
                tier = int(view_topic.split("/")[self._tier_level])
                gate = self._gates.get(tier)
                if gate is not None and not gate.admits(unit_id, len(view_payload), seen_at):
                    self.rate_limited[tier] += 1
                    continue
                self.published[tier] += 1
                publish = Publish(view_topic, view_payload, qos=VIEW_QOS)
                now = self._driver.clock.now()
                self._driver.publish_internal(publish, now)
                if self._on_published is not None:
                    self._on_published(view_topic, view_payload, now)

    def stats(self) -> ViewStats | None:
        return None if self._republisher is None else self._republisher.stats()

    def counters(self) -> ViewCounters:
        stats = self.stats()
        return ViewCounters(
            {str(t): n for t, n in self.published.items()},
            {str(t): n for t, n in self.rate_limited.items()},
            dict(stats.withheld) if stats else {},
            dict(stats.malformed) if stats else {},
        )

    @property
    def active_tiers(self) -> frozenset[int]:
        return self._active
