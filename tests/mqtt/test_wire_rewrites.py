"""The byte rewrites on the hot path give exactly what encoding the packet afresh would."""

from __future__ import annotations

import pytest

from gateway.mqtt.codec import encode, encode_publish, puback_success, publish_at_qos0
from gateway.mqtt.errors import MqttError
from gateway.mqtt.packets import Properties, ProtocolVersion, Puback, Publish

VERSIONS = (ProtocolVersion.MQTT_3_1_1, ProtocolVersion.MQTT_5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize(
    "size", [0, 1, 100, 120, 121, 122, 123, 124, 125, 126, 127, 128, 16_370, 16_384, 70_000]
)
@pytest.mark.parametrize("topic", ["a", "fleet/TRK-00001/telemetry/gps", "x" * 300])
def test_the_qos0_form_of_a_publish_is_its_fresh_qos0_encoding(
    version: ProtocolVersion, qos: int, size: int, topic: str
) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sent = encode_publish(Publish(topic, payload, qos, packet_id=0x1234), version)
    assert publish_at_qos0(sent) == encode_publish(Publish(topic, payload, 0), version)


def test_properties_are_carried_into_the_qos0_form() -> None:
    props = Properties(content_type="application/json", user_properties=(("k", "v"),))
    v5 = ProtocolVersion.MQTT_5
    sent = encode_publish(Publish("t/1", b"{}", 1, packet_id=9, properties=props), v5)
    assert publish_at_qos0(sent) == encode_publish(Publish("t/1", b"{}", 0, properties=props), v5)


def test_a_qos0_publish_is_its_own_qos0_form_and_retain_or_dup_are_refused() -> None:
    v5 = ProtocolVersion.MQTT_5
    plain = encode_publish(Publish("t", b"x", 0), v5)
    assert publish_at_qos0(plain) is plain
    for publish in (
        Publish("t", b"x", 1, retain=True, packet_id=1),
        Publish("t", b"x", 1, dup=True, packet_id=1),
    ):
        with pytest.raises(MqttError):
            publish_at_qos0(encode_publish(publish, v5))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("packet_id", [1, 0x1234, 0xFFFF])
def test_puback_success_is_the_encoded_puback(version: ProtocolVersion, packet_id: int) -> None:
    assert puback_success(packet_id) == encode(Puback(packet_id), version)


@pytest.mark.parametrize("packet_id", [0, 0x10000])
def test_puback_success_refuses_an_impossible_id(packet_id: int) -> None:
    with pytest.raises(MqttError):
        puback_success(packet_id)
