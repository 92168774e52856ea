"""Grants compiled for one identity: what the hot path asks on every publish and every delivery.

A policy speaks in templates (`fleet/{id}/telemetry/#`); a session needs answers about concrete topics.
Templates are compiled once per profile (and tier) into a `TopicMatcher` shared by every identity of
that profile, with the identity's own id written as `ID` (U+0000, which no MQTT topic or filter can
hold: the codec refuses it). An `IdentityMatcher` reads the shared matcher for one identity: the levels
of a topic equal to its id are read as `ID` (every combination, so a literal grant naming that id
still matches). A `TopicMatcher` keeps literal grants in a dict (one lookup) and wildcard grants in a
small `SubscriptionTrie` (a walk over the topic's levels). No template is expanded and no grant list is
scanned per PUBLISH, and 10,000 units share one set of tries instead of holding 10,000 (~10 KB each).

When several grants match, the one written first in the file is reported, so a decision's rule is the
same whichever structure found it.

Subscriptions are judged differently from topics: a requested filter is allowed only if a single grant
*covers* it (`filter_covers`), so asking for more than was granted is refused rather than silently
narrowed. That is a handful of exact set comparisons per SUBSCRIBE, off the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import product

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

__all__ = ["ID", "CompiledGrants", "GrantCache", "IdentityMatcher", "TopicMatcher"]

ID = "\x00"  # the identity's own id inside a shared matcher
_MAX_OWN_LEVELS = 4  # a topic naming the id more often than this is matched by a linear scan

STATE_TOPIC = "fleet/{id}/state"  # where a restricted unit reports its posture (within roles.unit.publish)


class TopicMatcher:
    """Concrete filters, each with the rule that granted it; answers "which rule matches this topic"."""

    __slots__ = ("_exact", "_trie", "filters")

    def __init__(self, filters: Iterable[tuple[str, str]]) -> None:
        self.filters: tuple[tuple[str, str], ...] = tuple(filters)  # (concrete filter, rule), file order
        self._exact: dict[str, tuple[int, str]] = {}
        self._trie: SubscriptionTrie[str, int] | None = None
        for index, (topic_filter, rule) in enumerate(self.filters):
            if "+" in topic_filter or "#" in topic_filter:
                if self._trie is None:
                    self._trie = SubscriptionTrie()
                self._trie.add(topic_filter, rule, index, placeholder=ID)
            else:
                # An earlier grant that also matches this literal topic wins, as it would have on a
                # linear scan; settled here so the lookup stays one dict access.
                before = enumerate(self.filters[:index])
                first = ((i, r) for i, (f, r) in before if topic_matches(f, topic_filter))
                earlier = next(first, (index, rule))
                self._exact.setdefault(topic_filter, earlier)

    def match(self, topic: str) -> str | None:
        """The rule of the first grant whose filter matches the (valid) topic name, or None."""
        hit = self.match_indexed(topic)
        return None if hit is None else hit[1]

    def match_indexed(self, topic: str) -> tuple[int, str] | None:
        """(file position, rule) of the first grant matching the topic, or None."""
        exact = self._exact.get(topic)
        if exact is not None or self._trie is None:
            return exact
        hits = self._trie.match(topic)
        if not hits:
            return None
        rule, index = min(hits, key=lambda hit: hit[1])
        return index, rule

    def covering(self, topic_filter: str) -> str | None:
        """The rule of the first grant whose filter covers every topic `topic_filter` could match."""
        return next((rule for f, rule in self.filters if filter_covers(f, topic_filter)), None)

    def intersecting(self, topic_filter: str) -> list[str]:
        """Rules of the grants sharing at least one topic with `topic_filter`."""
        return [rule for f, rule in self.filters if filters_intersect(f, topic_filter)]


def _fill(grants: Iterable[Grant], values: dict[str, str]) -> TopicMatcher:
    return TopicMatcher((substitute(g.template, values), g.rule) for g in grants)


class IdentityMatcher:
    """A shared `TopicMatcher` (compiled with `ID` for the id) answering for one identity."""

    __slots__ = ("_ident", "_shared")

    def __init__(self, shared: TopicMatcher, ident: str) -> None:
        self._shared = shared
        self._ident = ident

    def match(self, topic: str) -> str | None:
        """The rule of the first grant matching the topic for this identity, or None."""
        ident = self._ident
        if ident not in topic:  # most topics of other identities, and every service topic
            return None if ID in topic else self._shared.match(topic)
        levels = topic.split("/")
        own = [i for i, level in enumerate(levels) if level == ident]
        if ID in topic:
            return None
        if not own:  # the id inside a level, not as one: the grants read the topic literally
            return self._shared.match(topic)
        if len(own) > _MAX_OWN_LEVELS:  # rare and odd (the id at many levels): the slow, exact way
            return next((rule for f, rule in self.filters if topic_matches(f, topic)), None)
        best: tuple[int, str] | None = None
        for choice in product((ID, ident), repeat=len(own)):
            for position, level in zip(own, choice, strict=True):
                levels[position] = level
            hit = self._shared.match_indexed("/".join(levels))
            if hit is not None and (best is None or hit[0] < best[0]):
                best = hit
        return None if best is None else best[1]

    @property
    def filters(self) -> tuple[tuple[str, str], ...]:
        """(filter, rule) with this identity's id filled in, in file order."""
        ident = self._ident
        return tuple((f.replace(ID, ident), rule) for f, rule in self._shared.filters)

    def covering(self, topic_filter: str) -> str | None:
        """The rule of the first grant whose filter covers every topic `topic_filter` could match."""
        return next((rule for f, rule in self.filters if filter_covers(f, topic_filter)), None)

    def intersecting(self, topic_filter: str) -> list[str]:
        """Rules of the grants sharing at least one topic with `topic_filter`."""
        return [rule for f, rule in self.filters if filters_intersect(f, topic_filter)]


