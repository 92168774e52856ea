"""Continuous evaluation: detectors fed by the broker, responses carried out through Operations.

Theory of operation. `ContinuousEvaluator` is pure: it is told what happened (`observe_publish` for each
accepted PUBLISH, `observe_events` for the broker's drained events, `observe_handshake_failures` for TLS
refusals), each with the time, and `evaluate(now)` answers with `Response` values. Only subjects that
saw something since the last evaluation are looked at, so an idle fleet costs nothing. `apply()` is the
thin adapter at the edge: it hands each response to Operations (a detector's quarantine is a
quarantine, audited as made by `detector/<name>`), the engine (throttle) and the audit log (one
`detector.fired` record per response, with detector, evidence, response and rule). `wire()` connects
all of it to a running Gateway.

Memory is bounded: per-subject state lives in LRU maps capped at `max_subjects`; subjects idle for
`idle_seconds` are dropped at evaluation (their windows are long empty by then; what is lost is the
last GPS fix of a unit away for hours, and a jump across such a gap is rarely impossible anyway).
Addresses (handshake failures) have their own map, because they are not bounded by the registry.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.broker.events import (
    ClientConnected,
    ClientDisconnected,
    ConnectRefused,
    PublishDenied,
    SessionTakenOver,
    SubscribeDenied,
    WillDropped,
)
from gateway.policy.detector_rules import DetectorSettings, Plan
from gateway.policy.detectors import (
    CloningDetector,
    CountDetector,
    Firing,
    NetworkDetector,
    PublishRateDetector,
    TravelDetector,
    host_of,
)
from gateway.policy.peer import Peer
from gateway.policy.responses import LadderState, Response, climb
from pki.names import Identity

__all__ = ["ContinuousEvaluator", "EvaluatorStats", "Wiring", "apply", "wire"]

log = logging.getLogger("fleetgate.detectors")

# Refusals that are a publish *attempt* the rate limit stopped: a flood is what was tried, not what got in.
_RATE_REASONS = frozenset({"rate_limited", "throttled"})
_OVERREACH_REASONS = frozenset({"wildcard_overreach", "filter_not_granted", "topic_outside_namespace"})
_MAX_REASON = 480  # Operations refuses quarantine reasons over 500 characters
# Subjects judged between two points where the running gateway lets the event loop serve reads
# (`evaluate_steps`): ~2.5 µs each, so a slice holds the loop for well under a millisecond.
EVALUATE_SLICE = 256


class _Detector(Protocol):
    def fired(self, now: float) -> Firing | None: ...


@dataclass(eq=False, slots=True)
class _Subject:
    """Everything the evaluator keeps about one identity or address; detectors made on first need."""

    key: Identity | str
    last_seen: float
    rate: PublishRateDetector | None = None
    travel: TravelDetector | None = None
    detectors: dict[str, _Detector] = field(default_factory=dict)  # the rest, by detector key
    ladders: dict[str, LadderState] = field(default_factory=dict)


@dataclass
class EvaluatorStats:
    subjects: int = 0
    addresses: int = 0
    evicted: int = 0
    firings: int = 0
    responses: int = 0
    suppressed: int = 0
    malformed_fixes: int = 0  # of subjects still held
    by_detector: dict[str, int] = field(default_factory=dict)


class ContinuousEvaluator:
    def __init__(
        self, settings: DetectorSettings, *, max_subjects: int = 50_000, idle_seconds: float = 3 * 3600.0
    ) -> None:
        self.max_subjects = max_subjects
        self.idle_seconds = idle_seconds
        self._subjects: OrderedDict[Identity, _Subject] = OrderedDict()
        self._addresses: OrderedDict[str, _Subject] = OrderedDict()
        self._dirty: dict[_Subject, None] = {}  # an ordered set: evaluated in the order seen
        self.stats = EvaluatorStats()
        self.reconfigure(settings)

    @property
    def settings(self) -> DetectorSettings:
        return self._settings

    def reconfigure(self, settings: DetectorSettings) -> None:
        """New thresholds (a policy reload that changed them): windows and ladders start afresh."""
        unchanged = getattr(self, "_settings", None) == settings
        self._settings = settings
        if unchanged:
            return  # a reload that left `detectors:` alone keeps every window and ladder
        self._on = settings.enabled()
        self._publish_kinds = frozenset().union(
            *(self._on[n].kinds for n in ("publish_rate", "impossible_travel") if n in self._on)
        )
        self._subjects.clear()
        self._addresses.clear()
        self._dirty.clear()

    # --- observing ---------------------------------------------------------------------------------

    def observe_publish(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        """The broker's publish observer: every accepted client PUBLISH. Kept to O(1) and no parsing
        except the unit's own GPS topic (an exact string comparison decides that)."""
        identity = peer.identity
        if identity is None or identity.kind not in self._publish_kinds:
            return  # lab clients have no identity to judge; services' volumes are theirs to choose
        subjects = self._subjects
        subject = subjects.get(identity)
        if subject is not None:  # what _subject does for a known one, without the call
            subjects.move_to_end(identity)
            subject.last_seen = now
        else:
            subject = self._subject(identity, now)
        if subject.rate is not None:
            subject.rate.observe(now)
        travel = subject.travel
        if travel is not None and topic == travel.topic:
            travel.observe(payload, now)
        self._dirty[subject] = None

    def last_fix(self, identity: Identity) -> tuple[float, float, float] | None:
        """The last GPS fix the impossible-travel detector believes for `identity` (a cluster's node
        hands it to the others when the unit leaves: gateway/app/cluster_sessions.py)."""
        subject = self._subjects.get(identity)
        return None if subject is None or subject.travel is None else subject.travel.last_fix

    def adopt_fix(self, identity: Identity, fix: tuple[float, float, float], now: float) -> None:
        """Another node's last fix for a unit that left it (TravelDetector.adopt)."""
        travel = self._settings.impossible_travel
        if not (travel.enabled and identity.kind in travel.kinds):
            return
        subject = self._subject(identity, now)
        if subject.travel is not None:
            subject.travel.adopt(fix, now)
            self._dirty[subject] = None

    def observe_events(self, events: Iterable[object], now: float) -> None:
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event, now)

    def observe_handshake_failures(self, failures: Iterable[Any], now: float) -> None:
        """TLS admissions that failed (`HandshakeFailure(address, reason, at)`); an `identity`
        attribute, when a failure carries one, is counted per identity too."""
        for failure in failures:
            at = float(getattr(failure, "at", now))
            self._address_failure(str(failure.address), str(failure.reason), at)
            identity = getattr(failure, "identity", None)
            if isinstance(identity, Identity):
                self._identity_failure(identity, str(failure.reason), at)

    def _on_connected(self, event: ClientConnected, now: float) -> None:
        identity = event.peer.identity
        if identity is None:
            return
        self._count(identity, "connect_flapping", now, event.peer.address)
        network = self._detector(identity, "source_network", now)
        if isinstance(network, NetworkDetector):
            network.observe_connect(event.peer.address, now)

    def _on_disconnected(self, event: ClientDisconnected, now: float) -> None:
        identity = event.peer.identity
        subject = self._subjects.get(identity) if identity is not None else None
        network = subject.detectors.get("source_network") if subject is not None else None
        if isinstance(network, NetworkDetector):
            network.observe_seen(now)

    def _on_refused(self, event: ConnectRefused, now: float) -> None:
        self._address_failure(event.peer.address, event.reason, now)
        if event.peer.identity is not None:
            self._identity_failure(event.peer.identity, event.reason, now)

    def _on_taken_over(self, event: SessionTakenOver, now: float) -> None:
        identity = event.new_peer.identity
        if identity is None or identity != event.old_peer.identity:
            # Cloning is one identity on two devices. A takeover between two identities (the broker
            # allows only a lab client's session to give way to a certificate holder) says nothing
            # about either, and counting it for the one that took its session back would let an
            # impostor get its victim quarantined.
            return
        cloning = self._detector(identity, "cloning", now)
        if isinstance(cloning, CloningDetector):
            cloning.observe_takeover(event.old_peer.address, event.new_peer.address, now)

    def _on_publish_denied(self, event: PublishDenied, now: float) -> None:
        identity = event.peer.identity
        if identity is None:
            return
        if event.reason in _RATE_REASONS:
            if identity.kind not in self._publish_kinds:
                return
            subject = self._subject(identity, now)
            if subject.rate is not None:
                subject.rate.observe(now)
                self._dirty[subject] = None
        elif event.reason in self._settings.denial_burst.reasons:
            self._count(identity, "denial_burst", now, event.topic)

    def _on_will_dropped(self, event: WillDropped, now: float) -> None:
        # A will aimed at another unit's topics is a probe like a publish there; a quarantined unit's
        # own will is not (`quarantined` is not among the denial-burst reasons by default).
        identity = event.peer.identity
        if identity is not None and event.reason in self._settings.denial_burst.reasons:
            self._count(identity, "denial_burst", now, event.topic)

    def _on_subscribe_denied(self, event: SubscribeDenied, now: float) -> None:
        identity = event.peer.identity
        if identity is None or event.revoked:
            return  # a subscription dropped by re-authorization is the policy's doing, not the client's
        if event.reason in self._settings.denial_burst.reasons:
            self._count(identity, "denial_burst", now, event.topic_filter)
        wildcard = "#" in event.topic_filter or "+" in event.topic_filter
        if wildcard and event.reason in _OVERREACH_REASONS:
            self._count(identity, "subscription_overreach", now, event.topic_filter)

    def _identity_failure(self, identity: Identity, reason: str, now: float) -> None:
        self._count(identity, "handshake_failures", now, reason)

    def _address_failure(self, address: str, reason: str, now: float) -> None:
        config = self._on.get("handshake_failures")
        host = host_of(address)
        if config is None or host == "listener":
            return  # "listener": accept() itself failed; no client to blame
        subject = self._lru(self._addresses, host, now, lambda: _Subject(f"address/{host}", now))
        counter = subject.detectors.get("handshake_failures")
        if counter is None:
            counter = subject.detectors["handshake_failures"] = _per_address(subject.key, config)
        assert isinstance(counter, CountDetector)
        counter.observe(now, reason)
        self._dirty[subject] = None

    def _count(self, identity: Identity, name: str, now: float, note: str) -> None:
        counter = self._detector(identity, name, now)
        if isinstance(counter, CountDetector):
            counter.observe(now, note)

    # --- subjects and their detectors ---------------------------------------------------------------

    def _subject(self, identity: Identity, now: float) -> _Subject:
        subject = self._subjects.get(identity)
        if subject is not None:
            self._subjects.move_to_end(identity)
            subject.last_seen = now
            return subject
        return self._lru(self._subjects, identity, now, lambda: self._new_subject(identity, now))

    def _new_subject(self, identity: Identity, now: float) -> _Subject:
        subject = _Subject(identity, now)
        rate, travel = self._settings.publish_rate, self._settings.impossible_travel
        if rate.enabled and identity.kind in rate.kinds:
            subject.rate = PublishRateDetector(identity, rate)
        if travel.enabled and identity.kind in travel.kinds:
            subject.travel = TravelDetector(identity, travel)
        return subject

    def _lru(
        self, table: OrderedDict[Any, _Subject], key: Any, now: float, make: Callable[[], _Subject]
    ) -> _Subject:
        subject = table.get(key)
        if subject is not None:
            table.move_to_end(key)
            subject.last_seen = now
            return subject
        if len(table) >= self.max_subjects:
            table.popitem(last=False)  # the least recently seen; the only way memory could grow
            self.stats.evicted += 1
        subject = table[key] = make()
        return subject

    def _detector(self, identity: Identity, name: str, now: float) -> _Detector | None:
        """The subject's detector `name`, made on first need; None if off or not for this kind."""
        config = self._on.get(name)
        if config is None or identity.kind not in config.kinds:
            return None
        subject = self._subject(identity, now)
        self._dirty[subject] = None
        detector = subject.detectors.get(name)
        if detector is None:
            detector = subject.detectors[name] = _make(name, identity, config)
        return detector

    # --- evaluating ---------------------------------------------------------------------------------

    def evaluate(self, now: float) -> list[Response]:
        """Responses to everything observed since the last call, in the order subjects were seen."""
        return _run_through(self.evaluate_steps(now))

    def evaluate_steps(self, now: float, size: int = EVALUATE_SLICE) -> Generator[None, None, list[Response]]:
        """`evaluate`, pausing (a bare `yield`) after every `size` subjects, where the caller may let
        other work run; the responses are the generator's return value. Subjects observed during a
        pause are judged at the next evaluation (the ones in hand are taken at the start)."""
        responses: list[Response] = []
        dirty, self._dirty = self._dirty, {}
        for judged, subject in enumerate(dirty, 1):
            for name, detector in _detectors_of(subject):
                firing = detector.fired(now)
                if firing is not None:
                    self._respond(subject, name, firing, now, responses)
            if judged % size == 0:
                yield
        self._expire(now)
        return responses

    def _respond(self, subject: _Subject, name: str, firing: Firing, now: float, out: list[Response]) -> None:
        self.stats.firings += 1
        self.stats.by_detector[name] = self.stats.by_detector.get(name, 0) + 1
        plan: Plan = getattr(self._settings, name).plan
        ladder = subject.ladders.get(name)
        if ladder is None:
            ladder = subject.ladders[name] = LadderState()
        response = climb(firing, plan, ladder, now)
        if response is None:
            self.stats.suppressed += 1
            return
        self.stats.responses += 1
        out.append(response)

    def _expire(self, now: float) -> None:
        horizon = now - self.idle_seconds
        tables: tuple[OrderedDict[Any, _Subject], ...] = (self._subjects, self._addresses)
        for table in tables:
            while table:
                key, subject = next(iter(table.items()))  # least recently seen first
                if subject.last_seen > horizon:
                    break
                del table[key]
                self.stats.evicted += 1

    def snapshot(self) -> EvaluatorStats:
        """The counters plus current sizes (for /metrics and the zero-false-positive report)."""
        self.stats.subjects, self.stats.addresses = len(self._subjects), len(self._addresses)
        self.stats.malformed_fixes = sum(s.travel.malformed for s in self._subjects.values() if s.travel)
        for name in self._settings.enabled():  # a detector that never fired still shows, at 0
            self.stats.by_detector.setdefault(name, 0)
        return self.stats


