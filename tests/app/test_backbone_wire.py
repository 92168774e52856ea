"""The backbone's wire form (gateway/app/backbone_wire.py): what one node signs, another checks and
turns back into the message. Nodes of two versions share a cluster during a rolling upgrade, so the
MAC of a given message must never change."""

from __future__ import annotations

import time

from gateway.app.backbone_wire import (
    H_MAC,
    H_TIME,
    authentic,
    message_from,
    message_headers,
    sign,
)
from gateway.broker.sessions import Message
from gateway.broker.subjects import topic_to_subject
from gateway.mqtt.packets import Properties
from gateway.policy.access import Peer
from pki.names import Identity

KEY = b"cluster-key-0123456789abcdef0123"


def test_the_mac_of_a_message_is_what_every_earlier_version_computed() -> None:
    # The value below was computed by the first implementation (one hmac.update per part).
    headers = {
        "Fg-Node": "n1",
        "Fg-Id": "n1:x:7",
        "Fg-Client": '"TRK-1"',
        "Fg-Qos": "1",
        "Fg-Retain": "0",
        "Fg-Time": "1765129000000",
        "Fg-Mac": "ignored",
        "Nats-Msg-Id": "n1:x:7",
        "Fg-Props": '{"ct":"text/plain; ü"}',
    }
    mac = sign(KEY, "fleetgate.m.fleet.TRK-1.telemetry.gps", headers, b"payload \x00\xff")
    assert mac == "de4548305f5a27292b2bf254dff70a8b0fbeb406e69fab2d7b4662511092aea1"
    # a header no fleetgate node sets is signed too
    assert sign(
        KEY, "fleetgate.m.fleet.TRK-1.telemetry.gps", {**headers, "X-Other": "v"}, b"payload \x00\xff"
    ) == ("011f12ee17cb4814187ac4aa24d68d928447842dafe5555891655e0f45925358")


def _signed(message: Message) -> tuple[str, dict[str, str]]:
    peer = Peer("127.0.0.1:4000", Identity("unit", "TRK-1", "fleet.local"))
    headers = message_headers("n1", "n1:x:1", message, "TRK-1", peer)
    subject = topic_to_subject(message.topic)
    headers[H_TIME] = str(int(time.time() * 1000))
    headers[H_MAC] = sign(KEY, subject, headers, message.payload)
    return subject, headers


def test_a_message_without_properties_comes_back_as_it_left() -> None:
    subject, headers = _signed(Message("fleet/TRK-1/telemetry/gps", b"fix", 1, True, Properties()))
    assert authentic(KEY, subject, headers, b"fix", time.time()) is None
    assert message_from(subject, b"fix", headers, "fleetgate") == (
        "fleet/TRK-1/telemetry/gps",
        b"fix",
        1,
        True,
        Properties(),
        "TRK-1",
    )


def test_a_message_with_properties_comes_back_with_them() -> None:
    props = Properties(
        content_type="application/json", correlation_data=b"\x00\x01", user_properties=(("k", "v"),)
    )
    subject, headers = _signed(Message("fleet/TRK-1/state", b"{}", 0, False, props))
    assert authentic(KEY, subject, headers, b"{}", time.time()) is None
    assert message_from(subject, b"{}", headers, "fleetgate")[4] == props


def test_a_changed_header_value_or_payload_is_refused() -> None:
    subject, headers = _signed(Message("fleet/TRK-1/telemetry/gps", b"fix", 1, False, Properties()))
    assert authentic(KEY, subject, {**headers, "Fg-Qos": "0"}, b"fix", time.time()) == "unauthenticated"
    assert authentic(KEY, subject, headers, b"fiX", time.time()) == "unauthenticated"
    assert authentic(KEY, subject + "x", headers, b"fix", time.time()) == "unauthenticated"
    assert authentic(KEY, subject, headers, b"fix", time.time() + 600) == "stale"
