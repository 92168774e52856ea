"""Grants compiled for one identity: what the hot path asks on every publish and every delivery.

A policy speaks in templates (`fleet/{id}/telemetry/#`); a session needs answers about concrete topics.
Templates are filled in once per (identity, tier, quarantined, policy generation) and split in two:
literal grants go into a dict (one lookup), wildcard grants into a small `SubscriptionTrie` (a walk over
the topic's levels). No template is expanded and no grant list is scanned per PUBLISH.

When several grants match, the one written first in the file is reported, so a decision's rule is the
same whichever structure found it.

Subscriptions are judged differently from topics: a requested filter is allowed only if a single grant
*covers* it (`filter_covers`), so asking for more than was granted is refused rather than silently
narrowed. That is a handful of exact set comparisons per SUBSCRIBE, off the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.topics import (
    SubscriptionTrie,
    filter_covers,
    filters_intersect,
    parse_shared,
    topic_matches,
)
from gateway.policy.rules import Grant, Policy, Profile, substitute
from pki.names import Identity, validate_id

__all__ = ["CompiledGrants", "GrantCache", "TopicMatcher"]

_MEMO_LIMIT = 256  # remembered publish answers per compiled identity
# Remembered delivery answers per compiled identity: a fleet-wide subscriber hears every unit's topics
# (~8 per unit), so this must hold a whole fleet's worth or the memo is emptied before it is reused.
_RECEIVE_MEMO_LIMIT = 16_384
STATE_TOPIC = "fleet/{id}/state"  # where a restricted unit reports its posture (within roles.unit.publish)


class TopicMatcher:
    """Concrete filters, each with the rule that granted it; answers "which rule matches this topic"."""

    __slots__ = ("_exact", "_trie", "filters")

    def __init__(self, filters: Iterable[tuple[str, str]]) -> None:
        self.filters: tuple[tuple[str, str], ...] = tuple(filters)  # (concrete filter, rule), file order
        self._exact: dict[str, str] = {}
        self._trie: SubscriptionTrie[str, int] | None = None
        wildcards: list[tuple[str, str]] = []
        for index, (topic_filter, rule) in enumerate(self.filters):
            if "+" in topic_filter or "#" in topic_filter:
                wildcards.append((topic_filter, rule))
                if self._trie is None:
                    self._trie = SubscriptionTrie()
                self._trie.add(topic_filter, rule, index)
            else:
                # An earlier wildcard grant that also matches this literal topic wins, as it would have
                # on a linear scan; settled here so the lookup stays one dict access.
                earlier = next((r for f, r in wildcards if topic_matches(f, topic_filter)), rule)
                self._exact.setdefault(topic_filter, earlier)

    def match(self, topic: str) -> str | None:
        """The rule of the first grant whose filter matches the (valid) topic name, or None."""
        rule = self._exact.get(topic)
        if rule is not None or self._trie is None:
            return rule
        hits = self._trie.match(topic)
        if not hits:
            return None
        return min(hits, key=lambda hit: hit[1])[0]

    def covering(self, topic_filter: str) -> str | None:
        """The rule of the first grant whose filter covers every topic `topic_filter` could match."""
        return next((rule for f, rule in self.filters if filter_covers(f, topic_filter)), None)

    def intersecting(self, topic_filter: str) -> list[str]:
        """Rules of the grants sharing at least one topic with `topic_filter`."""
        return [rule for f, rule in self.filters if filters_intersect(f, topic_filter)]


def _fill(grants: Iterable[Grant], values: dict[str, str]) -> TopicMatcher:
    return TopicMatcher((substitute(g.template, values), g.rule) for g in grants)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledGrants:
    identity: Identity
    tier: int | None
    quarantined: bool
    profile: Profile  # the normal profile (its name prefixes deny rules, its limits drive the buckets)
    publish: TopicMatcher
    subscribe: TopicMatcher
    quarantine: TopicMatcher | None  # None unless quarantined or restricted
    control: TopicMatcher  # the control namespace, "{unit}" as "+": any unit's control topics
    # Restricted by device posture (issue 10): diagnostic-only like quarantine, plus its own state topic
    # so that it can report a better posture and be let out.
    restricted: bool = False
    _published: dict[str, str] = field(default_factory=dict, repr=False)  # topic -> rule, "" for none
    _received: dict[str, str] = field(default_factory=dict, repr=False)  # the same, for deliveries

    @classmethod
    def for_identity(
        cls, policy: Policy, identity: Identity, tier: int | None, quarantined: bool, restricted: bool = False
    ) -> CompiledGrants:
        # Certificates are checked at issuance; checked again because an id is pasted into filters
        # and an id holding "/" or "+" would widen every grant it fills. Raises IdentityError.
        validate_id(identity.kind, identity.id)
        profile = policy.profile_for(identity.kind, identity.id, tier)
        values = {"{id}": identity.id, "{unit}": "+"}
        if identity.kind == "partner":
            values["{partner}"] = identity.id
            if tier is not None:
                values["{tier}"] = str(tier)
        narrowed: tuple[Grant, ...] = ()
        if quarantined or restricted:
            narrowed = policy.quarantine_profile(identity.kind).publish
        if restricted:
            narrowed = (*narrowed, Grant("posture/state", STATE_TOPIC, "posture"))
        quarantine = _fill(narrowed, values) if quarantined or restricted else None
        return cls(
            identity,
            tier,
            quarantined,
            profile,
            publish=_fill(profile.publish, values),
            subscribe=_fill(profile.subscribe, values),
            quarantine=quarantine,
            control=_fill(policy.control_namespace, values),
            restricted=restricted,
        )

    def may_publish(self, topic: str) -> str | None:
        """The rule allowing this identity, in its current state, to publish `topic`; None if none does.

        Quarantine narrows the normal grants everywhere except the control namespace, where the normal
        grant decides exactly as if the unit were not quarantined: vehicle control is never touched.
        """
        # A unit publishes a handful of topics over and over (telemetry/gps every second), so the
        # answers are remembered; the memo is bounded so a client spraying random topics cannot grow it.
        rule = self._published.get(topic)
        if rule is None:
            if len(self._published) >= _MEMO_LIMIT:
                self._published.clear()
            rule = self._published[topic] = self._judge_publish(topic) or ""
        return rule or None

    def _judge_publish(self, topic: str) -> str | None:
        rule = self.publish.match(topic)
        if rule is None or self.quarantine is None or self.control.match(topic) is not None:
            return rule
        return self.quarantine.match(topic)

    def in_control_namespace(self, topic: str) -> bool:
        return self.control.match(topic) is not None

    def may_subscribe(self, topic_filter: str) -> str | None:
        """The rule of a grant covering the requested filter (a `$share/...` one judged on its filter)."""
        try:
            plain = parse_shared(topic_filter).topic_filter
        except TopicFilterInvalid:
            return None
        return self.subscribe.covering(plain)

    def may_receive(self, topic: str) -> str | None:
        """The rule of a subscribe grant matching `topic` (quarantine does not limit what a unit hears)."""
        # A wildcard subscriber (analytics on fleet/+/telemetry/#) hears the same fleet's topics over
        # and over: remembered like may_publish, bounded the same way.
        rule = self._received.get(topic)
        if rule is None:
            if len(self._received) >= _RECEIVE_MEMO_LIMIT:
                self._received.clear()
            rule = self._received[topic] = self.subscribe.match(topic) or ""
        return rule or None


@dataclass
class GrantCache:
    """Compiled grants per (identity, tier, quarantined, policy generation).

    A reload starts a new generation and drops every entry, so stale grants can neither be used nor
    pile up; `invalidate` drops one identity's entries when its state or tier changes.
    """

    policy: Policy
    generation: int = 0
    _compiled: dict[tuple[Identity, int | None, bool, bool, int], CompiledGrants] = field(
        default_factory=dict
    )

    def get(
        self, identity: Identity, tier: int | None, quarantined: bool, restricted: bool = False
    ) -> CompiledGrants:
        key = (identity, tier, quarantined, restricted, self.generation)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = CompiledGrants.for_identity(
                self.policy, identity, tier, quarantined, restricted
            )
        return compiled

    def reload(self, policy: Policy) -> None:
        self.policy = policy
        self.generation += 1
        self._compiled.clear()

    def invalidate(self, identity: Identity | None = None) -> None:
        if identity is None:
            self._compiled.clear()
            return
        for key in [k for k in self._compiled if k[0] == identity]:
            del self._compiled[key]

    def __len__(self) -> int:
        return len(self._compiled)