# mypyc: a compiled class body cannot name its own methods (the table was a class attribute).
_HANDLERS: dict[type, Any] = {
    ClientConnected: ContinuousEvaluator._on_connected,
    ClientDisconnected: ContinuousEvaluator._on_disconnected,
    ConnectRefused: ContinuousEvaluator._on_refused,
    SessionTakenOver: ContinuousEvaluator._on_taken_over,
    PublishDenied: ContinuousEvaluator._on_publish_denied,
    WillDropped: ContinuousEvaluator._on_will_dropped,
    SubscribeDenied: ContinuousEvaluator._on_subscribe_denied,
}


def _detectors_of(subject: _Subject) -> Iterable[tuple[str, _Detector]]:
    if subject.rate is not None:
        yield "publish_rate", subject.rate
    if subject.travel is not None:
        yield "impossible_travel", subject.travel
    yield from subject.detectors.items()


def _per_address(subject: Identity | str, config: Any) -> CountDetector:
    rule = "detectors/handshake_failures/per_address"
    reason = "handshake_failures_address"
    return CountDetector("handshake_failures", subject, config.per_address, config.window, reason, rule)


def _make(name: str, identity: Identity, config: Any) -> _Detector:
    if name == "source_network":
        return NetworkDetector(identity, config)
    if name == "cloning":
        return CloningDetector(identity, config)
    if name == "handshake_failures":
        threshold, reason = config.per_identity, "handshake_failures_identity"
        rule = "detectors/handshake_failures/per_identity"
    else:
        threshold, reason, rule = config.threshold, name, f"detectors/{name}/threshold"
    return CountDetector(name, identity, threshold, config.window, reason, rule)


