"""Strangers who hold nothing at all, against the HTTPS port: they cannot take MQTT's descriptors, and
they cannot hold a connection open by being slow.

The gateway runs with `ulimit -n 256` (set in the child before exec), the review's reproduction:
hundreds of idle TCP sockets on the HTTPS port used to fill the descriptor table, and then no unit
could reach MQTT (`accept_failed_24`). Now every listener has a gate (gateway/edge/admission.py) with
a cap from the open-file budget (gateway/app/fd_budget.py: HTTPS at most a quarter), per-source caps,
and HTTPS has a handshake timeout and a request timeout of its own.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import V5, Paho
from tests.hardening.common import Bystander, record_figure
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import eventually

OPEN_FILES = 256
IDLE_SOCKETS = 300
FROM_ONE_HOST = 40  # from 127.0.0.2, which is not exempt from the per-source limits
HTTPS_PER_SOURCE = 16  # the default limits.https_max_connections_per_source
REQUEST_TIMEOUT = 2.0
HANDSHAKE_TIMEOUT = 6.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("fd")
    config = root / "gateway.yaml"
    config.write_text(
        f"tls:\n  handshake_timeout: {HANDSHAKE_TIMEOUT}\n"
        f"limits:\n  https_request_timeout: {REQUEST_TIMEOUT}\n"
    )
    gateway = GatewayProcess(root, extra_args=("--config", str(config)), open_files=OPEN_FILES)
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _idle(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """TCP connections that never send a byte (no ClientHello)."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def _unit_connects(gw: GatewayProcess, creds: Credentials) -> tuple[bool, float, str]:
    """Whether a unit completes its mTLS handshake and CONNECT now, how long it took, and any error."""
    client = Paho(gw.mqtt_port, creds, version=V5)
    started = time.monotonic()
    try:
        code, _ = client.connect(timeout=10)
    except Exception as exc:  # a TLS timeout, a reset: the unit could not connect
        return False, time.monotonic() - started, repr(exc)
    finally:
        client.client.loop_stop()
    elapsed = time.monotonic() - started
    client.client.disconnect()
    return code == 0, elapsed, f"CONNACK {code}"


def test_idle_sockets_on_https_cannot_starve_mqtt_of_descriptors(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-FD-1")
    bystander = Bystander(gw, gw.enroll_unit("TRK-FD-BYSTANDER"), gw.issue("service", "dispatch"), rate=5)
    bystander.start()
    _, baseline, _ = _unit_connects(gw, unit)  # the same connect with no flood, for comparison
    one_host = _idle(gw.https_port, FROM_ONE_HOST, "127.0.0.2")
    flood = _idle(gw.https_port, IDLE_SOCKETS)
    time.sleep(0.5)  # the accept loop has seen them all
    # Counted before the handshake timeout cuts the idle sockets that were let in.
    held_by_one_host = sum(not _closed(s) for s in one_host)
    held_in_all = held_by_one_host + sum(not _closed(s) for s in flood)
    connected, seconds, how = _unit_connects(gw, unit)
    still_held = sum(not _closed(s) for s in one_host + flood)  # the HTTPS share was full meanwhile
    lost = bystander.stop()
    log = gw.log()
    caps = re.search(r"connection caps: mqtt (\d+), https (\d+)", log)
    for sock in one_host + flood:
        sock.close()
    record_figure(
        "https_idle_sockets_vs_mqtt",
        open_files=OPEN_FILES,
        idle_sockets=FROM_ONE_HOST + IDLE_SOCKETS,
        https_held=held_in_all,
        held_by_one_host=held_by_one_host,
        caps=caps.group(0) if caps else None,
        unit_connected=connected,
        unit_connect_seconds=round(seconds, 3),
        unit_connect_seconds_without_flood=round(baseline, 3),
        https_still_held_after_the_unit_connected=still_held,
        bystander=lost,
    )
    assert connected, f"the unit could not connect while HTTPS was flooded: {how}\n{log[-3000:]}"
    assert caps is not None
    assert held_by_one_host == HTTPS_PER_SOURCE  # the per-source cap
    assert held_in_all == int(caps.group(2))  # the HTTPS listener's share of the descriptors
    # One log line per refusal kind, then summaries: not one per refused socket.
    assert log.count("https source_full: refusing") == 1
    assert log.count("https listener_full: refusing") == 1
    assert "accept_failed" not in log
    # A unit already connected lost nothing meanwhile.
    assert (lost["missing"], lost["disconnects"]) == (0, 0) and lost["acked"] > 0, lost


def test_idle_https_connections_are_cut_at_the_handshake_timeout(gw: GatewayProcess) -> None:
    socks = _idle(gw.https_port, 5)
    started = time.monotonic()
    assert eventually(lambda: all(_closed(s) for s in socks), HANDSHAKE_TIMEOUT + 10, 0.1)
    record_figure(
        "https_idle_cut", handshake_timeout_s=HANDSHAKE_TIMEOUT, cut_after_s=time.monotonic() - started
    )
    for sock in socks:
        sock.close()


def _tls(gw: GatewayProcess) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(gw.root_ca))
    raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def _trickle(sock: ssl.SSLSocket, lines: list[bytes], pause: float) -> tuple[int, float]:
    """Send `lines` one per `pause`; (how many were sent before the gateway cut us, seconds)."""
    started = time.monotonic()
    for sent, line in enumerate(lines):
        try:
            sock.sendall(line)
            sock.settimeout(pause)
            if sock.recv(4096) == b"":
                return sent, time.monotonic() - started
        except TimeoutError:
            continue  # still open, nothing to read: go on trickling
        except (OSError, ssl.SSLError):
            return sent, time.monotonic() - started
    return len(lines), time.monotonic() - started


def test_a_client_that_sends_its_headers_slowly_is_cut(gw: GatewayProcess) -> None:
    head = [b"GET /.well-known/est/cacerts HTTP/1.1\r\n", b"Host: localhost\r\n"]
    lines = head + [f"X-Slow-{i}: {'a' * 10}\r\n".encode() for i in range(40)]
    with _tls(gw) as sock:
        sent, seconds = _trickle(sock, lines, 0.5)
    record_figure(
        "https_slow_headers", request_timeout_s=REQUEST_TIMEOUT, header_lines_sent=sent, cut_after_s=seconds
    )
    assert sent < len(lines), "a slow-header client was still connected after 20 s"


def test_a_client_that_sends_its_body_slowly_is_answered_and_cut(gw: GatewayProcess) -> None:
    head = (
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Basic VFJLLUZELTE6dG9rZW4=\r\nContent-Type: application/pkcs10\r\n"
        b"Content-Length: 4000\r\n\r\n"
    )
    with _tls(gw) as sock:
        sock.sendall(head)
        sent, seconds = _trickle(sock, [b"M"] * 40, 0.5)
    record_figure(
        "https_slow_body", request_timeout_s=REQUEST_TIMEOUT, body_bytes_sent=sent, cut_after_s=seconds
    )
    assert sent < 40, "a slow-body client was still connected after 20 s"


def test_the_gateway_still_serves_https_after_the_flood(gw: GatewayProcess, tmp_path: Path) -> None:
    assert gw.enroll_unit("TRK-FD-2").cert.exists()  # EST works: the idle sockets gave their slots back