SharedMatchers = dict[tuple[tuple[Grant, ...], tuple[tuple[str, str], ...]], TopicMatcher]


def _matcher(
    grants: Iterable[Grant], values: dict[str, str], ident: str, shared: SharedMatchers
) -> IdentityMatcher:
    """The identity's view of the matcher every identity with these grants and values shares."""
    grants = tuple(grants)
    key = (grants, tuple(sorted(values.items())))
    matcher = shared.get(key)
    if matcher is None:
        matcher = shared[key] = _fill(grants, values)
    return IdentityMatcher(matcher, ident)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledGrants:
    identity: Identity
    tier: int | None
    quarantined: bool
    profile: Profile  # the normal profile (its name prefixes deny rules, its limits drive the buckets)
    publish: IdentityMatcher
    subscribe: IdentityMatcher
    quarantine: IdentityMatcher | None  # None unless quarantined or restricted
    control: IdentityMatcher  # the control namespace, "{unit}" as "+": any unit's control topics
    # Restricted by device posture: diagnostic-only like quarantine, plus its own state topic
    # so that it can report a better posture and be let out.
    restricted: bool = False

    @classmethod
    def for_identity(
        cls,
        policy: Policy,
        identity: Identity,
        tier: int | None,
        quarantined: bool,
        restricted: bool = False,
        shared: SharedMatchers | None = None,
        role: str | None = None,
    ) -> CompiledGrants:
        """`shared`: matchers already compiled for the same policy (GrantCache keeps one per generation)."""
        # Certificates are checked at issuance; checked again because an id is pasted into filters
        # and an id holding "/" or "+" would widen every grant it fills. Raises IdentityError.
        validate_id(identity.kind, identity.id)
        shared = {} if shared is None else shared
        ident = identity.id
        profile = policy.profile_for(identity.kind, ident, tier, role)
        values = {"{id}": ID, "{unit}": "+"}
        if identity.kind == "partner":
            values["{partner}"] = ID
            if tier is not None:
                values["{tier}"] = str(tier)
        narrowed: tuple[Grant, ...] = ()
        if quarantined or restricted:
            narrowed = policy.quarantine_profile(identity.kind).publish
        if restricted:
            narrowed = (*narrowed, Grant("posture/state", STATE_TOPIC, "posture"))
        quarantine = _matcher(narrowed, values, ident, shared) if quarantined or restricted else None
        return cls(
            identity,
            tier,
            quarantined,
            profile,
            publish=_matcher(profile.publish, values, ident, shared),
            subscribe=_matcher(profile.subscribe, values, ident, shared),
            quarantine=quarantine,
            control=_matcher(policy.control_namespace, values, ident, shared),
            restricted=restricted,
        )

    def may_publish(self, topic: str) -> str | None:
        """The rule allowing this identity, in its current state, to publish `topic`; None if none does.

        Quarantine narrows the normal grants everywhere except the control namespace, where the normal
        grant decides exactly as if the unit were not quarantined: vehicle control is never touched.

        Not remembered here: the policy engine remembers its answers per identity and topic (engine.py,
        `_Seen`), and asks again only when these grants may have changed.
        """
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
        """The rule of a subscribe grant matching `topic` (quarantine does not limit what a unit hears).
        Not remembered here, like `may_publish`."""
        return self.subscribe.match(topic)


@dataclass
class GrantCache:
    """Compiled grants per (identity, tier, quarantined, restricted, role, policy generation).

    A reload starts a new generation and drops every entry, so stale grants can neither be used nor
    pile up; `invalidate` drops one identity's entries when its state or tier changes.
    """

    policy: Policy
    generation: int = 0
    _compiled: dict[tuple[Identity, int | None, bool, bool, str | None, int], CompiledGrants] = field(
        default_factory=dict
    )
    _shared: SharedMatchers = field(default_factory=dict)  # this generation's tries, by grants and values

    def get(
        self,
        identity: Identity,
        tier: int | None,
        quarantined: bool,
        restricted: bool = False,
        role: str | None = None,
    ) -> CompiledGrants:
        key = (identity, tier, quarantined, restricted, role, self.generation)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = CompiledGrants.for_identity(
                self.policy, identity, tier, quarantined, restricted, self._shared, role
            )
        return compiled

    def reload(self, policy: Policy) -> None:
        self.policy = policy
        self.generation += 1
        self._compiled.clear()
        self._shared.clear()

    def invalidate(self, identity: Identity | None = None) -> None:
        if identity is None:
            self._compiled.clear()
            return
        for key in [k for k in self._compiled if k[0] == identity]:
            del self._compiled[key]

    def __len__(self) -> int:
        return len(self._compiled)
