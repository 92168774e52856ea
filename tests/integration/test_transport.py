"""The transport under bad manners: slow handshakes, no CONNECT, garbage after TLS, shutdown,
and the loopback lab listener. Each misbehaving connection is closed on its own; a bystander is not."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.clients import V5, V311, Paho
from tests.harness import GatewayProcess


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with short handshake and CONNECT timeouts, so slow clients are cut quickly."""
    root = tmp_path_factory.mktemp("quick")
    config = root / "gateway.yaml"
    config.write_text("tls:\n  handshake_timeout: 1\nlimits:\n  connect_timeout: 1\n")
    gw = GatewayProcess(root, lab=True, extra_args=("--config", str(config)))
    gw.init()
    gw.start()
    yield gw
    gw.stop()


def closed_within(sock: socket.socket | ssl.SSLSocket, seconds: float) -> float | None:
    """Seconds until the peer closed the connection, or None if it was still open after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(1024):
                return time.monotonic() - started
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError, OSError):
        return time.monotonic() - started


def test_a_client_that_never_finishes_the_tls_handshake_is_dropped(quick: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", quick.mqtt_port)) as sock:
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
        elapsed = closed_within(sock, 5)
    assert elapsed is not None and elapsed < 3


def test_a_client_that_never_sends_connect_is_dropped(quick: GatewayProcess) -> None:
    creds = quick.enroll_unit("TRK-SILENT")
    with (
        socket.create_connection(("127.0.0.1", quick.mqtt_port)) as raw,
        quick.client_context(creds).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        elapsed = closed_within(tls, 5)
    assert elapsed is not None and elapsed < 3


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff\xff", b"\x10\xff\xff\xff\xff\x7f", b"\x30\x05\x00\x03a/b", b"GET / HTTP/1.1\r\n\r\n"],
    ids=["reserved-type", "oversize-length", "publish-before-connect", "http"],
)
def test_garbage_after_tls_closes_only_that_connection(quick: GatewayProcess, garbage: bytes) -> None:
    tag = f"{garbage[0]:02X}{len(garbage)}"
    creds = quick.enroll_unit(f"TRK-GARBAGE-{tag}")
    bystander_unit = quick.enroll_unit(f"TRK-OK-{tag}")
    bystander = Paho(quick.mqtt_port, bystander_unit, version=V5)
    assert bystander.connect()[0] == 0
    with (
        socket.create_connection(("127.0.0.1", quick.mqtt_port)) as raw,
        quick.client_context(creds).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(garbage)
        assert closed_within(tls, 5) is not None
    assert bystander.publish(f"fleet/{bystander_unit.ident}/telemetry/gps", b"still here", qos=1) == 0
    bystander.disconnect()


def test_the_lab_listener_takes_anonymous_clients_on_loopback_but_not_dollar_topics(
    quick: GatewayProcess,
) -> None:
    assert quick.lab_port is not None
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lab-conformance-suite", protocol=mqtt.MQTTv5)
    got: list[bytes] = []
    granted: list[int] = []
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.on_subscribe = lambda c, u, mid, reasons, props: granted.extend(int(r.value) for r in reasons)
    client.connect("127.0.0.1", quick.lab_port)
    client.loop_start()
    client.subscribe([("any/topic/#", 1), ("$SYS/#", 1)])
    deadline = time.monotonic() + 5
    while len(granted) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert granted == [1, 0x87]
    client.publish("any/topic/x", b"lab", qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == [b"lab"]
    client.loop_stop()
    client.disconnect()
    assert "INSECURE plaintext listener" in quick.log()


def test_shutdown_tells_mqtt5_clients_server_shutting_down(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    gw.init()
    gw.start()
    v5 = Paho(gw.mqtt_port, gw.enroll_unit("TRK-V5"), version=V5)
    v311 = Paho(gw.mqtt_port, gw.enroll_unit("TRK-V311"), version=V311)
    assert v5.connect()[0] == 0 and v311.connect()[0] == 0
    assert gw.stop() == 0  # SIGTERM: graceful, exit status 0
    assert v5.disconnects.get(timeout=5) == 0x8B
    assert v311.disconnects.get(timeout=5) != 0  # 3.1.1 has no DISCONNECT from the server: a close
