"""The policy engine: every connect, subscribe, publish and delivery judged from identity + state + policy.

Theory of operation. The broker asks; the engine answers with a `Decision` carrying a stable reason and
the rule that fired. Each answer is built from small named checks in a fixed order, so that the reason
is the most useful one: first the built-in floor (client id = certificate id; lab clients), then the
identity's standing (known, not revoked, certificate not revoked or expired), then authorization
(`$`-topics and the gateway's mode command, grants, quarantine), and only then the limits (payload
size, rate). A publish the policy
refuses therefore never spends rate tokens, and a flood of foreign topics is reported as what it is.

State. The engine keeps no decision history (counting denials is the broker's job). It caches, per
identity, the directory's answer and the compiled grants, and per identity the token buckets. The
runtime calls `invalidate(identity)` when a registry fact changes (quarantine, release, tier,
revocation) and `reload(policy)` for a new policy; the next decision then sees the change, which is how
live sessions are re-evaluated within the same event-loop turn.

Throttles. A detector's `throttle` response calls `throttle(identity, factor, until)`: until then the
identity may publish at `factor` times its profile's message rate, and anything above that is denied as
`throttled` with the detector's rule. The throttle is checked after authorization and before the
policy's own buckets, so a throttled refusal costs no policy tokens; it outlives cache invalidations
and policy reloads (a detector's verdict is not undone by an unrelated change) and ends by itself.
While the identity is quarantined the throttle does not apply: quarantine is the stronger step, and
the diagnostics a quarantined unit may still send are what ops need.

Rates are limits, not violations. `rate_limited` and `throttled` denials carry `violation=False`: a
unit sending too much is slowed (and, by the detectors, throttled and quarantined), never disconnected
for it, because a disconnect would end its vehicle-control channel too. Probing other namespaces,
`$`-topics and oversize payloads still count towards the connection's violation limit.

The control lane. A publish into the control namespace (a unit's control acks, dispatch's control
messages) is never throttled and draws on buckets of its own, with the profile's limits: a unit that
floods telemetry, and the throttle a detector puts on it, cannot starve its control acks, while a flood
of control messages still meets the role's rate. Quarantine, likewise, never narrows it (grants.py).

Quarantine narrows what a unit may *publish* outside the control namespace and nothing else: it still
connects, still receives its cmd and control topics, and its control publishes are judged by its normal
grants, exactly as if it were not quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.packets import Connect
from gateway.mqtt.topics import parse_shared
from gateway.policy.access import (
    RESERVED_FOR_GATEWAY,
    CertificateOnlyPolicy,
    identity_scope,
    is_mode_command,
)
from gateway.policy.decision import Decision, allow, deny
from gateway.policy.directory import IdentityDirectory, IdentityState
from gateway.policy.grants import CompiledGrants, GrantCache
from gateway.policy.peer import Peer
from gateway.policy.posture import (
    Posture,
    PostureVerdict,
    evaluate,
    parse_posture_from_user_properties,
)
from gateway.policy.rate import TokenBucket
from gateway.policy.rules import Policy, Profile
from pki.names import Identity, IdentityError

__all__ = ["PolicyEngine"]

_DOLLAR_RULE = "builtin/dollar_topics"
_TOPIC_MEMO_LIMIT = 256  # topics judged for publishing and remembered, per identity
# ... for receiving: a fleet-wide subscriber hears every unit's topics (~8 per unit), so this must hold
# a whole fleet's worth or the memo is emptied before it is reused.
_DELIVERY_MEMO_LIMIT = 16_384


@lru_cache(maxsize=4096)
def _allowed(reason: str, rule: str) -> Decision:
    # Decisions are immutable values, so the hot path hands out shared ones instead of allocating.
    return allow(reason, rule)


@dataclass(slots=True)
class _Buckets:
    """One identity's rate state; rebuilt when its profile (role, tier) changes."""

    profile: str
    messages: TokenBucket | None
    octets: TokenBucket | None

    @staticmethod
    def of(profile: Profile, now: float) -> _Buckets:
        lim = profile.limits
        messages = octets = None
        if lim.messages_per_second is not None:
            burst = lim.burst if lim.burst is not None else max(1.0, lim.messages_per_second)
            messages = TokenBucket(lim.messages_per_second, burst, now)
        if lim.bytes_per_second is not None:
            # One second's worth, but never less than one maximum-size message (it would never pass).
            burst = lim.bytes_burst or max(lim.bytes_per_second, lim.max_payload or 0)
            octets = TokenBucket(lim.bytes_per_second, burst, now)
        return _Buckets(profile.name, messages, octets)


