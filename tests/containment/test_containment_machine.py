"""The containment promise as a state machine: whatever containment does, control keeps flowing.

Hypothesis interleaves what happens to a small fleet (tests/containment/world.py: the shipped policy,
the real engine and broker back to back, time by hand): quarantine and release as fleet operations
do them, floods past the rate limit, detector throttles, units disconnecting (cleanly or not) and
reconnecting — 3.1.1 or 5.0, clean or persistent sessions, with no will, their own will or a will on
another unit's topic — units probing other units' topics, policy reloads and time passing.

After every step `control_channel_intact` checks the promise for every unit in good standing:

- a unit the model holds connected is still connected, and one it holds cut is cut: only its own
  probing past the policy's violation limit (whatever the last reload made it) may end its
  connection; rates, throttles, quarantine and reloads never do;
- every control message dispatch publishes to it (QoS 1 and 2, binary payloads) reaches it byte for
  byte, in order, exactly once — at once when connected, on resumption when its persistent session
  was offline;
- its control ack reaches dispatch byte for byte, accepted (PUBACK 0x00);
- the operator hears exactly the wills the policy lets be published when they fire: a unit's own
  presence will unless it was quarantined then, never a will on another unit's topic.

Extending it: subclass `ContainmentMachine` (or add rules here) for more containment paths —
takeovers by other kinds, shared subscriptions — and keep the promise in the one invariant method;
`connection_ended` is the one place a will's expected fate is decided. A subclass gets its own test
case with `MySubclass.TestCase`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.mqtt.packets import ProtocolVersion, Will
from gateway.policy.rules import Policy
from tests.broker.lab import V5, V311, Link
from tests.containment.world import (
    UNITS,
    Fleet,
    ack_payload,
    ack_topic,
    control_messages,
    control_payload,
    shipped_policy_with,
    state_topic,
)


class PolicyVariant:
    """A policy an operator might SIGHUP into, with the number the model needs to know. (Not a
    dataclass: a failing example prints its repr, and that should be the name, not the policy.)"""

    __slots__ = ("max_denied", "name", "policy")

    def __init__(self, name: str, max_denied: int, policy: Policy) -> None:
        self.name, self.max_denied, self.policy = name, max_denied, policy

    def __repr__(self) -> str:
        return f"PolicyVariant({self.name!r}, max_denied={self.max_denied})"


def _variants() -> tuple[PolicyVariant, ...]:
    return (
        PolicyVariant("shipped", 20, shipped_policy_with()),
        # a strict operator: three strikes, and units held to 5 msg/s (burst 40)
        PolicyVariant("strict", 3, shipped_policy_with(max_denied=3, unit_rate=5, unit_burst=40)),
        PolicyVariant("lenient", 50, shipped_policy_with(max_denied=50)),
    )


VARIANTS = _variants()


@dataclass
class UnitModel:
    """What the test believes about one unit; the broker must agree."""

    name: str
    link: Link | None = None  # the current (or last) connection
    connected: bool = False
    persistent: bool = False  # the current (or last) connection asked for a persistent session
    session_held: bool = False  # offline, with a persistent session the broker keeps (and queues for)
    will: Will | None = None  # the current connection's will
    quarantined: bool = False
    violations: int = 0  # denials counted against the current connection
    seen: int = 0  # messages of `link` already taken into `inbox`
    inbox: list[tuple[str, bytes]] = field(default_factory=list)  # received, not yet checked
    expected: list[bytes] = field(default_factory=list)  # control payloads it must still receive

    def take_inbox(self) -> list[tuple[str, bytes]]:
        if self.link is not None:
            self.inbox.extend((m.topic, m.payload) for m in self.link.messages[self.seen :])
            self.seen = len(self.link.messages)
        taken, self.inbox = self.inbox, []
        return taken


class ContainmentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fleet = Fleet(VARIANTS[0].policy)  # parsed once for all examples
        self.units = {name: UnitModel(name) for name in UNITS}
        self.max_denied = VARIANTS[0].max_denied
        self.expected_states: list[tuple[str, bytes]] = []  # wills the operator must hear, in order
        self.serial = 0  # makes every payload distinct

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def connected(self) -> list[str]:
        return [name for name, unit in self.units.items() if unit.connected]

    def offline(self) -> list[str]:
        return [name for name, unit in self.units.items() if not unit.connected]

    # --- how the model follows a connection's end ---------------------------------------------------

    def connection_ended(self, unit: UnitModel, will_fires: bool) -> None:
        """The unit's connection is over. Its will is judged now, as it fires: heard if it is on the
        unit's own presence topic and the unit is not quarantined; dropped otherwise."""
        if will_fires and unit.will is not None:
            own = unit.will.topic == state_topic(unit.name)
            if own and not unit.quarantined:
                self.expected_states.append((unit.will.topic, unit.will.payload))
        unit.connected = False
        unit.will = None
        unit.violations = 0
        unit.session_held = unit.persistent
        if not unit.session_held:
            unit.expected.clear()  # a clean session ends with its connection: nothing is queued

    # --- rules -------------------------------------------------------------------------------------

    @initialize(data=st.data())
    def start_with_some_units_connected(self, data: st.DataObject) -> None:
        for name in data.draw(st.sets(st.sampled_from(UNITS), min_size=1), label="connected at start"):
            self._connect(name, V5, persistent=False, will_kind="own")

    @precondition(lambda self: bool(self.offline()))
    @rule(
        data=st.data(),
        version=st.sampled_from([V311, V5]),
        persistent=st.booleans(),
        will_kind=st.sampled_from(["none", "own", "foreign"]),
    )
    def connect(
        self, data: st.DataObject, version: ProtocolVersion, persistent: bool, will_kind: str
    ) -> None:
        name = data.draw(st.sampled_from(self.offline()), label="unit")
        self._connect(name, version, persistent, will_kind)

    def _connect(self, name: str, version: ProtocolVersion, persistent: bool, will_kind: str) -> None:
        unit = self.units[name]
        n = self.next_serial()
        will = None
        if will_kind != "none":
            other = next(u for u in UNITS if u != name)
            topic = state_topic(name if will_kind == "own" else other)
            will = Will(topic, b'{"online": false, "n": ' + str(n).encode() + b"}", 1, True)
        if unit.session_held and not persistent:
            unit.expected.clear()  # clean start: the held session and its queue are discarded
        old_inbox = unit.take_inbox()  # what the old connection received is still to be checked
        link = self.fleet.connect_unit(name, version=version, persistent=persistent, will=will)
        unit.inbox, unit.link, unit.seen = old_inbox, link, 0
        unit.connected, unit.persistent, unit.session_held = True, persistent, False
        unit.will, unit.violations = will, 0

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data(), abrupt=st.booleans())
    def disconnect(self, data: st.DataObject, abrupt: bool) -> None:
        unit = self.units[data.draw(st.sampled_from(self.connected()), label="unit")]
        assert unit.link is not None
        if abrupt:
            unit.link.lose()  # coverage lost: the will fires
        else:
            unit.link.disconnect_cleanly()  # a normal DISCONNECT discards the will
        self.connection_ended(unit, will_fires=abrupt)

    @rule(name=st.sampled_from(UNITS))
    def quarantine(self, name: str) -> None:
        unit = self.units[name]
        if not unit.quarantined:
            self.fleet.quarantine(name)
            unit.quarantined = True

    @rule(name=st.sampled_from(UNITS))
    def release(self, name: str) -> None:
        unit = self.units[name]
        if unit.quarantined:
            self.fleet.release(name)
            unit.quarantined = False

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data(), count=st.integers(1, 400), qos=st.sampled_from([0, 1]))
    def flood(self, data: st.DataObject, count: int, qos: int) -> None:
        """Telemetry past the rate limit (the burst is 100): slowed and dropped, never a reason to cut."""
        name = data.draw(st.sampled_from(self.connected()), label="unit")
        link = self.units[name].link
        assert link is not None
        self.fleet.flood(link, f"fleet/{name}/telemetry/engine", count, qos)

    @rule(name=st.sampled_from(UNITS), seconds=st.sampled_from([5.0, 60.0, 300.0]))
    def throttle(self, name: str, seconds: float) -> None:
        """A publish_rate detector's throttle step: 10 % of the role's rate."""
        assert self.fleet.throttle(name, 0.1, seconds)

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def probe(self, data: st.DataObject) -> None:
        """A publish into another unit's namespace: a violation. At the policy's limit (whatever the
        last reload made it) the connection ends, and its will fires."""
        unit = self.units[data.draw(st.sampled_from(self.connected()), label="unit")]
        assert unit.link is not None
        other = next(u for u in UNITS if u != unit.name)
        unit.link.publish(f"fleet/{other}/cmd/unlock", b"open", qos=1)
        unit.violations += 1
        if unit.violations >= self.max_denied:  # the invariant checks that the broker agrees
            self.connection_ended(unit, will_fires=True)

    @rule(variant=st.sampled_from(VARIANTS))
    def reload(self, variant: PolicyVariant) -> None:
        self.fleet.reload(variant.policy)
        self.max_denied = variant.max_denied

    @rule(seconds=st.sampled_from([0.05, 0.5, 2.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.fleet.advance(seconds)

    # --- the promise -------------------------------------------------------------------------------

    @invariant()
    def control_channel_intact(self) -> None:
        fleet = self.fleet
        fleet.acks_heard()  # acks are checked per unit below
        for name, unit in self.units.items():
            link = unit.link
            if unit.connected:
                assert link is not None
                assert link.closed is None, f"{name} lost its connection ({link.closed}) in good standing"
                assert link.connack.reason_code == 0, f"{name} was refused: {link.connack.reason_code:#x}"
            elif link is not None:  # it went away: by itself, or cut at the policy's violation limit
                assert link.closed is not None, f"{name} should have been cut at {self.max_denied} violations"
            if unit.connected or unit.session_held:
                n = self.next_serial()
                payload = control_payload(name, n)
                fleet.dispatch_sends(name, payload, qos=1 + n % 2)
                unit.expected.append(payload)
            if not unit.connected:
                continue
            assert link is not None
            got = [payload for _, payload in control_messages(unit.take_inbox(), name)]
            assert got == unit.expected, f"{name}: control received {got!r}, expected {unit.expected!r}"
            unit.expected.clear()
            ack = ack_payload(name, self.serial)
            done = len(link.done)
            link.publish(ack_topic(name), ack, qos=1)
            reasons = [d.reason_code for d in link.done[done:]]
            assert reasons == [0], f"{name}: its control ack was refused ({reasons})"
            heard = fleet.acks_heard()
            assert heard == [(ack_topic(name), ack)], f"{name}: dispatch heard {heard!r}"
        states = fleet.states_heard()
        assert states == self.expected_states, f"wills: heard {states}, expected {self.expected_states}"
        self.expected_states.clear()


ContainmentMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=(HealthCheck.too_slow,),
    # No "explain" phase: it traces every line of a failing example's replays (the broker, the engine),
    # which takes minutes on Python 3.11; the shrunk steps already say what happened.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
)
TestContainment: Any = ContainmentMachine.TestCase
