"""Real third-party MQTT clients over mTLS: paho-mqtt (3.1.1, 5.0), aiomqtt, amqtt, mosquitto_pub/sub.

Units publish their own telemetry and state and listen on their control topics; a dispatch service
subscribes to the fleet's telemetry and sends control messages: the product's topic table.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid

import aiomqtt
import pytest

from tests.clients import V5, V311, Paho
from tests.harness import Credentials, GatewayProcess


@pytest.fixture(scope="module")
def dispatch(gateway: GatewayProcess) -> Credentials:
    return gateway.issue("service", "dispatch")


def unique_unit(prefix: str = "TRK") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8].upper()}"


def subscriber(gateway: GatewayProcess, creds: Credentials, topic_filter: str, qos: int = 2) -> Paho:
    client = Paho(gateway.mqtt_port, creds, version=V5)
    assert client.connect()[0] == 0
    assert client.subscribe(topic_filter, qos) == [qos]
    return client


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_publish_subscribe_every_qos(
    gateway: GatewayProcess, dispatch: Credentials, version: object, qos: int
) -> None:
    unit = gateway.enroll_unit(unique_unit())
    sub = subscriber(gateway, dispatch, f"fleet/{unit.ident}/telemetry/#")
    pub = Paho(gateway.mqtt_port, unit, version=version)  # type: ignore[arg-type]
    assert pub.connect() == (0, False)
    payloads = [f'{{"seq": {n}, "lat": 52.1}}'.encode() for n in range(5)]
    for payload in payloads:
        assert pub.publish(f"fleet/{unit.ident}/telemetry/gps", payload, qos=qos) == 0
    got = sub.expect(len(payloads))
    assert [m.payload for m in got] == payloads  # in order, none lost, none duplicated
    assert {m.qos for m in got} == {qos}
    assert sub.quiet(0.3) == []
    pub.disconnect()
    sub.disconnect()


def test_control_messages_reach_the_unit_byte_identical(
    gateway: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gateway.enroll_unit(unique_unit())
    truck = Paho(gateway.mqtt_port, unit, version=V311)
    assert truck.connect()[0] == 0
    assert truck.subscribe(f"fleet/{unit.ident}/control/#", 1) == [1]
    service = Paho(gateway.mqtt_port, dispatch, version=V5)
    assert service.connect()[0] == 0
    body = bytes(range(256))  # binary payloads pass untouched
    assert service.publish(f"fleet/{unit.ident}/control/speed-limit", body, qos=1) == 0
    [message] = truck.expect(1)
    assert (message.topic, message.payload, message.qos) == (
        f"fleet/{unit.ident}/control/speed-limit",
        body,
        1,
    )
    truck.disconnect()
    service.disconnect()


def test_retained_state_is_delivered_to_later_subscribers_and_can_be_cleared(
    gateway: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gateway.enroll_unit(unique_unit())
    truck = Paho(gateway.mqtt_port, unit, version=V5)
    assert truck.connect()[0] == 0
    topic = f"fleet/{unit.ident}/state"
    assert truck.publish(topic, b"online", qos=1, retain=True) == 0
    late = subscriber(gateway, dispatch, topic, qos=1)
    [message] = late.expect(1)
    assert (message.payload, message.retain) == (b"online", True)
    late.disconnect()
    assert truck.publish(topic, b"", qos=1, retain=True) == 0  # an empty retained message clears it
    later = subscriber(gateway, dispatch, topic, qos=1)
    assert later.quiet(0.5) == []
    later.disconnect()
    truck.disconnect()


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_will_fires_on_abnormal_loss_only(
    gateway: GatewayProcess, dispatch: Credentials, version: object
) -> None:
    unit = gateway.enroll_unit(unique_unit())
    topic = f"fleet/{unit.ident}/state"
    watcher = subscriber(gateway, dispatch, topic, qos=1)
    polite = Paho(gateway.mqtt_port, unit, version=version, will=(topic, b"offline", 1, False))  # type: ignore[arg-type]
    assert polite.connect()[0] == 0
    polite.disconnect()
    assert watcher.quiet(0.5) == []  # a normal DISCONNECT discards the will
    crashing = Paho(gateway.mqtt_port, unit, version=version, will=(topic, b"offline", 1, False))  # type: ignore[arg-type]
    assert crashing.connect()[0] == 0
    crashing.drop()
    [will] = watcher.expect(1)
    assert will.payload == b"offline"
    watcher.disconnect()


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_persistent_session_gets_what_was_published_while_offline(
    gateway: GatewayProcess, dispatch: Credentials, version: object
) -> None:
    unit = gateway.enroll_unit(unique_unit())
    truck_options = {"version": version, "clean": False, "session_expiry": 3600}
    truck = Paho(gateway.mqtt_port, unit, **truck_options)  # type: ignore[arg-type]
    assert truck.connect() == (0, False)
    assert truck.subscribe(f"fleet/{unit.ident}/control/#", 1) == [1]
    truck.disconnect()
    service = Paho(gateway.mqtt_port, dispatch, version=V5)
    assert service.connect()[0] == 0
    sent = [f"reroute-{n}".encode() for n in range(3)]
    for body in sent:
        assert service.publish(f"fleet/{unit.ident}/control/route", body, qos=1) == 0
    service.disconnect()
    back = Paho(gateway.mqtt_port, unit, **truck_options)  # type: ignore[arg-type]
    assert back.connect() == (0, True)  # session present
    assert [m.payload for m in back.expect(3)] == sent
    back.disconnect()


def test_mosquitto_pub_and_sub(gateway: GatewayProcess, dispatch: Credentials) -> None:
    unit = gateway.enroll_unit(unique_unit())
    topic = f"fleet/{unit.ident}/telemetry/engine"
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "localhost",
            "-p",
            str(gateway.mqtt_port),
            "--cafile",
            str(dispatch.ca),
            "--cert",
            str(dispatch.cert),
            "--key",
            str(dispatch.key),
            "-i",
            "dispatch",
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "15",
            "-V",
            "mqttv5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = [
        "mosquitto_pub",
        "-h",
        "localhost",
        "-p",
        str(gateway.mqtt_port),
        "--cafile",
        str(unit.ca),
        "--cert",
        str(unit.cert),
        "--key",
        str(unit.key),
        "-i",
        unit.ident,
        "-t",
        topic,
    ]
    import time

    time.sleep(0.7)  # let the subscription land
    for payload, version in (("rpm=1800", "mqttv311"), ("rpm=1900", "mqttv5")):
        done = subprocess.run(
            [*base, "-m", payload, "-q", "2", "-V", version], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    out, err = sub.communicate(timeout=20)
    assert out.split() == ["rpm=1800", "rpm=1900"], err


def test_aiomqtt_round_trip(gateway: GatewayProcess, dispatch: Credentials) -> None:
    unit = gateway.enroll_unit(unique_unit())

    def context(creds: Credentials) -> ssl.SSLContext:
        return gateway.client_context(creds)

    async def scenario() -> list[bytes]:
        topic = f"fleet/{unit.ident}/telemetry/fuel"
        async with aiomqtt.Client(
            "localhost",
            gateway.mqtt_port,
            identifier="dispatch",
            tls_context=context(dispatch),
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as sub:
            await sub.subscribe(topic, qos=1)
            async with aiomqtt.Client(
                "localhost",
                gateway.mqtt_port,
                identifier=unit.ident,
                tls_context=context(unit),
                protocol=aiomqtt.ProtocolVersion.V311,
            ) as pub:
                for n in range(3):
                    await pub.publish(topic, f"litres={n}".encode(), qos=1)
            got: list[bytes] = []
            async with asyncio.timeout(10):
                async for message in sub.messages:
                    got.append(bytes(message.payload))  # type: ignore[arg-type]
                    if len(got) == 3:
                        break
            return got

    assert asyncio.run(scenario()) == [b"litres=0", b"litres=1", b"litres=2"]


def test_amqtt_client_round_trip(gateway: GatewayProcess, dispatch: Credentials) -> None:
    from amqtt.client import MQTTClient
    from amqtt.mqtt.constants import QOS_1

    unit = gateway.enroll_unit(unique_unit())

    def client(creds: Credentials) -> MQTTClient:
        config = {
            "auto_reconnect": False,
            "connection": {
                "uri": f"mqtts://localhost:{gateway.mqtt_port}/",
                "cafile": str(creds.ca),
                "certfile": str(creds.cert),
                "keyfile": str(creds.key),
            },
        }
        return MQTTClient(client_id=creds.ident, config=config)

    async def scenario() -> tuple[str, bytes]:
        topic = f"fleet/{unit.ident}/telemetry/gps"
        sub, pub = client(dispatch), client(unit)
        await sub.connect(f"mqtts://localhost:{gateway.mqtt_port}/", cafile=str(dispatch.ca))
        await sub.subscribe([(topic, QOS_1)])
        await pub.connect(f"mqtts://localhost:{gateway.mqtt_port}/", cafile=str(unit.ca))
        await pub.publish(topic, b'{"lat": 48.85}', qos=QOS_1)
        message = await sub.deliver_message(timeout_duration=10)
        await pub.disconnect()
        await sub.disconnect()
        assert message is not None and message.publish_packet is not None
        return message.publish_packet.variable_header.topic_name, bytes(message.data or b"")

    assert asyncio.run(scenario()) == (f"fleet/{unit.ident}/telemetry/gps", b'{"lat": 48.85}')


def test_persistent_session_survives_a_gateway_restart(fresh_gateway: GatewayProcess) -> None:
    gw = fresh_gateway
    dispatch = gw.issue("service", "dispatch")
    unit = gw.enroll_unit("TRK-RESTART")
    truck = Paho(gw.mqtt_port, unit, version=V5, clean=False, session_expiry=3600)
    assert truck.connect() == (0, False)
    assert truck.subscribe("fleet/TRK-RESTART/control/#", 2) == [2]
    truck.disconnect()
    service = Paho(gw.mqtt_port, dispatch, version=V5)
    assert service.connect()[0] == 0
    sent = [f"order-{n}".encode() for n in range(10)]
    for n, body in enumerate(sent):
        assert service.publish("fleet/TRK-RESTART/control/orders", body, qos=1 + n % 2) == 0
    service.disconnect()
    gw.restart()
    back = Paho(gw.mqtt_port, unit, version=V5, clean=False, session_expiry=3600)
    assert back.connect() == (0, True)
    got = back.expect(10)
    # paho hands a QoS 2 message to the application at PUBREL, so QoS 1 ones may overtake it;
    # within each QoS the order is the publish order, and nothing is lost or duplicated.
    for qos in (1, 2):
        assert [m.payload for m in got if m.qos == qos] == [b for n, b in enumerate(sent) if 1 + n % 2 == qos]
    assert back.quiet(0.5) == []
    back.disconnect()
