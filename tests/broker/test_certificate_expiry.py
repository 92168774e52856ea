"""A live session ends when the certificate it was admitted with expires (plus the skew grace).

The broker arms a timer per connection at the policy's `certificate_deadline` (not_after +
tls.clock_skew_tolerance); when it fires, 5.0 clients get DISCONNECT 0xA0 (Maximum connect time),
3.1.1 clients are closed. Until then, and afterwards for an offline session, nothing changes: the
control messages queued while the unit was away reach it when it comes back with its renewed
certificate.
"""

from __future__ import annotations

import pytest

from gateway.broker import BrokerLimits, CertificateExpired
from gateway.mqtt.packets import Properties, ProtocolVersion
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import T0, TRUST_DOMAIN, V5, VERSIONS, Lab, service_peer

SKEW = 30.0
NO_KEEP_ALIVE = BrokerLimits(max_keep_alive=0)  # time jumps by minutes here; only the certificate counts
UNIT = Identity("unit", "TRK-1", TRUST_DOMAIN)
CONTROL = "fleet/TRK-1/control/brake/set"


def unit_cert(not_after: float, serial: int = 1) -> Peer:
    return Peer("10.0.0.7:40000", UNIT, certificate_serial=serial, certificate_not_after=not_after)


def lab() -> Lab:
    directory = InMemoryDirectory()
    directory.enroll(UNIT)
    directory.enroll(Identity("service", "dispatch", TRUST_DOMAIN))
    return Lab(PolicyEngine(load_policy(None), directory, clock_skew_tolerance=SKEW), NO_KEEP_ALIVE)


def persistent(version: ProtocolVersion) -> dict[str, object]:
    props = Properties(session_expiry_interval=3600) if version == V5 else Properties()
    return {"version": version, "clean_start": False, "properties": props, "keep_alive": 0}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_session_ends_when_the_certificate_and_its_grace_run_out(version: ProtocolVersion) -> None:
    world = lab()
    unit = world.connect("TRK-1", version=version, keep_alive=0, peer=unit_cert(T0 + 100))
    unit.subscribe("fleet/TRK-1/control/#", qos=1)
    dispatch = world.connect("dispatch", keep_alive=0, peer=service_peer("dispatch"))
    assert world.broker.next_deadline() is not None
    world.advance(100 + SKEW - 1)  # expired, but inside tls.clock_skew_tolerance
    dispatch.publish(CONTROL, b"in-grace", qos=1)
    assert unit.closed is None and unit.payloads == [b"in-grace"]
    world.advance(1)
    assert unit.closed == "certificate_expired"
    if version == V5:
        assert unit.disconnect is not None and unit.disconnect.reason_code == ReasonCode.MAXIMUM_CONNECT_TIME
    else:
        assert unit.disconnect is None  # 3.1.1 cannot say why
    (expired,) = [e for e in world.broker.drain_events() if isinstance(e, CertificateExpired)]
    assert (expired.client_id, expired.peer.certificate_not_after) == ("TRK-1", T0 + 100)
    assert world.broker.metrics.certificates_expired == 1
    assert dispatch.closed is None  # its certificate (no dates in the test peer) is not concerned


@pytest.mark.parametrize("version", VERSIONS)
def test_control_queued_after_an_offline_units_old_certificate_expired_reaches_its_renewed_one(
    version: ProtocolVersion,
) -> None:
    world = lab()
    unit = world.connect("TRK-1", **persistent(version), peer=unit_cert(T0 + 100))
    unit.subscribe("fleet/TRK-1/control/#", qos=1)
    unit.disconnect_cleanly()
    world.advance(500)  # the old certificate is long expired; the unit renewed before it went
    dispatch = world.connect("dispatch", keep_alive=0, peer=service_peer("dispatch"))
    dispatch.publish(CONTROL, b"while-away", qos=1)
    back = world.connect("TRK-1", **persistent(version), peer=unit_cert(T0 + 86_400, serial=2))
    assert back.connack.session_present and back.payloads == [b"while-away"]
    world.advance(1000)
    assert back.closed is None  # the new certificate's deadline, not the old one's


def test_a_connection_that_ends_first_leaves_no_timer_behind() -> None:
    world = lab()
    unit = world.connect("TRK-1", keep_alive=0, peer=unit_cert(T0 + 100))
    unit.disconnect_cleanly()
    again = world.connect("TRK-1", keep_alive=0, peer=unit_cert(T0 + 86_400, serial=2))
    world.advance(200)
    assert again.closed is None and world.broker.metrics.certificates_expired == 0


def test_without_a_policy_deadline_the_broker_ends_the_session_at_not_after() -> None:
    world = Lab(limits=NO_KEEP_ALIVE)  # the certificate floor only: no grace to add
    unit = world.connect("TRK-1", keep_alive=0, peer=unit_cert(T0 + 100))
    world.advance(99.5)
    assert unit.closed is None
    world.advance(0.5)
    assert unit.closed == "certificate_expired"
