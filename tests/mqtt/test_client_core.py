"""The sans-IO client core against hand-made server bytes."""

from __future__ import annotations

import pytest

from gateway.mqtt.client import MqttClient, PublishDone
from gateway.mqtt.codec import decode_packet, encode
from gateway.mqtt.packets import (
    Connack,
    Connect,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Will,
)

V5, V311 = ProtocolVersion.MQTT_5, ProtocolVersion.MQTT_3_1_1


def sent(client: MqttClient, version: ProtocolVersion) -> list[object]:
    data = client.data_to_send()
    out: list[object] = []
    while data:
        # split on packet boundaries with the remaining-length varint
        pos, size, shift = 1, 0, 0
        while True:
            byte = data[pos]
            size |= (byte & 0x7F) << shift
            pos += 1
            shift += 7
            if byte < 0x80:
                break
        end = pos + size
        out.append(decode_packet(data[:end], None if data[0] >> 4 == 1 else version))
        data = data[end:]
    return out


@pytest.mark.parametrize("version", [V5, V311])
def test_connect_and_connack(version: ProtocolVersion) -> None:
    client = MqttClient("TRK-1", version=version, will=Will("s", b"bye"), keep_alive=30)
    client.connect()
    (connect,) = sent(client, version)
    assert isinstance(connect, Connect) and connect.client_id == "TRK-1" and connect.will is not None
    events = client.receive_data(encode(Connack(reason_code=0x85), version))
    assert isinstance(events[0], Connack) and not client.connected
    assert events[0].reason_code == 0x85  # 3.1.1's 0x02 arrives as the 5.0 reason


@pytest.mark.parametrize("version", [V5, V311])
def test_outbound_qos_flows(version: ProtocolVersion) -> None:
    client = MqttClient("c", version=version)
    one = client.publish("t", b"1", qos=1)
    two = client.publish("t", b"2", qos=2)
    assert one == 1 and two == 2 and set(client.pending) == {1, 2}
    client.data_to_send()
    assert client.receive_data(encode(Puback(1), version)) == [PublishDone(1, 0)]
    assert client.receive_data(encode(Pubrec(2), version)) == []
    assert sent(client, version) == [Pubrel(2)]
    assert client.receive_data(encode(Pubcomp(2), version)) == [PublishDone(2, 0)]
    assert not client.pending


def test_pubrec_error_ends_the_flow() -> None:
    client = MqttClient("c")
    client.publish("t", b"", qos=2)
    assert client.receive_data(encode(Pubrec(1, 0x87), V5)) == [PublishDone(1, 0x87)]
    assert not client.pending


def test_inbound_qos2_is_delivered_once() -> None:
    client = MqttClient("c")
    publish = Publish("t", b"x", 2, packet_id=5)
    assert client.receive_data(encode(publish, V5)) == [publish]
    assert client.receive_data(encode(Publish("t", b"x", 2, dup=True, packet_id=5), V5)) == []
    assert sent(client, V5) == [Pubrec(5), Pubrec(5)]
    client.receive_data(encode(Pubrel(5), V5))
    assert sent(client, V5) == [Pubcomp(5)] and not client.inbound_qos2


def test_manual_acks_and_topic_alias_from_server() -> None:
    client = MqttClient("c", auto_ack=False)
    first = Publish("long/topic", b"1", 1, packet_id=1, properties=Properties(topic_alias=1))
    (got,) = client.receive_data(encode(first, V5))
    assert isinstance(got, Publish) and client.data_to_send() == b""
    client.ack(got)
    assert sent(client, V5) == [Puback(1)]
    (again,) = client.receive_data(encode(Publish("", b"2", properties=Properties(topic_alias=1)), V5))
    assert isinstance(again, Publish) and again.topic == "long/topic"


def test_subscribe_and_resend() -> None:
    client = MqttClient("c")
    pid = client.subscribe("a/#", "b", qos=1)
    (subscribe,) = sent(client, V5)
    assert isinstance(subscribe, Subscribe) and [s.qos for s in subscribe.subscriptions] == [1, 1]
    assert client.receive_data(encode(Suback(pid, (1, 1)), V5)) == [Suback(pid, (1, 1))]
    client.publish("t", b"x", qos=1)
    client.data_to_send()
    client.resend_pending()
    (dup,) = sent(client, V5)
    assert isinstance(dup, Publish) and dup.dup