@dataclass(slots=True)
class _Throttle:
    """A detector's temporary cut of one identity's message rate."""

    factor: float
    until: float
    rule: str
    bucket: TokenBucket | None = None  # built at the first publish, from the profile's rate then
    rate: float = 0.0  # the rate `bucket` was built for; a reload with other limits rebuilds it


class _Granted(NamedTuple):
    """The part of a publish decision that depends on the topic and the compiled grants alone."""

    rule: str  # the grant that allows it
    control: bool  # in the control namespace: the control lane, never throttled, buckets of its own
    publish: Decision  # _allowed("publish_granted", rule), handed out when nothing else refuses


@dataclass(slots=True)
class _Seen:
    """What the engine knows about one identity until it is told something changed."""

    epoch: int  # the engine's epoch when `state` was read; any other value means "ask again"
    state: IdentityState
    grants: CompiledGrants
    revoked: bool  # state.is_revoked, read once per refresh (asked twice per routed message)
    buckets: _Buckets | None = None  # kept across invalidations: a state change must not refill them
    control: _Buckets | None = None  # the control lane's own, kept the same way
    # topic -> what `_judge_topic` said with these grants: a unit publishes a handful of topics over
    # and over, so the `$` and mode-command checks, the grant and the control lane are looked up once
    # per topic, not per message. Emptied with every refresh (new grants); bounded, so a client
    # spraying random topics cannot grow it; made at the identity's first publish.
    topics: dict[str, _Granted | Decision] | None = None
    # topic -> what `_judge_delivery` said with these grants, the same way for what it receives: a
    # fleet-wide subscriber (analytics on fleet/+/telemetry/#) hears every unit's topics over and over.
    deliveries: dict[str, Decision] | None = None


