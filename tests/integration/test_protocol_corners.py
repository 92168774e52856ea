"""MQTT corners through real clients over mTLS (paho 3.1.1 and 5.0; a raw client where paho cannot say it).

- an empty client id from a unit becomes its certificate's id (5.0: Assigned Client Identifier;
  3.1.1: only with clean session, else CONNACK 0x02);
- Server Keep Alive: keep alive 0 or above `limits.max_keep_alive` is capped, and 5.0 clients are told;
- outbound topic aliases for a 5.0 client that announces a Topic Alias Maximum;
- a Response Topic with wildcards is a Protocol Error (0x82), in a PUBLISH and in a will;
- a will's delay is bounded by the session's expiry (§3.1.3.2.2).
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Connect, ProtocolVersion
from tests.clients import V5, V311, Paho
from tests.harness import Credentials, GatewayProcess

KEEP_ALIVE_CAP = 4  # limits.max_keep_alive of this module's gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("corners")
    config = root / "gateway.yaml"
    config.write_text(f"limits:\n  max_keep_alive: {KEEP_ALIVE_CAP}\n")
    gateway = GatewayProcess(root, extra_args=("--config", str(config)))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def dispatch(gw: GatewayProcess) -> Credentials:
    return gw.issue("service", "dispatch")


@pytest.fixture(autouse=True)
def stop_clients() -> Iterator[None]:
    """Stop every paho network loop a test started, even when it failed half-way: a loop left running
    reconnects on its own and would take the `dispatch` session over from the next test."""
    yield
    for client in list(_LIVE):
        client.disconnect()
        client.loop_stop()
    _LIVE.clear()


_LIVE: list[mqtt.Client] = []


def _paho5(creds: Credentials, client_id: str | None = None) -> tuple[mqtt.Client, queue.Queue[Any]]:
    """A raw paho 5.0 client whose callbacks land in one queue as (kind, ...) tuples."""
    events: queue.Queue[Any] = queue.Queue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=creds.ident if client_id is None else client_id,
        protocol=mqtt.MQTTv5,
    )  # fmt: skip
    client.tls_set(ca_certs=str(creds.ca), certfile=str(creds.cert), keyfile=str(creds.key))
    client.on_connect = lambda c, u, f, reason, props: events.put(("connack", int(reason.value), props))
    client.on_disconnect = lambda c, u, f, reason, props: events.put(("disconnect", int(reason.value)))
    client.on_message = lambda c, u, m: events.put(("message", m.topic, bytes(m.payload), m.properties))
    _LIVE.append(client)
    return client, events


def _live(client: Paho) -> Paho:
    _LIVE.append(client.client)
    return client


def _next(events: queue.Queue[Any], kind: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        item = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if item[0] == kind:
            return item


# --- (a) empty client id --------------------------------------------------------------------------


def test_paho_5_unit_with_an_empty_client_id_is_assigned_its_certificate_id(
    gw: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gw.enroll_unit("TRK-EMPTY-5")
    truck = _live(Paho(gw.mqtt_port, unit, client_id="", version=V5))
    assert truck.connect() == (0, False)
    assert truck.connack_properties.AssignedClientIdentifier == "TRK-EMPTY-5"
    assert truck.subscribe("fleet/TRK-EMPTY-5/cmd/#", 1) == [1]  # its grants are its identity's
    service = _live(Paho(gw.mqtt_port, dispatch, version=V5))
    assert service.connect()[0] == 0
    assert service.publish("fleet/TRK-EMPTY-5/cmd/reboot", b"diag") == 0
    assert [m.payload for m in truck.expect(1)] == [b"diag"]
    truck.disconnect()
    service.disconnect()


def test_paho_3_1_1_unit_with_an_empty_client_id_and_clean_session_is_its_certificate_id(
    gw: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gw.enroll_unit("TRK-EMPTY-3")
    truck = _live(Paho(gw.mqtt_port, unit, client_id="", version=V311, clean=True, keepalive=KEEP_ALIVE_CAP))
    assert truck.connect() == (0, False)
    assert truck.subscribe("fleet/TRK-EMPTY-3/cmd/#", 1) == [1]
    service = _live(Paho(gw.mqtt_port, dispatch, version=V5))
    assert service.connect()[0] == 0
    assert service.publish("fleet/TRK-EMPTY-3/cmd/reboot", b"diag") == 0
    assert [m.payload for m in truck.expect(1)] == [b"diag"]
    truck.disconnect()
    service.disconnect()


def test_3_1_1_empty_client_id_without_clean_session_gets_connack_0x02(gw: GatewayProcess) -> None:
    # paho refuses to send this itself ("a client id must be provided if clean session is False").
    unit = gw.enroll_unit("TRK-EMPTY-3-KEEP")
    v311 = ProtocolVersion.MQTT_3_1_1
    with (
        socket.create_connection(("127.0.0.1", gw.mqtt_port)) as raw,
        gw.client_context(unit).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(Connect("", v311, clean_start=False), v311))
        tls.settimeout(10)
        assert tls.recv(4) == b"\x20\x02\x00\x02"  # identifier rejected


# --- (b) Server Keep Alive ------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "told"), [(0, KEEP_ALIVE_CAP), (1000, KEEP_ALIVE_CAP), (3, None)])
def test_paho_5_is_told_the_server_keep_alive_when_its_own_is_silly(
    gw: GatewayProcess, asked: int, told: int | None
) -> None:
    unit = gw.enroll_unit(f"TRK-KA-{asked}")
    truck = _live(Paho(gw.mqtt_port, unit, version=V5, keepalive=asked))
    assert truck.connect()[0] == 0
    assert getattr(truck.connack_properties, "ServerKeepAlive", None) == told
    if told is not None:  # paho obeys it: its pings keep the connection up past 1.5 x the cap
        time.sleep(1.5 * KEEP_ALIVE_CAP + 1)
        assert truck.disconnects.empty()
    truck.disconnect()


def test_paho_3_1_1_with_keep_alive_0_is_held_to_the_cap(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-KA-311")
    truck = _live(Paho(gw.mqtt_port, unit, version=V311, keepalive=0))  # paho never pings
    assert truck.connect()[0] == 0
    started = time.monotonic()
    truck.disconnects.get(timeout=1.5 * KEEP_ALIVE_CAP + 10)  # 3.1.1 cannot be told: it is cut
    assert time.monotonic() - started >= KEEP_ALIVE_CAP  # by the keep-alive timer, not at once
    truck.client.loop_stop()


# --- (c) outbound topic aliases -------------------------------------------------------------------


def test_paho_5_subscriber_announcing_a_topic_alias_maximum_receives_aliases(
    gw: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gw.enroll_unit("TRK-ALIAS")
    service, events = _paho5(dispatch, "dispatch")
    props = PahoProperties(PacketTypes.CONNECT)
    props.TopicAliasMaximum = 8
    service.connect("localhost", gw.mqtt_port, properties=props)
    service.loop_start()
    assert _next(events, "connack")[1] == 0
    service.subscribe("fleet/TRK-ALIAS/telemetry/#", qos=1)
    time.sleep(0.3)
    truck = _live(Paho(gw.mqtt_port, unit, version=V5))
    assert truck.connect()[0] == 0
    for i in range(3):
        assert truck.publish("fleet/TRK-ALIAS/telemetry/gps", f"fix-{i}".encode()) == 0
    got = [_next(events, "message") for _ in range(3)]
    # paho does not resolve aliases itself, so it shows the wire: the name once, then the alias alone.
    assert [(topic, payload) for _, topic, payload, _ in got] == [
        ("fleet/TRK-ALIAS/telemetry/gps", b"fix-0"),
        ("", b"fix-1"),
        ("", b"fix-2"),
    ]
    assert {props.TopicAlias for *_, props in got} == {1}
    truck.disconnect()
    service.disconnect()
    service.loop_stop()


def test_paho_5_without_a_topic_alias_maximum_gets_full_topic_names(
    gw: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gw.enroll_unit("TRK-NO-ALIAS")
    service = _live(Paho(gw.mqtt_port, gw.issue("service", "analytics"), version=V5))
    assert service.connect()[0] == 0
    assert service.subscribe("fleet/TRK-NO-ALIAS/telemetry/#", 1) == [1]
    truck = _live(Paho(gw.mqtt_port, unit, version=V5))
    assert truck.connect()[0] == 0
    for i in range(3):
        truck.publish("fleet/TRK-NO-ALIAS/telemetry/gps", f"fix-{i}".encode())
    got = service.expect(3)
    assert {m.topic for m in got} == {"fleet/TRK-NO-ALIAS/telemetry/gps"}
    assert not any(hasattr(m.properties, "TopicAlias") for m in got)
    truck.disconnect()
    service.disconnect()


# --- (d) Response Topic -----------------------------------------------------------------------------


def test_paho_5_publish_with_a_wildcard_response_topic_is_disconnected_0x82(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-RESPONSE")
    truck, events = _paho5(unit)
    truck.connect("localhost", gw.mqtt_port)
    truck.loop_start()
    assert _next(events, "connack")[1] == 0
    props = PahoProperties(PacketTypes.PUBLISH)
    props.ResponseTopic = "fleet/TRK-RESPONSE/cmd/+"
    truck.publish("fleet/TRK-RESPONSE/telemetry/gps", b"x", qos=1, properties=props)
    assert _next(events, "disconnect")[1] == 0x82
    truck.loop_stop()


def test_paho_5_will_with_a_wildcard_response_topic_gets_connack_0x82(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-WILL-RESPONSE")
    truck, events = _paho5(unit)
    will_props = PahoProperties(PacketTypes.WILLMESSAGE)
    will_props.ResponseTopic = "fleet/#"
    truck.will_set("fleet/TRK-WILL-RESPONSE/state", b"offline", qos=1, properties=will_props)
    truck.connect("localhost", gw.mqtt_port)
    truck.loop_start()
    assert _next(events, "connack")[1] == 0x82
    truck.loop_stop()


# --- (f) will delay bounded by session expiry ----------------------------------------------------


def test_paho_5_will_is_published_when_the_session_ends_before_its_delay(
    gw: GatewayProcess, dispatch: Credentials
) -> None:
    unit = gw.enroll_unit("TRK-WILL-DELAY")
    watcher = _live(Paho(gw.mqtt_port, dispatch, version=V5))
    assert watcher.connect()[0] == 0
    assert watcher.subscribe("fleet/TRK-WILL-DELAY/state", 1) == [1]
    truck, events = _paho5(unit)
    will_props = PahoProperties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = 600  # ten minutes...
    truck.will_set("fleet/TRK-WILL-DELAY/state", b"offline", qos=1, properties=will_props)
    connect_props = PahoProperties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = 2  # ...but the session ends two seconds after the connection
    truck.connect("localhost", gw.mqtt_port, clean_start=False, properties=connect_props)
    truck.loop_start()
    assert _next(events, "connack")[1] == 0
    sock = truck.socket()
    assert sock is not None
    lost_at = time.monotonic()
    sock.close()  # gone without DISCONNECT
    truck.loop_stop()
    (will,) = watcher.expect(1, timeout=30)
    waited = time.monotonic() - lost_at
    assert will.payload == b"offline"
    assert waited >= 1.5  # at the session's end (2 s), not at once...
    assert waited < 60  # ...and not after the will's ten minutes
    watcher.disconnect()


# --- (e) reason codes: refused by type is 0x82, whatever the body -----------------------------------


def test_a_second_connect_with_a_broken_body_is_a_protocol_error_0x82(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-SECOND-CONNECT")
    v5 = ProtocolVersion.MQTT_5
    with (
        socket.create_connection(("127.0.0.1", gw.mqtt_port)) as raw,
        gw.client_context(unit).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(Connect("TRK-SECOND-CONNECT", v5), v5))
        tls.settimeout(10)
        connack = tls.recv(64)
        assert connack[0] == 0x20 and connack[2:4] == b"\x00\x00"  # CONNACK, success
        tls.sendall(b"\x10\x03\x00\x04M")  # a CONNECT cut inside its protocol name
        assert tls.recv(64) == b"\xe0\x01\x82"  # not 0x81: a second CONNECT is a Protocol Error
