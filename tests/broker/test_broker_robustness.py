"""Bad input closes only the connection that sent it, with the right code; nothing escapes receive()."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.broker import Close, ProtocolViolation, Send
from gateway.mqtt.client import MqttClient
from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Connect, ProtocolVersion, Publish
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.access import CertificateOnlyPolicy
from gateway.policy.decision import Decision
from gateway.policy.peer import Peer
from tests.broker.lab import V5, VERSIONS, Lab, Link, unit_peer


def with_bystander(lab: Lab) -> tuple[Link, Link]:
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#", qos=1)
    return ops, lab.connect("TRK-9")


def still_working(lab: Lab, ops: Link, pub: Link) -> None:
    before = len(ops.messages)
    pub.publish("fleet/TRK-9/telemetry/gps", b"still here", qos=1)
    assert ops.payloads[before:] == [b"still here"] and ops.closed is None and pub.closed is None


# (name, raw bytes sent after a valid CONNECT, close reason, 5.0 DISCONNECT reason code)
AFTER_CONNECT = [
    ("reserved packet type", b"\x00\x00", "malformed_packet", ReasonCode.MALFORMED_PACKET),
    ("bad remaining length", b"\x30\xff\xff\xff\xff\x01", "malformed_packet", ReasonCode.MALFORMED_PACKET),
    ("qos 3", b"\x36\x07\x00\x03a/b\x00\x01", "malformed_packet", ReasonCode.MALFORMED_PACKET),
    ("pubrel bad flags", b"\x60\x02\x00\x01", "malformed_packet", ReasonCode.MALFORMED_PACKET),
    ("server packet", b"\xd0\x00", "server_packet_from_client", ReasonCode.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "data", "reason", "code"), AFTER_CONNECT, ids=[c[0] for c in AFTER_CONNECT])
def test_bad_packets_close_only_their_connection(
    version: ProtocolVersion, name: str, data: bytes, reason: str, code: int
) -> None:
    lab = Lab()
    ops, pub = with_bystander(lab)
    bad = lab.connect("TRK-1", version=version)
    bad.clear()
    bad.send_raw(data)
    assert bad.closed in (reason, "malformed_packet")  # 3.1.1 calls some 5.0 protocol errors malformed
    if version == V5:
        assert bad.disconnect is not None and bad.disconnect.reason_code == code
    else:
        assert bytes(bad.received) == b""
    still_working(lab, ops, pub)
    assert any(isinstance(e, ProtocolViolation) for e in lab.broker.drain_events())


@pytest.mark.parametrize("version", VERSIONS)
def test_second_connect_is_a_protocol_error(version: ProtocolVersion) -> None:
    lab = Lab()
    ops, pub = with_bystander(lab)
    bad = lab.connect("TRK-1", version=version)
    bad.client.connect()
    lab.pump()
    assert bad.closed == "second_connect"
    if version == V5:
        assert bad.disconnect is not None and bad.disconnect.reason_code == ReasonCode.PROTOCOL_ERROR
    still_working(lab, ops, pub)


@pytest.mark.parametrize("version", VERSIONS)
def test_publish_to_a_wildcard_topic(version: ProtocolVersion) -> None:
    lab = Lab()
    ops, pub = with_bystander(lab)
    bad = lab.connect("TRK-1", version=version)
    bad.publish("fleet/+/telemetry", b"x", qos=1)
    assert bad.closed == "topic_name_invalid"
    if version == V5:
        assert bad.disconnect is not None and bad.disconnect.reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert ops.messages == []
    still_working(lab, ops, pub)


def test_packets_before_connect_are_closed_without_a_word() -> None:
    lab = Lab()
    ops, pub = with_bystander(lab)
    bad = lab.open(MqttClient("x"), unit_peer("TRK-1"))
    bad.send_raw(encode(Publish("fleet/TRK-1/x", b"early"), V5))
    assert bad.closed == "packet_before_connect" and bytes(bad.received) == b""
    still_working(lab, ops, pub)


def test_malformed_5_0_connect_gets_a_connack_with_the_code() -> None:
    lab = Lab()
    bad = lab.open(MqttClient("x"), unit_peer("TRK-1"))
    data = bytearray(encode(Connect("TRK-1", V5), V5))
    data[9] |= 0x01  # the reserved connect flag
    bad.send_raw(bytes(data))
    assert bad.closed == "malformed_packet"
    assert bytes(bad.received[:4]) == bytes((0x20, 3, 0, ReasonCode.MALFORMED_PACKET))


def test_oversized_packet_and_receive_maximum() -> None:
    from gateway.broker import BrokerLimits

    lab = Lab(limits=BrokerLimits(max_packet_size=1024, receive_maximum=2))
    ops, pub = with_bystander(lab)
    big = lab.connect("TRK-1")
    big.publish("fleet/TRK-1/x", b"x" * 2000)
    assert big.closed == "packet_too_large" and big.disconnect is not None
    assert big.disconnect.reason_code == ReasonCode.PACKET_TOO_LARGE
    greedy = lab.connect("TRK-2")
    for _ in range(3):
        greedy.client.publish("fleet/TRK-2/x", b"", qos=1)  # three unacknowledged in one read
    lab.pump()
    assert greedy.closed == "receive_maximum_exceeded"
    assert (
        greedy.disconnect is not None and greedy.disconnect.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    )
    still_working(lab, ops, pub)


class ExplodingPolicy(CertificateOnlyPolicy):
    def decide_publish(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        if topic.endswith("/boom"):
            raise RuntimeError("a bug in the policy engine")
        return super().decide_publish(peer, topic, payload_size, qos, retain, now)


def test_a_bug_closes_only_the_connection_it_happened_on() -> None:
    lab = Lab(ExplodingPolicy())
    ops, pub = with_bystander(lab)
    victim = lab.connect("TRK-1")
    victim.publish("fleet/TRK-1/boom", b"x", qos=1)
    assert victim.closed == "internal_error"
    assert lab.broker.metrics.internal_errors == 1
    still_working(lab, ops, pub)
    again = lab.connect("TRK-1")  # and the client id is usable again
    assert again.connack.reason_code == 0


def _check_actions(actions: Sequence[object]) -> None:
    for action in actions:
        assert isinstance(action, Send | Close)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=8))
def test_random_bytes_before_connect_never_raise(chunks: list[bytes]) -> None:
    lab = Lab()
    conn = lab.broker.open(unit_peer("TRK-1"), lab.now)
    for chunk in chunks:
        _check_actions(lab.broker.receive(conn, chunk, lab.now))
    _check_actions(lab.broker.tick(lab.now + 100))
    assert lab.broker.metrics.internal_errors == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(VERSIONS),
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=48),
            # mostly-valid fixed headers make the fuzzer reach the decoders and the broker's handlers
            st.tuples(st.integers(1, 15), st.integers(0, 15), st.binary(max_size=30)).map(
                lambda t: bytes((t[0] << 4 | t[1], len(t[2]))) + t[2]
            ),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_random_bytes_after_connect_never_raise_or_hurt_others(
    version: ProtocolVersion, chunks: list[bytes]
) -> None:
    lab = Lab()
    ops, pub = with_bystander(lab)
    fuzz = lab.connect("TRK-1", version=version)
    for chunk in chunks:
        if fuzz.closed:
            break
        actions = lab.broker.receive(fuzz.conn, chunk, lab.now)
        _check_actions(actions)
        lab.apply(actions)
        lab.pump()
    assert lab.broker.metrics.internal_errors == 0
    still_working(lab, ops, pub)
