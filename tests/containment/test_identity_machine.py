"""No other identity cuts, evicts, shares or forges a unit's control channel: a stateful property test.

Hypothesis interleaves, on the sans-IO broker with the real policy engine and the shipped policy:
the unit TRK-1 connecting and reconnecting (3.1.1 or 5.0, persistent session or not) and going away;
identities of other kinds named TRK-1 (a partner and a service, as a registry from before ids were
unique across kinds holds them) and lab clients presenting client id TRK-1; lab clients and operators
joining dispatch's `$share` groups; forged and cleared mode commands from an ops operator, an auditor
and lab clients; dispatch sending control messages; ops sending commands; the gateway publishing mode
commands; an auditor commanding the unit; quarantine and release; time passing, and with it the
end of a short-lived unit certificate (the gateway ends that session; nobody else may).

After every step, the unit (in good standing: enrolled, maybe quarantined, never revoked):
- has received every control message, command and genuine mode command byte-identical and in order
  (queued while it was away with a session; the retained mode when it subscribes afresh);
- its control acks and telemetry have all reached dispatch (telemetry only when not quarantined);
- the retained mode command is the last one the gateway published;
- its live connection, if it has one, was ended by nobody but itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.broker import BrokerLimits
from gateway.mqtt.packets import Properties, ProtocolVersion, Publish
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import TRUST_DOMAIN, V5, V311, Lab, Link, lab_peer

UNIT = "TRK-1"
MODE = f"fleet/{UNIT}/cmd/mode"
CONTROL_SHARE = "$share/dispatch-workers/fleet/+/control/#"
TELEMETRY_SHARE = "$share/dispatch-workers/fleet/+/telemetry/#"
LIMITS = BrokerLimits(max_keep_alive=0)  # time is moved by hand; only what the test does counts
# Each connection of the unit presents a certificate (renewed) for this long; a short one runs out
# within a step or two, and the gateway ends that session. Steps x 25 s stay within session expiry.
LIFETIMES = (20.0, 86_400.0)


def identity(kind: str, ident: str) -> Identity:
    return Identity(kind, ident, TRUST_DOMAIN)


def cert_peer(kind: str, ident: str, serial: int, not_after: float | None = None) -> Peer:
    address = f"10.0.{serial % 250}.1:{serial}"
    return Peer(address, identity(kind, ident), certificate_serial=serial, certificate_not_after=not_after)


def session_kw(version: ProtocolVersion, persistent: bool) -> dict[str, object]:
    if version == V5:
        expiry = Properties(session_expiry_interval=3600) if persistent else Properties()
        return {"version": V5, "clean_start": not persistent, "properties": expiry, "keep_alive": 0}
    return {"version": V311, "clean_start": not persistent, "keep_alive": 0}


@dataclass
class Expected:
    """What the unit and dispatch must have received, in order."""

    unit: list[tuple[str, bytes]] = field(default_factory=list)
    dispatch_acks: list[bytes] = field(default_factory=list)
    dispatch_telemetry: list[bytes] = field(default_factory=list)


class IdentityMachine(RuleBasedStateMachine):
    # `clean`, not `persistent`: hypothesis tries False first, and a persistent session (queued
    # messages, resumption) is where most of what can go wrong lives.
    @initialize(lifetime=st.sampled_from(LIFETIMES), clean=st.booleans())
    def start(self, lifetime: float, clean: bool) -> None:
        self.directory = InMemoryDirectory()
        self.directory.enroll(identity("unit", UNIT))
        self.directory.enroll(identity("service", "dispatch"))
        self.directory.enroll(identity("operator", "olga"), role="ops")
        self.directory.enroll(identity("operator", "bob"), role="auditor")
        self.directory.enroll(identity("operator", "ada"), role="auditor")  # the retained-mode observer
        # Identities of other kinds named like the unit (a registry written before ids were unique).
        self.directory.enroll(identity("partner", UNIT), tier=1)
        self.directory.enroll(identity("service", UNIT))
        self.engine = PolicyEngine(load_policy(None), self.directory)
        self.lab = Lab(self.engine, LIMITS)
        self.serial = 1000
        self.expected = Expected()
        self.unit_links: list[Link] = []  # every connection the unit ever made, in order
        self.unit_online = False
        self.unit_session = False  # does the broker hold a session for the unit (we believe)?
        self.unit_left: set[int] = set()  # ids of unit links the unit (or its certificate's end) ended
        self.unit_not_after = 0.0  # the current unit certificate's not_after
        self.quarantined = False
        self.genuine_modes: list[bytes] = []
        self.queued: list[tuple[str, bytes]] = []  # for the unit while it is away with a session
        self.counter = 0
        self.lab_clients = 0
        self.dispatch = self._connect("dispatch", "service", "dispatch", persistent=True)
        assert self.dispatch.subscribe(CONTROL_SHARE, TELEMETRY_SHARE, qos=1).reason_codes == (1, 1)
        self.olga: Link | None = None
        self.unit_connects(V5, clean=clean, lifetime=lifetime)

    # --- helpers ------------------------------------------------------------------------------

    def _next(self, what: str) -> bytes:
        self.counter += 1
        return f"{what}-{self.counter}".encode()

    def _connect(
        self,
        client_id: str,
        kind: str | None,
        ident: str,
        *,
        persistent: bool = False,
        version: ProtocolVersion = V5,
        not_after: float | None = None,
    ) -> Link:
        self.serial += 1
        address = f"127.0.0.1:{self.serial}"
        peer = lab_peer(address) if kind is None else cert_peer(kind, ident, self.serial, not_after)
        return self.lab.connect(client_id, peer=peer, **session_kw(version, persistent))  # type: ignore[arg-type]

    def _to_unit(self, topic: str, payload: bytes) -> None:
        """A message the unit must get: now if it is online, on its return if it keeps a session."""
        if self.unit_online:
            self.expected.unit.append((topic, payload))
        elif self.unit_session:
            self.queued.append((topic, payload))

    @property
    def unit_link(self) -> Link:
        return self.unit_links[-1]

    def _ops(self) -> Link:
        if self.olga is None or self.olga.closed is not None:
            self.olga = self._connect("olga", "operator", "olga")
        return self.olga

    def _as(self, who: str) -> Link:
        """A connection of "lab" (a new lab client), "bob" (auditor) or "olga" (ops)."""
        if who == "olga":
            return self._ops()
        if who == "bob":
            return self._connect("bob", "operator", "bob")
        self.lab_clients += 1
        return self._connect(f"lab-{self.lab_clients}", None, "")

    # --- the unit -----------------------------------------------------------------------------

    @precondition(lambda self: not self.unit_online)
    @rule(version=st.sampled_from([V311, V5]), clean=st.booleans(), lifetime=st.sampled_from(LIFETIMES))
    def unit_connects(self, version: ProtocolVersion, clean: bool, lifetime: float) -> None:
        persistent = not clean
        self.unit_not_after = self.lab.now + lifetime
        link = self._connect(
            UNIT, "unit", UNIT, persistent=persistent, version=version, not_after=self.unit_not_after
        )
        assert link.closed is None and link.connack.reason_code == 0, "the unit could not connect"
        resumed = self.unit_session and persistent  # clean start discards a session on purpose
        assert link.connack.session_present == resumed, "the unit's session was lost or taken"
        self.unit_links.append(link)
        self.unit_online = True
        if resumed:
            self.expected.unit.extend(self.queued)
        else:
            link.subscribe(f"fleet/{UNIT}/control/#", f"fleet/{UNIT}/cmd/#", qos=1)
            if self.genuine_modes:  # a fresh subscription is given the retained mode command
                self.expected.unit.append((MODE, self.genuine_modes[-1]))
        self.queued.clear()
        self.unit_session = persistent

    @precondition(lambda self: self.unit_online)
    @rule(lose=st.booleans())
    def unit_goes_away(self, lose: bool) -> None:
        link = self.unit_link
        self.unit_left.add(id(link))
        if lose:
            link.lose()
        else:
            link.disconnect_cleanly()
        self.unit_online = False

    @precondition(lambda self: self.unit_online)
    @rule()
    def unit_acks_control(self) -> None:
        payload = self._next("ack")
        self.unit_link.publish(f"fleet/{UNIT}/control/brake/ack", payload, qos=1)
        self.expected.dispatch_acks.append(payload)

    @precondition(lambda self: self.unit_online)
    @rule()
    def unit_sends_telemetry(self) -> None:
        payload = self._next("gps")
        self.unit_link.publish(f"fleet/{UNIT}/telemetry/gps", payload, qos=1)
        if not self.quarantined:
            self.expected.dispatch_telemetry.append(payload)

    # --- everyone else ------------------------------------------------------------------------

    @rule(qos=st.sampled_from([1, 2]))
    def dispatch_sends_control(self, qos: int) -> None:
        payload = self._next("brake")
        topic = f"fleet/{UNIT}/control/brake/set"
        self.dispatch.publish(topic, payload, qos=qos)
        self._to_unit(topic, payload)

    @rule()
    def ops_sends_a_command(self) -> None:
        payload = self._next("reboot")
        self._ops().publish(f"fleet/{UNIT}/cmd/reboot", payload, qos=1)
        self._to_unit(f"fleet/{UNIT}/cmd/reboot", payload)

    @rule()
    def gateway_publishes_the_mode_command(self) -> None:
        self.counter += 1
        payload = b'{"mode": "diagnostic-only", "n": %d}' % self.counter
        self.lab.apply(
            self.lab.broker.publish_internal(Publish(MODE, payload, qos=1, retain=True), self.lab.now)
        )
        self.lab.pump()
        self.genuine_modes.append(payload)
        self._to_unit(MODE, payload)

    @rule(
        who=st.sampled_from(["partner", "service", "lab"]),
        version=st.sampled_from([V311, V5]),
        persistent=st.booleans(),
    )
    def another_identity_uses_the_units_client_id(
        self, who: str, version: ProtocolVersion, persistent: bool
    ) -> None:
        kind = None if who == "lab" else who
        intruder = self._connect(UNIT, kind, UNIT, persistent=persistent, version=version)
        # Refused whether the unit is online or not: another identity never takes a unit's session,
        # and a lab client's id must start with "lab-", so it never holds a unit's at all.
        assert intruder.closed == "connect_refused", f"a {who} client took client id {UNIT}"

    @rule(
        who=st.sampled_from(["lab", "bob", "olga"]), shared=st.sampled_from([CONTROL_SHARE, TELEMETRY_SHARE])
    )
    def someone_joins_dispatchs_share_group(self, who: str, shared: str) -> None:
        self._as(who).subscribe(shared, qos=1)  # granted or not, it must take nothing from dispatch

    @rule(who=st.sampled_from(["lab", "bob", "olga"]), clear=st.booleans())
    def someone_forges_the_mode_command(self, who: str, clear: bool) -> None:
        forged = b"" if clear else b'{"mode": "normal", "by": "operator/alice"}'
        self._as(who).publish(MODE, forged, qos=1, retain=True)

    @rule()
    def quarantine_or_release(self) -> None:
        unit = identity("unit", UNIT)
        if self.quarantined:
            self.directory.release(unit)
        else:
            self.directory.quarantine(unit, "drill")
        self.quarantined = not self.quarantined
        self.engine.invalidate(unit)
        self.lab.apply(self.lab.broker.reauthorize(self.lab.now))
        self.lab.pump()

    @rule(seconds=st.sampled_from([0.5, 5.0, 25.0]))
    def time_passes(self, seconds: float) -> None:
        self.lab.advance(seconds)
        if self.unit_online and self.unit_link.closed == "certificate_expired":
            # The gateway's own doing, and only once the certificate has run out.
            assert self.lab.now >= self.unit_not_after
            self.unit_left.add(id(self.unit_link))
            self.unit_online = False

    @rule()
    def an_auditor_tries_to_command_the_unit(self) -> None:
        self._connect("bob", "operator", "bob").publish(f"fleet/{UNIT}/cmd/immobilise", b"bob", qos=1)

    # --- what must hold after every step ------------------------------------------------------

    @invariant()
    def the_unit_was_cut_by_no_one_else(self) -> None:
        for link in self.unit_links:
            if id(link) not in self.unit_left:
                assert link.closed is None, f"the unit's connection was ended: {link.closed}"

    @invariant()
    def the_unit_received_everything_byte_identical(self) -> None:
        if not self.unit_online:
            return  # checked when it is back: what it missed must then arrive
        got = [(m.topic, m.payload) for link in self.unit_links for m in link.messages]
        # Its own acks come back to it through fleet/TRK-1/control/# (no No Local in 3.1.1): not counted.
        assert [m for m in got if not m[0].endswith("/ack")] == self.expected.unit

    @invariant()
    def dispatch_heard_every_ack_and_all_telemetry(self) -> None:
        assert self.dispatch.closed is None
        payloads = self.dispatch.payloads
        assert [p for p in payloads if p.startswith(b"ack-")] == self.expected.dispatch_acks
        assert [p for p in payloads if p.startswith(b"gps-")] == self.expected.dispatch_telemetry

    @invariant()
    def the_retained_mode_command_is_the_gateways(self) -> None:
        observer = self._connect("ada", "operator", "ada")
        observer.subscribe(MODE, qos=1)
        retained = observer.payloads
        observer.disconnect_cleanly()
        assert retained == self.genuine_modes[-1:]


IdentityMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_identity_machine = IdentityMachine.TestCase
