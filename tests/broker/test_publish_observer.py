"""Broker.observe_publishes: continuous evaluation sees every PUBLISH the policy accepted, and only those."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from gateway.mqtt.packets import ProtocolVersion, Will
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import T0, TRUST_DOMAIN, VERSIONS, Lab, lab_peer


@dataclass
class Recorder:
    seen: list[tuple[Peer, str, bytes, float]] = field(default_factory=list)

    def __call__(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        self.seen.append((peer, topic, payload, now))

    @property
    def topics(self) -> list[str]:
        return [topic for _, topic, _, _ in self.seen]


def engine_lab() -> tuple[Lab, Recorder]:
    directory = InMemoryDirectory()
    for unit in ("TRK-1", "TRK-2"):
        directory.enroll(Identity("unit", unit, TRUST_DOMAIN))
    lab = Lab(PolicyEngine(load_policy(None), directory))
    recorder = Recorder()
    lab.broker.observe_publishes(recorder)
    return lab, recorder


@pytest.mark.parametrize("version", VERSIONS)
def test_accepted_publishes_are_observed_with_peer_payload_and_time(version: ProtocolVersion) -> None:
    lab, recorder = engine_lab()
    link = lab.connect("TRK-1", version=version)
    link.publish("fleet/TRK-1/telemetry/gps", b'{"lat": 51.9}', qos=0)
    lab.now += 1.5
    link.publish("fleet/TRK-1/diag/report", b"d", qos=1, retain=True)
    assert [(p.identity, t, b, n) for p, t, b, n in recorder.seen] == [
        (link.peer.identity, "fleet/TRK-1/telemetry/gps", b'{"lat": 51.9}', T0),
        (link.peer.identity, "fleet/TRK-1/diag/report", b"d", T0 + 1.5),
    ]
    assert recorder.seen[0][0] is link.peer  # the connection's own Peer: address and serial included


@pytest.mark.parametrize("version", VERSIONS)
def test_denied_publishes_are_not_observed(version: ProtocolVersion) -> None:
    lab, recorder = engine_lab()
    link = lab.connect("TRK-1", version=version)
    link.publish("fleet/TRK-2/telemetry/gps", b"probe", qos=1)  # another unit's topic
    link.publish("$SYS/broker", b"x", qos=0)  # the gateway's own space
    link.publish("fleet/TRK-1/telemetry/gps", b"ok", qos=1)
    assert recorder.topics == ["fleet/TRK-1/telemetry/gps"]
    assert lab.broker.metrics.drops["publish_denied"] == 2


def test_rate_limited_publishes_are_not_observed() -> None:
    lab, recorder = engine_lab()
    link = lab.connect("TRK-1")
    for i in range(130):  # the unit role's burst is 100; the clock does not move
        link.publish("fleet/TRK-1/telemetry/gps", str(i).encode())
    assert len(recorder.seen) == 100


def test_a_qos2_retransmission_is_observed_once() -> None:
    lab, recorder = engine_lab()
    link = lab.connect("TRK-1")
    packet_id = link.client.publish("fleet/TRK-1/telemetry/engine", b"rpm", qos=2)
    assert packet_id is not None
    link.flush_once()
    link.drop_output()  # the PUBREL is lost; the client sends the PUBLISH again, DUP set
    link.client.send_packet(replace(link.client.pending[packet_id], dup=True))
    link.flush_once()
    assert lab.broker.metrics.publishes_in == 2
    assert recorder.topics == ["fleet/TRK-1/telemetry/engine"]


def test_wills_and_the_gateway_own_messages_are_not_client_publishes() -> None:
    lab, recorder = engine_lab()
    link = lab.connect("TRK-1", will=Will("fleet/TRK-1/state", b"offline"))
    link.lose()
    lab.advance(1)
    assert recorder.seen == []


def test_lab_clients_are_observed_too_and_the_observer_can_be_removed() -> None:
    lab = Lab()
    recorder = Recorder()
    lab.broker.observe_publishes(recorder)
    link = lab.connect("lab-anything", peer=lab_peer())
    link.publish("test/a", b"1")
    lab.broker.observe_publishes(None)
    link.publish("test/b", b"2")
    assert [(p.identity, t) for p, t, _, _ in recorder.seen] == [(None, "test/a")]
