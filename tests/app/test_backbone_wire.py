"""The backbone's wire forms (gateway/app/backbone_wire.py): what one node signs, another checks and
turns back into the message. The first form (one header per field) is still read: nodes of earlier
versions send it and left it in JetStream, so its MAC must never change."""

from __future__ import annotations

import hmac
import time

from hypothesis import given
from hypothesis import strategies as st

from gateway.app.backbone_wire import (
    H_ID,
    H_MAC,
    H_NODE,
    H_SERVED,
    H_TIME,
    MSG_ID,
    authentic,
    hmac_sha256,
    message_from,
    message_headers,
    open_message,
    seal,
    sign,
)
from gateway.broker.message import Message
from gateway.broker.subjects import topic_to_subject
from gateway.mqtt.packets import Properties
from gateway.policy.peer import Peer
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


@given(key=st.binary(max_size=200), data=st.binary(max_size=600))
def test_the_mac_is_the_standard_hmac_sha256_for_any_key_length(key: bytes, data: bytes) -> None:
    # Keys shorter than, as long as and longer than SHA-256's 64-byte block; the second call copies
    # the HMAC kept for that key, which must be left as it was keyed.
    assert hmac_sha256(key, data) == hmac.digest(key, data, "sha256")
    assert hmac_sha256(key, data + b"x") == hmac.digest(key, data + b"x", "sha256")
    assert hmac_sha256(key, data) == hmac.digest(key, data, "sha256")


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


# --- the sealed form: what nodes send now ---------------------------------------------------------

UNIT = Peer("127.0.0.1:4000", Identity("unit", "TRK-1", "fleet.local"))
SUBJECT = "fleetgate.m.fleet.TRK-1.telemetry.gps"


def _sealed(
    message: Message, *, node: str = "n1", stored: bool = False, served: str = ""
) -> tuple[bytes, dict[str, str] | None]:
    return seal(KEY, SUBJECT, node, "n1:x:1", message, "TRK-1", UNIT, int(time.time() * 1000), served, stored)


def test_a_sealed_message_has_no_header_but_jetstreams_id_and_opens_as_the_first_form_would() -> None:
    props = Properties(content_type="text/plain", user_properties=(("k", "v\tw"),))
    message = Message("fleet/TRK-1/telemetry/gps", b"FG2\tlooks sealed\n", 1, True, props)
    body, headers = _sealed(message, served="fg-share-abc")
    assert headers is None and body.startswith(b"FG2\t")
    opened = open_message(KEY, SUBJECT, None, body, time.time())
    assert not isinstance(opened, str)
    fields, payload = opened
    assert payload == b"FG2\tlooks sealed\n"
    assert fields[H_SERVED] == "fg-share-abc" and fields[H_ID] == "n1:x:1" and fields[H_NODE] == "n1"
    assert message_from(SUBJECT, payload, fields, "fleetgate") == (
        "fleet/TRK-1/telemetry/gps",
        payload,
        1,
        True,
        props,
        "TRK-1",
    )
    _, stored_headers = _sealed(message, stored=True)
    assert stored_headers == {MSG_ID: "n1:x:1"}


def test_a_sealed_message_changed_anywhere_or_late_is_refused() -> None:
    body, _ = _sealed(Message("fleet/TRK-1/telemetry/gps", b"brake", 0, False, Properties()))
    now = time.time()
    assert open_message(KEY, SUBJECT + "x", None, body, now) == "unauthenticated"
    assert open_message(KEY, SUBJECT, None, body[:-1] + b"X", now) == "unauthenticated"
    assert open_message(KEY, SUBJECT, None, body.replace(b"\t0\t0\t", b"\t1\t0\t"), now) == "unauthenticated"
    assert open_message(b"other-key" * 4, SUBJECT, None, body, now) == "unauthenticated"
    assert open_message(KEY, SUBJECT, None, body[:40], now) == "unauthenticated"
    assert open_message(KEY, SUBJECT, None, b"brake", now) == "unauthenticated"  # neither form
    assert open_message(KEY, SUBJECT, None, body, now + 600) == "stale"


def test_a_stored_sealed_message_needs_its_signed_id_as_jetstreams_id() -> None:
    body, headers = _sealed(Message("fleet/TRK-1/telemetry/gps", b"fix", 1, False, Properties()), stored=True)
    now = time.time()
    assert not isinstance(open_message(KEY, SUBJECT, headers, body, now, stored=True), str)
    # a copy replayed into the stream under a new id would be stored again: refused on delivery
    assert open_message(KEY, SUBJECT, {MSG_ID: "n1:x:2"}, body, now, stored=True) == "unauthenticated"
    assert open_message(KEY, SUBJECT, None, body, now, stored=True) == "unauthenticated"


def test_a_node_name_that_would_break_the_line_falls_back_to_the_first_form() -> None:
    message = Message("fleet/TRK-1/telemetry/gps", b"fix", 1, False, Properties())
    payload, headers = _sealed(message, node="bad\tname", stored=True)
    assert payload == b"fix" and headers is not None and headers[H_NODE] == "bad\tname"
    assert headers[MSG_ID] == "n1:x:1"
    opened = open_message(KEY, SUBJECT, headers, payload, time.time(), stored=True)
    assert not isinstance(opened, str) and opened[1] == b"fix"


def test_a_first_form_message_whose_payload_looks_sealed_is_still_read_as_the_first_form() -> None:
    # sent by a node of an earlier version, or left in JetStream by one
    subject, headers = _signed(
        Message("fleet/TRK-1/telemetry/gps", b"FG2\tnot sealed", 0, False, Properties())
    )
    opened = open_message(KEY, subject, headers, b"FG2\tnot sealed", time.time())
    assert not isinstance(opened, str) and opened == (headers, b"FG2\tnot sealed")