# --------------------------------------------------------------------------------- the I/O edge


class OperationsLike(Protocol):
    """The part of gateway.ops.operations.Operations the detectors use (the same calls an operator's take)."""

    def quarantine(self, unit_id: str, reason: str, actor: str, now: datetime) -> object: ...

    def revoke_identity(self, kind: str, ident: str, reason: str, actor: str, now: datetime) -> object: ...

    def disconnect(self, identity: Identity, reason: str, actor: str, now: datetime) -> int: ...


class AuditLike(Protocol):
    def append(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        outcome: str,
        reason: str = "",
        details: dict[str, object] | None = None,
        now: datetime,
    ) -> object: ...


class ThrottleLike(Protocol):
    def throttle(
        self, identity: Identity, factor: float, until: float, rule: str = "detector/throttle"
    ) -> bool: ...


def apply(
    responses: Iterable[Response], ops: OperationsLike, audit: AuditLike, engine: ThrottleLike, now: float
) -> list[str]:
    """Carry out each response and write its `detector.fired` audit record; returns the outcomes.

    One response going wrong (say, a unit deleted a moment ago) is recorded as `failed` and does not
    stop the others, nor the loop that calls this: that loop also writes the rest of the audit log.
    """
    wall = datetime.fromtimestamp(now, UTC)
    outcomes = []
    for response in responses:
        try:
            outcome, result = _carry_out(response, ops, engine, wall)
        except Exception as exc:  # an I/O boundary: record, log, carry on
            log.warning("detector response %s for %s failed: %s", response.action, response.subject, exc)
            outcome, result = "failed", {"error": str(exc)[:200], "code": str(getattr(exc, "code", ""))}
        outcomes.append(outcome)
        audit.append(
            actor=response.actor,
            action="detector.fired",
            subject=response.subject,
            outcome=outcome,
            reason=response.reason,
            details={
                "detector": response.detector,
                "response": response.action,
                "rule": response.rule,
                "step": f"{response.step}/{response.steps}",
                "evidence": dict(response.evidence),
                **({"context": dict(response.context)} if response.context else {}),
                **({"result": result} if result else {}),
            },
            now=wall,
        )
    return outcomes


