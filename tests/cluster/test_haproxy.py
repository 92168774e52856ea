"""A real HAProxy (TCP mode, `send-proxy-v2`, the configuration of docs/cluster.md) in front of a real
gateway told to trust it (`listen.proxy_protocol_from`), and real paho clients over mTLS through it.

Loopback addresses tell the parties apart: HAProxy connects to the gateway from 127.0.0.2 (its
`source`), the clients connect to HAProxy from 127.0.0.3, and strangers connect from 127.0.0.1. Every
address a test looks for is the client's own (its socket's local address), never a constant that the
balancer's could also match.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.edge.proxy_protocol import encode_header
from gateway.mqtt.client import MqttClient
from gateway.mqtt.packets import Connack
from tests.clients import V5, Paho
from tests.haproxy import BALANCER_SOURCE, Haproxy, documented_config
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import api, eventually, metric

BALANCER = BALANCER_SOURCE  # 127.0.0.2: HAProxy's source address towards the gateway
CLIENTS = "127.0.0.3"  # where the units connect to HAProxy from
STRANGER = "127.0.0.1"  # not a balancer

POLICY_ALLOWED_UNITS = '["127.0.0.2/32", "10.0.0.0/8"]'  # units may come from the balancer or 10/8 only


@dataclass
class Bed:
    gw: GatewayProcess
    lb: Haproxy
    ops: Credentials


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("haproxy")
    policy = root / "policy.yaml"
    policy.write_text(_policy_allowing_units_from(POLICY_ALLOWED_UNITS))
    config = root / "gateway.yaml"
    config.write_text(f"listen:\n  proxy_protocol_from: {BALANCER}\npolicy_file: {policy}\n")
    gw = GatewayProcess(root / "gw", extra_args=("--config", str(config)))
    gw.init()
    gw.start()
    ops = gw.issue("operator", "ops1", "--role", "ops")
    with Haproxy.in_front_of(root / "haproxy", [("node-a", gw.mqtt_port)], source=BALANCER) as lb:
        yield Bed(gw, lb, ops)
    gw.stop()


def _policy_allowing_units_from(networks: str) -> str:
    from importlib import resources

    text = resources.files("gateway").joinpath("defaults/policy.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("source_network:"))
    unit = next(i for i in range(at, len(lines)) if lines[i].strip().startswith("unit:"))
    indent = lines[unit][: len(lines[unit]) - len(lines[unit].lstrip())]
    lines[unit] = f"{indent}unit: {networks}"
    return "\n".join(lines) + "\n"


def audit(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The audit log, read from the database (read-only)."""
    uri = f"file:{gw.data / 'fleetgate.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT actor, action, subject, outcome, details FROM audit_log ORDER BY seq")
        keys = ("actor", "action", "subject", "outcome")
        return [{**dict(zip(keys, row[:4], strict=True)), "details": json.loads(row[4])} for row in rows]


def sessions(bed: Bed) -> dict[str, str]:
    """client id -> address, as the admin API shows the live sessions."""
    status, body = api(bed.gw, bed.ops, "GET", "/api/sessions")
    assert status == 200, body
    return {s["client_id"]: s["address"] for s in body["sessions"] if s["connected"]}


def local_address(client: Paho) -> str:
    sock = client.client.socket()
    assert sock is not None
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def test_the_documented_configuration_is_tcp_mode_with_proxy_v2() -> None:
    block = documented_config()
    assert "mode tcp" in block
    servers = [line.split() for line in block.splitlines() if line.split()[:1] == ["server"]]
    assert servers and all("send-proxy-v2" in words for words in servers)


def test_units_and_services_talk_through_haproxy_and_are_seen_at_their_own_address(bed: Bed) -> None:
    unit_creds = bed.gw.enroll_unit("TRK-LB1")
    unit = Paho(bed.lb.port, unit_creds, version=V5, bind_address=CLIENTS)
    dispatch = Paho(bed.lb.port, bed.gw.issue("service", "dispatch"), version=V5, bind_address=CLIENTS)
    assert unit.connect()[0] == 0
    assert dispatch.connect()[0] == 0
    assert dispatch.subscribe("fleet/+/telemetry/#", 1) == [1]
    assert unit.subscribe("fleet/TRK-LB1/cmd/#", 1) == [1]
    assert unit.publish("fleet/TRK-LB1/telemetry/gps", b'{"lat": 1}', qos=1) == 0
    got = dispatch.expect(1)[0]
    assert (got.topic, got.payload) == ("fleet/TRK-LB1/telemetry/gps", b'{"lat": 1}')
    assert dispatch.publish("fleet/TRK-LB1/cmd/unlock", b"go", qos=1) == 0
    assert unit.expect(1)[0].payload == b"go"

    # The session view: each client's own address and port, as it connected to HAProxy.
    unit_at, dispatch_at = local_address(unit), local_address(dispatch)
    assert unit_at.startswith(f"{CLIENTS}:") and dispatch_at.startswith(f"{CLIENTS}:")
    live = sessions(bed)
    assert live["TRK-LB1"] == unit_at
    assert live["dispatch"] == dispatch_at

    # The source-network detector judged the unit's real address (127.0.0.3 is outside the networks
    # this policy allows units; the balancer's 127.0.0.2 is inside, so no firing would mean it was
    # given the balancer's).
    def fired() -> list[dict[str, Any]]:
        return [
            r
            for r in audit(bed.gw)
            if r["action"] == "detector.fired"
            and r["actor"] == "detector/source_network"
            and r["subject"] == "unit/TRK-LB1"
        ]

    def connected() -> list[dict[str, Any]]:
        return [r for r in audit(bed.gw) if r["action"] == "mqtt.connect" and r["actor"] == "unit/TRK-LB1"]

    connects = eventually(connected, timeout=10)
    assert [r["details"]["address"] for r in connects] == [unit_at]  # the audit record of its CONNECT
    records = eventually(fired, timeout=10)
    assert records, bed.gw.log()[-3000:]
    assert records[0]["details"]["context"]["address"] == unit_at
    assert f"{BALANCER}:" not in json.dumps(audit(bed.gw))  # the balancer's address is nobody's
    unit.disconnect()
    dispatch.disconnect()