class PolicyEngine:
    """`AccessPolicy` over a loaded `Policy` and an `IdentityDirectory`."""

    def __init__(
        self, policy: Policy, directory: IdentityDirectory, *, clock_skew_tolerance: float = 0.0
    ) -> None:
        self._clock_skew = clock_skew_tolerance  # seconds a certificate may outlive its not_after
        self._floor = CertificateOnlyPolicy()
        self._directory = directory
        self._grants = GrantCache(policy)
        # One entry per identity, so a decision costs one lookup; unknown identities are not cached.
        self._seen: dict[Identity, _Seen] = {}
        self._epoch = 0
        self._revoked_serials: dict[int, bool] = {}
        self._throttles: dict[Identity, _Throttle] = {}
        # Device posture: the last report per identity (CONNECT user properties or retained
        # state), the CONNECT it was last read from (re-authorization asks about the same CONNECT again
        # and must not undo a later state report), and who is restricted because of it.
        self._reported: dict[Identity, Posture] = {}
        self._posture_connect: dict[Identity, Connect] = {}
        self._verdicts: dict[Identity, PostureVerdict] = {}

    def restricted_count(self) -> int:
        """Identities held to the restricted profile by their reported posture right now."""
        return sum(1 for verdict in self._verdicts.values() if verdict.outcome == "restricted")

    @property
    def policy(self) -> Policy:
        return self._grants.policy

    @property
    def generation(self) -> int:
        return self._grants.generation

    def reload(self, policy: Policy) -> None:
        """Judge everything from now on by `policy`; compiled grants and rate buckets start afresh."""
        self._grants.reload(policy)
        self._seen.clear()

    def invalidate(self, identity: Identity | None = None) -> None:
        """A registry fact changed (state, tier, revocation): ask the directory again next time."""
        self._revoked_serials.clear()  # which identity a serial belongs to is not known here
        self._grants.invalidate(identity)
        if identity is None:
            self._epoch += 1  # every entry is stale at once, without a walk over the fleet
        elif (seen := self._seen.get(identity)) is not None:
            seen.epoch = -1

    def max_subscriptions_for(self, peer: Peer) -> int | None:
        """The policy's subscription cap for this peer; None: only the broker's own limit applies."""
        if peer.identity is None:
            return None
        try:
            seen = self._lookup(peer.identity)
        except IdentityError:
            return None
        return None if seen is None else seen.grants.profile.limits.max_subscriptions

    def share_scope(self, peer: Peer, group: str) -> str:
        """Who this peer's `$share/{group}/...` subscriptions share messages with.

        Its own identity's subscriptions only, unless its profile lists `group` in `share_groups`:
        then every identity of that profile (e.g. several dispatch workers). So an identity naming
        another's group (an auditor subscribing `$share/dispatch-workers/...`) gets a group of its
        own and diverts nothing; the broker keys groups by this answer (broker/routing.py).
        """
        if peer.identity is not None:
            try:
                seen = self._lookup(peer.identity)
            except IdentityError:
                seen = None
            if seen is not None and group in seen.grants.profile.share_groups:
                return f"profile/{seen.grants.profile.name}"
        return identity_scope(peer)

    def certificate_deadline(self, peer: Peer) -> float | None:
        """When the peer's certificate stops being acceptable: its not_after plus the clock-skew
        tolerance (the same grace admission and decide_connect give). The broker ends a live
        session then; None: nothing to wait for (lab clients, sessions restored from disk)."""
        not_after = peer.certificate_not_after
        return None if not_after is None else not_after + self._clock_skew

    def violation_limit(self) -> int:
        """Denied publishes and subscribes one connection may collect before it is disconnected."""
        return self.policy.max_denied_before_disconnect

    def throttle(
        self, identity: Identity, factor: float, until: float, rule: str = "detector/throttle"
    ) -> bool:
        """Cut `identity`'s message rate to `factor` times its profile's, until `until` (the `now` clock).

        Returns False, and changes nothing, when the identity is unknown or its profile has no message
        rate to cut (operators, most services): there is no rate to take a share of.
        """
        if not 0 < factor < 1:
            raise ValueError(f"a throttle keeps a share of the rate: 0 < factor < 1, not {factor!r}")
        try:
            seen = self._lookup(identity)
        except IdentityError:
            return False
        if seen is None or seen.grants.profile.limits.messages_per_second is None:
            return False
        self._throttles[identity] = _Throttle(factor, until, rule)
        return True

    def unthrottle(self, identity: Identity) -> bool:
        """End a throttle early (an operator's call); False if there was none."""
        return self._throttles.pop(identity, None) is not None

    def throttled_until(self, identity: Identity, now: float) -> float | None:
        throttle = self._throttles.get(identity)
        return throttle.until if throttle is not None and now < throttle.until else None

    # --- the four questions ---------------------------------------------------------------------

    def decide_connect(self, peer: Peer, connect: Connect, now: float) -> Decision:
        floor = self._floor.decide_connect(peer, connect, now)
        if not floor.allowed or peer.identity is None:
            return floor
        seen = self._standing(peer, now, check_expiry=True)
        if isinstance(seen, Decision):
            return seen
        if peer.identity.kind != "unit" and self._id_held_by_a_unit(peer.identity):
            return deny("client_id_held_by_unit", "builtin/client_id_binding")
        grants = seen.grants
        if peer.identity.kind == "partner" and grants.tier is None:
            return deny("partner_without_tier", "roles/partner")
        verdict = self._connect_posture(peer.identity, connect, now)
        if verdict is not None and verdict.outcome == "refused":
            code = verdict.shortfalls[0].code if verdict.shortfalls else "posture_refused"
            return deny(code, verdict.rule)
        grants = self._standing_grants(peer.identity, grants)
        if grants.restricted and not grants.quarantined and verdict is not None:
            return allow("connect_restricted", verdict.rule)
        rule = f"quarantine/{peer.identity.kind}" if grants.quarantined else grants.profile.name
        return allow("connect_allowed", rule)

    # --- device posture ---------------------------------------------------------------------------

    def report_posture(self, identity: Identity, posture: Posture, now: float) -> PostureVerdict | None:
        """A unit reported posture after connecting (its retained state); returns the new verdict when
        the outcome changed (the caller re-authorizes live sessions), else None."""
        requirement = self.policy.context.posture.get(identity.kind)
        if requirement is None:
            return None
        self._reported[identity] = posture
        return self._judge_posture(identity, now)

    def posture_of(self, identity: Identity) -> PostureVerdict | None:
        return self._verdicts.get(identity)

    def _connect_posture(self, identity: Identity, connect: Connect, now: float) -> PostureVerdict | None:
        requirement = self.policy.context.posture.get(identity.kind)
        if requirement is None:
            return None
        if self._posture_connect.get(identity) is not connect:  # a new CONNECT: its report counts
            self._posture_connect[identity] = connect
            reported = parse_posture_from_user_properties(connect.properties.user_properties)
            if reported is not None:
                self._reported[identity] = reported
        self._judge_posture(identity, now)
        return self._verdicts.get(identity)

    def _judge_posture(self, identity: Identity, now: float) -> PostureVerdict | None:
        """Evaluate the identity's last report; returns the verdict if its outcome changed."""
        requirement = self.policy.context.posture.get(identity.kind)
        verdict = evaluate(self._reported.get(identity), requirement, datetime.fromtimestamp(now, UTC))
        before = self._verdicts.get(identity)
        self._verdicts[identity] = verdict
        if before is not None and before.outcome == verdict.outcome:
            return None
        if (seen := self._seen.get(identity)) is not None:
            seen.epoch = -1  # recompile its grants: restricted or not
        return verdict

    def _standing_grants(self, identity: Identity, grants: CompiledGrants) -> CompiledGrants:
        seen = self._lookup(identity)
        return grants if seen is None else seen.grants

    def decide_publish(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        if peer.identity is None:
            return self._floor.decide_publish(peer, topic, payload_size, qos, retain, now)
        granted = self._may_publish(peer, topic, payload_size, now)
        if isinstance(granted, Decision):
            return granted
        seen, (_, control, allowed) = granted
        if control:  # the control lane: never throttled, buckets of its own
            return _spend(seen, payload_size, now, control=True) or allowed
        # Quarantine supersedes a throttle: the ladder has climbed past it, and what a quarantined unit may
        # still send (its diagnostics) is what ops need to look into it.
        if (
            self._throttles
            and not seen.grants.quarantined
            and (refusal := self._throttled(peer.identity, seen.grants.profile, now)) is not None
        ):
            return refusal
        return _spend(seen, payload_size, now) or allowed

    def decide_will(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        """A will, as it is about to be published: the same standing, grants, quarantine and size
        checks as any publish, judged now (the unit may have been quarantined or revoked since it
        connected). No rate budget is spent and no throttle applies: a will is one message per
        connection, and a unit that flooded must still be heard going offline."""
        if peer.identity is None:
            return self._floor.decide_will(peer, topic, payload_size, qos, retain, now)
        granted = self._may_publish(peer, topic, payload_size, now)
        return granted if isinstance(granted, Decision) else _allowed("will_granted", granted[1].rule)

    def _may_publish(
        self, peer: Peer, topic: str, payload_size: int, now: float
    ) -> tuple[_Seen, _Granted] | Decision:
        """Authorization for a publish (standing, `$`-topics, grants and quarantine, payload size):
        the identity's entry and what granted the topic, or the denial. Spends nothing."""
        seen = self._standing(peer, now, check_expiry=True)
        if isinstance(seen, Decision):
            return seen
        topics = seen.topics
        granted = topics.get(topic) if topics is not None else None
        if granted is None:
            granted = self._judge_topic(seen, topic)
        if isinstance(granted, Decision):
            return granted
        max_payload = seen.grants.profile.limits.max_payload
        if max_payload is not None and payload_size > max_payload:
            return deny("payload_too_large", f"{seen.grants.profile.name}/limits/max_payload")
        return seen, granted

    def _judge_topic(self, seen: _Seen, topic: str) -> _Granted | Decision:
        """The checks of a publish that depend on the topic and the identity's grants alone, in
        their order (`$`-topics, the mode command, grants and quarantine), remembered in `seen`."""
        judged: _Granted | Decision
        grants = seen.grants
        if topic[:1] == "$":
            judged = deny("reserved_topic", _DOLLAR_RULE)
        elif is_mode_command(topic):  # whatever a grant says (rules.py refuses grants naming only it)
            judged = RESERVED_FOR_GATEWAY
        elif (rule := grants.may_publish(topic)) is None:
            judged = _publish_refusal(grants, topic)
        else:
            judged = _Granted(rule, grants.in_control_namespace(topic), _allowed("publish_granted", rule))
        topics = seen.topics
        if topics is None or len(topics) >= _TOPIC_MEMO_LIMIT:
            topics = seen.topics = {}
        topics[topic] = judged
        return judged

    def decide_subscribe(self, peer: Peer, topic_filter: str, now: float) -> Decision:
        if peer.identity is None:
            return self._floor.decide_subscribe(peer, topic_filter, now)
        seen = self._standing(peer, now, check_expiry=True)
        if isinstance(seen, Decision):
            return seen
        try:
            plain = parse_shared(topic_filter).topic_filter
        except TopicFilterInvalid:
            return deny("invalid_filter", "builtin/topic_filter")
        if plain[:1] == "$" and peer.identity.kind != "operator":
            return deny("reserved_topic", _DOLLAR_RULE)
        rule = seen.grants.subscribe.covering(plain)
        return _subscribe_refusal(seen.grants, plain) if rule is None else _allowed("subscribe_granted", rule)

    def decide_delivery(self, peer: Peer, topic: str, now: float) -> Decision:
        if peer.identity is None:
            return self._floor.decide_delivery(peer, topic, now)
        # A live peer whose certificate has expired receives nothing (the broker also ends its session
        # at that moment). An offline session's peer carries no certificate dates (the broker drops
        # them at disconnect, and a restored session never had them): its messages are queued by the
        # identity's standing and judged again against the certificate it comes back with.
        seen = self._standing(peer, now, check_expiry=True)
        if isinstance(seen, Decision):
            return seen
        deliveries = seen.deliveries
        judged = deliveries.get(topic) if deliveries is not None else None
        return judged if judged is not None else self._judge_delivery(seen, topic)

    def _judge_delivery(self, seen: _Seen, topic: str) -> Decision:
        """The checks of a delivery that depend on the topic and the identity's grants alone
        (`$`-topics, then the subscribe grants), remembered in `seen`."""
        grants = seen.grants
        if topic[:1] == "$" and grants.identity.kind != "operator":
            judged = deny("reserved_topic", _DOLLAR_RULE)
        elif (rule := grants.may_receive(topic)) is None:
            judged = deny("topic_not_granted", f"{grants.profile.name}/subscribe")
        else:
            judged = _allowed("delivery_granted", rule)
        deliveries = seen.deliveries
        if deliveries is None or len(deliveries) >= _DELIVERY_MEMO_LIMIT:
            deliveries = seen.deliveries = {}
        deliveries[topic] = judged
        return judged

    # --- checks -----------------------------------------------------------------------------------

    def _standing(self, peer: Peer, now: float, check_expiry: bool) -> _Seen | Decision:
        """What the engine knows of the identity if it is in good standing now, else the denial.

        Facts the peer does not carry (a session restored from disk has no certificate serial) are
        not checked here; the TLS layer verified them when that certificate was presented.
        """
        identity = peer.identity
        assert identity is not None  # callers handle lab clients first
        seen = self._seen.get(identity)
        if seen is None or seen.epoch != self._epoch:  # `_lookup`'s own test, without the call
            try:
                seen = self._lookup(identity)
            except IdentityError:
                return deny("invalid_identity", "builtin/identity")
            if seen is None:
                return deny("unknown_identity", "registry/identity")
        if seen.revoked:
            return deny("identity_revoked", "registry/identity")
        serial = peer.certificate_serial
        if serial is not None:
            revoked = self._revoked_serials.get(serial)
            if revoked is None:
                revoked = self._serial_revoked(serial)
            if revoked:
                return deny("certificate_revoked", "registry/certificate")
        not_after = peer.certificate_not_after
        if check_expiry and not_after is not None and not_after + self._clock_skew < now:
            return deny("certificate_expired", "builtin/certificate_validity")
        return seen

    def _id_held_by_a_unit(self, identity: Identity) -> bool:
        """Does a unit have this (non-unit) identity's id? Then its client id would be the unit's.

        The registry refuses such pairs now, but one written before it did may remain; its
        non-unit half is refused at CONNECT, so it can never sit on the unit's client id (the
        broker refuses a takeover by another identity, which would otherwise lock the unit out
        for as long as the squatter's session lives). Fix the registry: remove one of the two.
        """
        unit = Identity("unit", identity.id, identity.trust_domain)
        return self._directory.state_of(unit) is not None

    def _lookup(self, identity: Identity) -> _Seen | None:
        """The cached entry, refreshed from the directory when stale; None for an unknown identity."""
        seen = self._seen.get(identity)
        if seen is not None and seen.epoch == self._epoch:
            return seen
        state = self._directory.state_of(identity)
        if state is None:
            return None
        verdict = self._verdicts.get(identity)
        restricted = verdict is not None and verdict.outcome == "restricted"
        # IdentityError for a bad id
        grants = self._grants.get(identity, state.tier, state.is_quarantined, restricted, state.role)
        if seen is None:
            seen = self._seen[identity] = _Seen(self._epoch, state, grants, state.is_revoked)
        else:
            seen.epoch, seen.state, seen.grants, seen.revoked = self._epoch, state, grants, state.is_revoked
            seen.topics = seen.deliveries = None  # judged with the grants before
        return seen

    def _throttled(self, identity: Identity, profile: Profile, now: float) -> Decision | None:
        throttle = self._throttles.get(identity)
        if throttle is None:
            return None
        if now >= throttle.until:
            del self._throttles[identity]
            return None
        rate = (profile.limits.messages_per_second or 0.0) * throttle.factor
        if rate <= 0:
            return None  # the profile lost its rate limit in a reload: nothing left to take a share of
        if throttle.bucket is None or throttle.rate != rate:
            throttle.bucket, throttle.rate = TokenBucket(rate, max(1.0, rate), now), rate
        return None if throttle.bucket.take(now) else deny("throttled", throttle.rule, violation=False)

    def _serial_revoked(self, serial: int) -> bool:
        revoked = self._revoked_serials.get(serial)
        if revoked is None:
            revoked = self._revoked_serials[serial] = self._directory.is_certificate_revoked(serial)
        return revoked


def _spend(seen: _Seen, payload_size: int, now: float, *, control: bool = False) -> Decision | None:
    """Take one message and `payload_size` bytes from the identity's buckets (the control lane's when
    `control`), or say which is empty. A refusal is not a violation (see the module docstring).

    The byte bucket is asked before the message bucket is charged, so a refusal costs nothing.
    """
    profile = seen.grants.profile
    buckets = seen.control if control else seen.buckets
    if buckets is None or buckets.profile != profile.name:
        buckets = _Buckets.of(profile, now)
        if control:
            seen.control = buckets
        else:
            seen.buckets = buckets
    messages, octets = buckets.messages, buckets.octets
    if octets is not None and octets.available(now) < payload_size:
        return deny("rate_limited", f"{profile.name}/limits/bytes_per_second", violation=False)
    if messages is not None and not messages.take(now):
        return deny("rate_limited", f"{profile.name}/limits/messages_per_second", violation=False)
    if octets is not None:
        octets.take(now, payload_size)
    return None


def _publish_refusal(grants: CompiledGrants, topic: str) -> Decision:
    kind = grants.identity.kind
    if grants.quarantined and grants.publish.match(topic) is not None:
        return deny("quarantined", f"quarantine/{kind}", violation=False)
    if grants.restricted and grants.publish.match(topic) is not None:
        return deny("posture_restricted", f"posture/{kind}", violation=False)
    if _outside_own_namespace(grants.identity, topic):
        return deny("topic_outside_namespace", f"{grants.profile.name}/publish")
    return deny("topic_not_granted", f"{grants.profile.name}/publish")


def _subscribe_refusal(grants: CompiledGrants, plain: str) -> Decision:
    rule = f"{grants.profile.name}/subscribe"
    if _outside_own_namespace(grants.identity, plain):
        return deny("topic_outside_namespace", rule)
    # Broader than what was granted, yet reaching into it: what a subscription-overreach detector wants
    # to hear about (e.g. "#", or fleet/+/cmd/# from a unit granted fleet/<id>/cmd/#).
    if grants.subscribe.intersecting(plain):
        return deny("wildcard_overreach", rule)
    return deny("filter_not_granted", rule)


def _outside_own_namespace(identity: Identity, topic: str) -> bool:
    """A unit naming another unit's fleet/<unit>/... space by its literal id (a topic escape)."""
    if identity.kind != "unit" or not topic.startswith("fleet/"):
        return False
    # The unit namespace is fleet/{id}/# (rules.UNIT_NAMESPACE); wildcards there are not a literal escape.
    return topic.split("/", 2)[1] not in ("+", "#", identity.id)