def _carry_out(
    response: Response, ops: OperationsLike, engine: ThrottleLike, wall: datetime
) -> tuple[str, dict[str, object]]:
    identity, actor = response.identity, response.actor
    reason = response.sentence()[:_MAX_REASON]
    if response.action == "alert" or identity is None:
        return "alerted", {}
    if response.action == "throttle":
        assert response.throttle_factor is not None and response.throttle_until is not None
        done = engine.throttle(identity, response.throttle_factor, response.throttle_until, response.rule)
        until = datetime.fromtimestamp(response.throttle_until, UTC).isoformat()
        outcome = "throttled" if done else "not_applicable"
        return outcome, {"factor": response.throttle_factor, "until": until}
    if response.action == "quarantine":
        return "quarantined", _plain(ops.quarantine(identity.id, reason, actor, wall))
    if response.action == "disconnect":
        return "disconnected", {"sessions_closed": ops.disconnect(identity, reason, actor, wall)}
    return "revoked", _plain(ops.revoke_identity(identity.kind, identity.id, reason, actor, wall))


def _plain(result: object) -> dict[str, object]:
    """What an OpResult says, as plain audit details (`changed`, `state`, ...)."""
    as_dict = getattr(result, "as_dict", None)
    data = as_dict() if callable(as_dict) else {}
    keep = ("changed", "state", "sessions_closed")
    return {k: v for k, v in data.items() if k in keep} if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------- wiring