def _connect_with_header(
    bed: Bed, creds: Credentials, source: str, pieces: list[bytes]
) -> tuple[socket.socket, Connack]:
    """Connect from `source` straight to the gateway, send `pieces` one TCP segment at a time (a pause
    between them), then TLS and an MQTT CONNECT on the same socket; the CONNACK."""
    raw = socket.create_connection(("127.0.0.1", bed.gw.mqtt_port), timeout=10, source_address=(source, 0))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces:
        raw.sendall(piece)
        time.sleep(0.05)
    tls = bed.gw.client_context(creds).wrap_socket(raw, server_hostname="localhost")
    client = MqttClient(creds.ident)
    client.connect()
    tls.sendall(client.data_to_send())
    while True:
        data = tls.recv(65536)
        assert data, "the gateway closed the connection"
        for event in client.receive_data(data):
            if isinstance(event, Connack):
                return tls, event


def test_a_header_split_over_reads_is_put_together_and_the_client_hello_passes_intact(bed: Bed) -> None:
    creds = bed.gw.enroll_unit("TRK-LB2")
    header = encode_header(("10.20.30.40", 4242), ("10.0.0.11", 8883))
    pieces = [header[:5], header[5:14], header[14:17], header[17:]]  # the length, the addresses: split
    tls, connack = _connect_with_header(bed, creds, BALANCER, pieces)
    try:
        assert connack.reason_code == 0
        assert sessions(bed)["TRK-LB2"] == "10.20.30.40:4242"
    finally:
        tls.close()


def test_a_stranger_cannot_claim_an_address_with_a_forged_header(bed: Bed) -> None:
    """From 127.0.0.1 (not a balancer), a PROXY header claiming 198.51.100.77 before a valid client
    certificate's handshake: the handshake fails, and the claimed address appears nowhere."""
    creds = bed.gw.enroll_unit("TRK-LB3")
    before = metric(bed.gw, "handshakes_failed", reason="not_tls")
    forged = encode_header(("198.51.100.77", 7777), ("10.0.0.11", 8883))
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        _connect_with_header(bed, creds, STRANGER, [forged])
    assert eventually(lambda: metric(bed.gw, "handshakes_failed", reason="not_tls") > before)
    time.sleep(0.3)
    assert "TRK-LB3" not in sessions(bed)
    assert "198.51.100.77" not in json.dumps(audit(bed.gw))
    assert "198.51.100.77" not in bed.gw.log()


def test_a_balancer_without_a_header_is_refused_and_logged(bed: Bed) -> None:
    """From 127.0.0.2 (the balancer's address), TLS straight away: closed before any TLS byte."""
    before = metric(bed.gw, "proxy_headers_refused", reason="missing")
    client = Paho(bed.gw.mqtt_port, bed.gw.enroll_unit("TRK-LB4"), version=V5, bind_address=BALANCER)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, TimeoutError)):
        client.connect(timeout=5)
    assert eventually(lambda: metric(bed.gw, "proxy_headers_refused", reason="missing") == before + 1)
    assert "TRK-LB4" not in sessions(bed)
    log = bed.gw.log()
    assert "mqtt proxy_header_missing: refusing 127.0.0.2:" in log
    assert "Traceback" not in log


def test_haproxy_health_checks_are_answered_and_not_audited(bed: Bed) -> None:
    """HAProxy's checks on a send-proxy-v2 server send a LOCAL header and close: counted, closed,
    never a failed handshake in the audit log."""
    assert eventually(lambda: metric(bed.gw, "proxy_health_checks") >= 1, timeout=10)
    failures = [r for r in audit(bed.gw) if r["action"] == "tls.handshake" and BALANCER in r["actor"]]
    assert failures == []
