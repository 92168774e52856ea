"""gateway/app/backbone.py without a NATS server: the headers a message crosses with, and the
single gateway's path never importing nats."""

from __future__ import annotations

import subprocess
import sys

from gateway.app.backbone import H_PROPS, NatsBackbone, message_from, message_headers
from gateway.broker.message import Message
from gateway.broker.subjects import topic_to_subject
from gateway.mqtt.packets import Properties
from gateway.policy.peer import Peer
from pki.names import Identity


def test_a_message_crosses_with_its_qos_retain_publisher_and_5_0_properties() -> None:
    props = Properties(
        payload_format_indicator=1,
        message_expiry_interval=30,
        content_type="text/plain\r\nFg-Node: evil",  # a header line cannot be injected
        response_topic="fleet/TRK-1/control/reply",
        correlation_data=b"\x00\xff",
        user_properties=(("k", "v"), ("k", "w")),
    )
    message = Message("fleet/TRK 1/v1.2", b"\x00payload", 1, True, props, 1030.0)
    peer = Peer("10.0.0.7:1", Identity("unit", "TRK-1", "fleet.example"))
    headers = message_headers("node-a", "node-a:x:1", message, "TRK-1", peer)
    assert all("\r" not in v and "\n" not in v for v in headers.values())
    assert H_PROPS in headers
    topic, payload, qos, retain, got, client = message_from(
        topic_to_subject(message.topic), message.payload, headers, "fleetgate"
    )
    assert (topic, payload, qos, retain, client) == ("fleet/TRK 1/v1.2", b"\x00payload", 1, True, "TRK-1")
    assert got == props


def test_the_single_gateway_never_imports_nats() -> None:
    code = "import sys, gateway.app.runtime, gateway.cli; assert 'nats' not in sys.modules, 'nats imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_logs_name_the_nats_servers_without_their_credentials() -> None:
    class Driver:
        broker = None

    backbone = NatsBackbone(
        "nats://fleet:secret@nats-1:4222, tls://nats-2:4222", "node-a", Driver(), b"k" * 32
    )  # type: ignore[arg-type]
    assert backbone.where == "nats://nats-1:4222, tls://nats-2:4222"