class GatewayLike(Protocol):
    @property
    def broker(self) -> Any: ...

    @property
    def engine(self) -> Any: ...

    @property
    def audit(self) -> Any: ...


@dataclass
class Wiring:
    """The evaluator attached to a gateway; the runtime's drain loop calls `tick` every 0.25 s."""

    evaluator: ContinuousEvaluator
    ops: OperationsLike
    audit: AuditLike
    engine: Any  # PolicyEngine: `throttle`, and `policy` to follow reloads

    def tick(self, events: Iterable[object], failures: Iterable[Any], now: float) -> list[Response]:
        return _run_through(self.tick_steps(events, failures, now))

    def tick_steps(
        self, events: Iterable[object], failures: Iterable[Any], now: float
    ) -> Generator[None, None, list[Response]]:
        """`tick`, pausing where `ContinuousEvaluator.evaluate_steps` does."""
        settings = self.engine.policy.detectors
        if settings is not self.evaluator.settings:  # the policy was reloaded; maybe its detectors too
            self.evaluator.reconfigure(settings)
        self.evaluator.observe_events(events, now)
        self.evaluator.observe_handshake_failures(failures, now)
        responses = yield from self.evaluator.evaluate_steps(now)
        apply(responses, self.ops, self.audit, self.engine, now)
        return responses


def _run_through(steps: Generator[None, None, list[Response]]) -> list[Response]:
    """Run a stepped evaluation to its end, without pausing; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def wire(gateway: GatewayLike, ops: OperationsLike, **limits: Any) -> Wiring:
    """Attach a ContinuousEvaluator to a gateway: the broker's publish observer, and a Wiring to tick."""
    evaluator = ContinuousEvaluator(gateway.engine.policy.detectors, **limits)
    gateway.broker.observe_publishes(evaluator.observe_publish)
    return Wiring(evaluator, ops, gateway.audit, gateway.engine)
