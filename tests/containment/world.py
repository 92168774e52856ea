"""A small fleet back to back with the real policy engine and broker: no sockets, time by hand.

`Fleet` holds the shipped policy (or another one), an in-memory registry, the engine and a `Lab`
(tests/broker/lab.py) in which three parties are connected the way the product describes them:

- units `TRK-1`, `TRK-2`, `TRK-3`, each subscribed to its `fleet/{id}/control/#` like a truck;
- the dispatch service, which publishes control messages to a unit and hears its acks;
- an operator watching `fleet/+/state`, where units' wills (presence) land.

Fleet operations are played the way gateway/ops does them to the broker: a quarantine or release
changes the registry record, invalidates the engine's cache for that identity and re-decides every
live session (`Broker.reauthorize`); a policy reload is `engine.reload` followed by the same; a
detector's throttle is `engine.throttle`. The clock moves only when a test says so, and every
connected client pings as it moves (a real client keeps its keep-alive), so time never looks like
a dead connection.

`control_round_trip(unit)` is the containment promise in one call: dispatch sends the unit a control
message; the unit must receive it byte for byte; the unit acks on its control topic; dispatch must
receive the ack byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from gateway.broker import BrokerLimits
from gateway.mqtt.packets import Properties, ProtocolVersion, Subscription, Will
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.policy.rules import Policy, policy_from_mapping
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import TRUST_DOMAIN, V5, Lab, Link

UNITS = ("TRK-1", "TRK-2", "TRK-3")
KEEP_ALIVE = 60  # seconds; clients ping whenever the clock moves, far more often than this
SESSION_EXPIRY = 24 * 3600  # persistent sessions outlive any test run


def shipped_policy_with(
    *, max_denied: int | None = None, unit_rate: float | None = None, unit_burst: int | None = None
) -> Policy:
    """The shipped policy with a few numbers changed, as an operator would edit it before a SIGHUP."""
    text = resources.files("gateway").joinpath("defaults/policy.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    if max_denied is not None:
        data["violations"]["max_denied_before_disconnect"] = max_denied
    limits = data["roles"]["unit"]["limits"]
    if unit_rate is not None:
        limits["messages_per_second"] = unit_rate
    if unit_burst is not None:
        limits["burst"] = unit_burst
    name = f"edited(max_denied={max_denied}, unit_rate={unit_rate}, unit_burst={unit_burst})"
    return policy_from_mapping(data, name)


def unit_identity(unit: str) -> Identity:
    return Identity("unit", unit, TRUST_DOMAIN)


def control_topic(unit: str) -> str:
    return f"fleet/{unit}/control/brake"


def ack_topic(unit: str) -> str:
    return f"fleet/{unit}/control/brake/ack"


def state_topic(unit: str) -> str:
    return f"fleet/{unit}/state"


@dataclass
class Received:
    """What one party has taken in so far, across its connections (a reconnect is a new Link)."""

    link: Link
    seen: int = 0  # messages of `link` already collected
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def collect(self) -> list[tuple[str, bytes]]:
        """New (topic, payload) pairs since the last call."""
        fresh = [(m.topic, m.payload) for m in self.link.messages[self.seen :]]
        self.seen = len(self.link.messages)
        self.messages.extend(fresh)
        return fresh

    def switch(self, link: Link) -> list[tuple[str, bytes]]:
        """A new connection: collect what the old one still holds, then follow the new one."""
        rest = self.collect()
        self.link, self.seen = link, 0
        return rest


class Fleet:
    def __init__(self, policy: Policy | None = None, *, units: tuple[str, ...] = UNITS) -> None:
        self.units = units
        self.directory = InMemoryDirectory()
        for unit in units:
            self.directory.enroll(unit_identity(unit))
        self.dispatch_identity = Identity("service", "dispatch", TRUST_DOMAIN)
        self.operator_identity = Identity("operator", "alice", TRUST_DOMAIN)
        self.directory.enroll(self.dispatch_identity)
        self.directory.enroll(self.operator_identity, role="ops")
        self.engine = PolicyEngine(policy or load_policy(None), self.directory)
        # BrokerLimits as the runtime builds them: the violation limit is the engine's, asked live.
        self.lab = Lab(self.engine, BrokerLimits())
        self._serials = 1000
        self.dispatch = Received(self._connect_service())
        self.operator = Received(self._connect_operator())

    # --- connections -----------------------------------------------------------------------------

    def _peer(self, identity: Identity) -> Peer:
        self._serials += 1
        return Peer(f"10.0.0.{self._serials % 250}:{40000 + self._serials}", identity, self._serials)

    def _connect_service(self) -> Link:
        link = self.lab.connect("dispatch", peer=self._peer(self.dispatch_identity), keep_alive=KEEP_ALIVE)
        link.subscribe(Subscription("fleet/+/control/#", 1))
        return link

    def _connect_operator(self) -> Link:
        link = self.lab.connect("alice", peer=self._peer(self.operator_identity), keep_alive=KEEP_ALIVE)
        link.subscribe(Subscription("fleet/+/state", 1))
        return link

    def connect_unit(
        self,
        unit: str,
        *,
        version: ProtocolVersion = V5,
        persistent: bool = False,
        will: Will | None = None,
    ) -> Link:
        """Connect as a truck does: CONNECT (its will, clean or persistent), then subscribe to control."""
        persist = persistent and version == V5
        properties = Properties(session_expiry_interval=SESSION_EXPIRY) if persist else Properties()
        link = self.lab.connect(
            unit,
            version=version,
            peer=self._peer(unit_identity(unit)),
            keep_alive=KEEP_ALIVE,
            clean_start=not persistent,
            will=will,
            properties=properties,
        )
        if link.closed is None:
            link.subscribe(Subscription(f"fleet/{unit}/control/#", 2))
        return link

    # --- what fleet operations do to the broker ----------------------------------------------------

    def quarantine(self, unit: str, reason: str = "suspected tampering") -> None:
        self.directory.quarantine(unit_identity(unit), reason)
        self._changed(unit_identity(unit))

    def release(self, unit: str) -> None:
        self.directory.release(unit_identity(unit))
        self._changed(unit_identity(unit))

    def _changed(self, identity: Identity) -> None:
        self.engine.invalidate(identity)
        self.lab.apply(self.lab.broker.reauthorize(self.lab.now))
        self.lab.pump()

    def reload(self, policy: Policy) -> None:
        """A SIGHUP: the engine judges by the new policy and every live session is re-decided."""
        self.engine.reload(policy)
        self.lab.apply(self.lab.broker.reauthorize(self.lab.now))
        self.lab.pump()

    def throttle(self, unit: str, factor: float, seconds: float) -> bool:
        """A detector's throttle step (gateway/detection/continuous.py hands it to the engine)."""
        rule = "detectors/publish_rate/ceiling_per_second"
        return self.engine.throttle(unit_identity(unit), factor, self.lab.now + seconds, rule)

    # --- time ------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock; every connected client pings (as its keep-alive timer would), then the
        broker's timers run."""
        self.lab.now += seconds
        for link in self.lab.links.values():
            if link.closed is None and link.client.connected:
                link.client.ping()
        self.lab.pump()
        self.lab.apply(self.lab.broker.tick(self.lab.now))
        self.lab.pump()

    # --- traffic ---------------------------------------------------------------------------------

    def flood(self, link: Link, topic: str, count: int, qos: int = 0) -> None:
        """`count` publishes as fast as the client can write them: in reads of up to 50 packets, so
        a QoS 1 flood stays within the broker's receive maximum, as a conforming client must."""
        sent = 0
        while sent < count and link.closed is None:
            for _ in range(min(50, count - sent)):
                link.client.publish(topic, b'{"rpm": 9000}', qos)
                sent += 1
            self.lab.pump()

    def dispatch_sends(self, unit: str, payload: bytes, qos: int = 1) -> None:
        self.dispatch.link.publish(control_topic(unit), payload, qos=qos)

    def acks_heard(self) -> list[tuple[str, bytes]]:
        """Unit acks dispatch received since the last look (its own control messages echo back to it
        through its fleet/+/control/# subscription; those are not acks)."""
        return [(t, p) for t, p in self.dispatch.collect() if t.endswith("/ack")]

    def decided(self, kind: str, verdict: str, reason: str) -> int:
        """How many decisions of this (kind, verdict, reason) the broker has counted so far."""
        return self.lab.broker.metrics.decisions[(kind, verdict, reason)]

    def states_heard(self) -> list[tuple[str, bytes]]:
        return self.operator.collect()

    def control_round_trip(self, unit: str, link: Link, n: int, qos: int = 1) -> RoundTrip:
        """Dispatch sends control message `n` to a connected unit, the unit acks it: what each saw."""
        self.acks_heard()  # only what this round trip brings
        seen = len(link.messages)
        sent = control_payload(unit, n)
        self.dispatch_sends(unit, sent, qos)
        delivered = control_messages([(m.topic, m.payload) for m in link.messages[seen:]], unit)
        done = len(link.done)
        ack = ack_payload(unit, n)
        link.publish(ack_topic(unit), ack, qos=1)
        reasons = [d.reason_code for d in link.done[done:]]
        return RoundTrip(sent, delivered, ack, reasons, self.acks_heard())


@dataclass(frozen=True)
class RoundTrip:
    sent: bytes  # the control message dispatch published
    delivered: list[tuple[str, bytes]]  # what the unit received on its control topic
    ack: bytes  # the ack the unit published
    ack_reasons: list[int]  # its PUBACK reason code(s): 0 = accepted
    acks_heard: list[tuple[str, bytes]]  # what dispatch received

    def intact(self, unit: str) -> bool:
        return (
            self.delivered == [(control_topic(unit), self.sent)]
            and self.ack_reasons == [0]
            and self.acks_heard == [(ack_topic(unit), self.ack)]
        )


def control_payload(unit: str, n: int) -> bytes:
    """Distinct per message, and not text: byte-identity is what is checked."""
    return b"\x00\xffctl:" + unit.encode() + b":" + n.to_bytes(4, "big") + b"\x80\x7f"


def ack_payload(unit: str, n: int) -> bytes:
    return b"\x01ack:" + unit.encode() + b":" + n.to_bytes(4, "big") + b"\xfe"


def control_messages(received: list[tuple[str, bytes]], unit: str) -> list[tuple[str, bytes]]:
    """The control messages a unit received, without the echo of its own acks."""
    return [(t, p) for t, p in received if t == control_topic(unit)]

