"""The zero-trust matrix: every feed the gateway cannot verify is refused or dropped, counted and
audited, while a legitimate unit connected alongside keeps delivering every message.

Each row talks to a live gateway over real mTLS. Refusals at the TLS layer are checked with a raw
TLS socket (a refused client never gets a CONNACK); MQTT-level refusals with paho or raw bytes, so
the exact wire reason code is asserted.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Connect, ProtocolVersion
from tests import certs_factory
from tests.clients import V5, V311, Paho
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import metrics_text


class Bystander:
    """A well-behaved unit publishing a numbered message every 200 ms, and a service counting them.

    (Faster than a truck's usual 1/s, slow enough that the publish-rate detector rightly leaves it be.)
    """

    def __init__(self, gw: GatewayProcess) -> None:
        self.unit = gw.enroll_unit("TRK-BYSTANDER")
        self.sub = Paho(gw.mqtt_port, gw.issue("service", "analytics"), version=V5)
        assert self.sub.connect()[0] == 0
        assert self.sub.subscribe("fleet/TRK-BYSTANDER/telemetry/#", 1) == [1]
        self.pub = Paho(gw.mqtt_port, self.unit, version=V311)
        assert self.pub.connect()[0] == 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.pub.publish("fleet/TRK-BYSTANDER/telemetry/gps", str(self.sent).encode(), qos=1)
            self.sent += 1
            time.sleep(0.2)

    def finish(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        got = [int(m.payload) for m in self.sub.expect(self.sent, timeout=15)]
        self.pub.disconnect()
        self.sub.disconnect()
        return got


@pytest.fixture(scope="module")
def bystander(gateway: GatewayProcess) -> Iterator[Bystander]:
    watcher = Bystander(gateway)
    yield watcher
    got = watcher.finish()
    assert got == list(range(watcher.sent)), "the legitimate unit lost or reordered messages"
    assert watcher.sent > 20


def metrics(gw: GatewayProcess) -> str:
    return metrics_text(gw)


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^fleetgate_{name}(_total)?(\{{{re.escape(want)}\}})? ([0-9.e+]+)$", re.M)
    match = pattern.search(metrics(gw))
    return float(match.group(3)) if match else 0.0


def audit_records(gw: GatewayProcess) -> list[dict[str, object]]:
    time.sleep(0.6)  # the gateway drains events to the audit log every 250 ms
    out = gw.cli("audit", "export")
    assert out.code == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def audited(gw: GatewayProcess, **fields: str) -> bool:
    return any(all(str(r.get(k)) == v for k, v in fields.items()) for r in audit_records(gw))


def raw_mqtt_over_tls(gw: GatewayProcess, creds: Credentials, connect: Connect) -> bytes:
    """Handshake, send CONNECT, return whatever the gateway answers before closing (b'' = nothing)."""
    context = gw.client_context(creds)
    with socket.create_connection(("127.0.0.1", gw.mqtt_port), timeout=5) as sock:
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(encode(connect, connect.protocol_version))
                return tls.recv(1024)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
            return b""


def connect_packet(client_id: str, version: ProtocolVersion = ProtocolVersion.MQTT_5) -> Connect:
    return Connect(client_id=client_id, protocol_version=version)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("foreign", "certificate_verify_failed"),
        ("self_signed", "certificate_verify_failed"),
    ],
)
def test_certificates_we_cannot_verify_never_reach_mqtt(
    gateway: GatewayProcess, bystander: Bystander, tmp_path: Path, case: str, reason: str
) -> None:
    make = getattr(certs_factory, case)
    creds = make(gateway, tmp_path, f"TRK-{case.upper().replace('_', '-')}")
    before = metric(gateway, "handshakes_failed", reason=reason)
    answer = raw_mqtt_over_tls(
        gateway, creds, connect_packet(creds.ident.removeprefix("foreign-").removeprefix("self-"))
    )
    assert answer == b""  # no CONNACK: the connection never got past TLS
    time.sleep(0.3)
    assert metric(gateway, "handshakes_failed", reason=reason) >= before + 1
    assert audited(gateway, action="tls.handshake", reason=reason)


def test_no_client_certificate_is_refused_at_the_handshake(
    gateway: GatewayProcess, bystander: Bystander
) -> None:
    context = ssl.create_default_context(cafile=str(gateway.root_ca))
    before = metric(gateway, "handshakes_failed", reason="no_client_certificate")
    with (
        socket.create_connection(("127.0.0.1", gateway.mqtt_port), timeout=5) as sock,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(connect_packet("TRK-NOCERT"), ProtocolVersion.MQTT_5))
        assert tls.recv(1024) == b""
        raise ConnectionError("closed without a CONNACK")
    time.sleep(0.3)
    assert metric(gateway, "handshakes_failed", reason="no_client_certificate") >= before + 1


def test_a_certificate_revoked_before_connecting_is_refused(
    gateway: GatewayProcess, bystander: Bystander
) -> None:
    creds = gateway.enroll_unit("TRK-REVOKED-EARLY")
    serial = _serial(creds)
    assert gateway.cli("cert", "revoke", serial, "--force").code == 0
    time.sleep(0.5)  # the gateway follows the registry within a fraction of a second
    assert raw_mqtt_over_tls(gateway, creds, connect_packet("TRK-REVOKED-EARLY")) == b""
    assert metric(gateway, "certificates_refused", reason="certificate_revoked") >= 1


def test_a_certificate_revoked_while_connected_is_cut_within_a_second(
    gateway: GatewayProcess, bystander: Bystander
) -> None:
    creds = gateway.enroll_unit("TRK-REVOKED-LIVE")
    truck = Paho(gateway.mqtt_port, creds, version=V5)
    assert truck.connect()[0] == 0
    revoke = gateway.cli("cert", "revoke", _serial(creds), "--reason", "keyCompromise", "--force")
    assert revoke.code == 0, revoke.stderr
    revoked_at = time.monotonic()
    reason = truck.disconnects.get(timeout=5)
    assert time.monotonic() - revoked_at < 1.0
    assert reason == 0x87  # DISCONNECT: not authorized
    truck.client.loop_stop()
    again = raw_mqtt_over_tls(gateway, creds, connect_packet("TRK-REVOKED-LIVE"))
    assert again == b""  # and it cannot come back


def test_client_id_must_equal_the_certificate_identity(gateway: GatewayProcess, bystander: Bystander) -> None:
    creds = gateway.enroll_unit("TRK-HONEST")
    v5 = raw_mqtt_over_tls(gateway, creds, connect_packet("TRK-SOMEONE-ELSE"))
    assert v5[:1] == b"\x20" and v5[3] == 0x85  # CONNACK, reason 0x85 client identifier not valid
    v311 = raw_mqtt_over_tls(gateway, creds, connect_packet("TRK-SOMEONE-ELSE", ProtocolVersion.MQTT_3_1_1))
    assert v311 == b"\x20\x02\x00\x02"  # CONNACK, return code 2 identifier rejected
    assert metric(gateway, "connects_refused", reason="client_id_mismatch") >= 2
    assert audited(gateway, action="mqtt.connect", outcome="refused", reason="client_id_mismatch")


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_a_unit_cannot_publish_to_another_units_topics(
    gateway: GatewayProcess, bystander: Bystander, version: object
) -> None:
    victim = "TRK-VICTIM"
    watcher = Paho(gateway.mqtt_port, gateway.issue("service", "dispatch"), version=V5)
    assert watcher.connect()[0] == 0
    assert watcher.subscribe(f"fleet/{victim}/telemetry/#", 1) == [1]
    rogue = gateway.enroll_unit(f"TRK-ROGUE-{'5' if version == V5 else '3'}")
    client = Paho(gateway.mqtt_port, rogue, version=version)  # type: ignore[arg-type]
    assert client.connect()[0] == 0
    reason = client.publish(f"fleet/{victim}/telemetry/gps", b'{"lat": 0, "lon": 0}', qos=1)
    assert reason == (0x87 if version == V5 else 0)  # 3.1.1 has no way to say no: dropped, acked
    assert watcher.quiet(0.5) == []  # nothing reached the victim's subscribers
    client.disconnect()
    watcher.disconnect()
    assert metric(gateway, "decisions", kind="publish", verdict="deny", reason="topic_outside_namespace") >= 1
    assert audited(gateway, action="mqtt.publish", reason="topic_outside_namespace")


@pytest.mark.parametrize("topic_filter", ["#", "fleet/+/telemetry/#", "$SYS/#", "fleet/TRK-OTHER/cmd/#"])
@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_a_unit_cannot_subscribe_beyond_its_own_topics(
    gateway: GatewayProcess, bystander: Bystander, topic_filter: str, version: object
) -> None:
    creds = gateway.enroll_unit(f"TRK-SUB-{abs(hash((topic_filter, str(version)))) % 10**6}")
    client = Paho(gateway.mqtt_port, creds, version=version)  # type: ignore[arg-type]
    assert client.connect()[0] == 0
    assert client.subscribe(topic_filter, 1) == [0x87 if version == V5 else 0x80]
    assert client.subscribe(f"fleet/{creds.ident}/cmd/#", 1) == [1]  # its own topics still work
    client.disconnect()


def test_a_partner_is_held_to_its_tier(gateway: GatewayProcess, bystander: Bystander) -> None:
    partner = gateway.issue("partner", "SPOTBROKER", "--tier", "3")
    client = Paho(gateway.mqtt_port, partner, version=V5)
    assert client.connect()[0] == 0
    assert client.subscribe("fleet/+/telemetry/gps", 1) == [0x87]  # tier 1's grant, not tier 3's
    assert client.subscribe("fleet/+/diag/#", 1) == [0x87]
    assert client.subscribe("views/1/#", 1) == [0x87]  # another tier's views
    assert client.subscribe("views/3/#", 1) == [1]  # its own tier's views
    client.disconnect()
    assert audited(gateway, action="mqtt.subscribe", actor="partner/SPOTBROKER")


def test_a_flooding_unit_is_held_to_its_rate_and_never_cut_for_it(
    gateway: GatewayProcess, bystander: Bystander
) -> None:
    watcher = Paho(gateway.mqtt_port, gateway.issue("service", "dispatch"), version=V5)
    assert watcher.connect()[0] == 0
    assert watcher.subscribe("fleet/TRK-FLOOD/telemetry/#", 0) == [0]
    flooder = Paho(gateway.mqtt_port, gateway.enroll_unit("TRK-FLOOD"), version=V5)
    assert flooder.connect()[0] == 0
    for n in range(2000):
        try:
            flooder.client.publish("fleet/TRK-FLOOD/telemetry/gps", str(n), qos=0)
        except Exception:
            break
    delivered = watcher.quiet(1.0)
    assert 0 < len(delivered) <= 200  # burst (100) plus what the rate refills during the flood
    # Rate-limited publishes are dropped, not violations: the session (and with it the unit's
    # vehicle-control channel) is never cut for them.
    assert flooder.disconnects.empty()
    assert flooder.subscribe("fleet/TRK-FLOOD/control/#", 1) == [1]
    assert metric(gateway, "decisions", kind="publish", verdict="deny", reason="rate_limited") >= 20
    records = [r for r in audit_records(gateway) if r.get("reason") == "rate_limited"]
    assert records and len(records) < 10  # a flood becomes a counted record, not a flood of records
    flooder.disconnect()
    watcher.disconnect()


def test_audit_verify_detects_a_tampered_database(fresh_gateway: GatewayProcess) -> None:
    gw = fresh_gateway
    gw.enroll_unit("TRK-AUDITED")
    gw.stop()
    assert gw.cli("audit", "verify").code == 0
    # An attacker with write access to the file: drop the append-only triggers, edit a record.
    with sqlite3.connect(gw.data / "fleetgate.db") as conn:
        triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        for name in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("UPDATE audit_log SET actor = 'operator/mallory' WHERE seq = 2")
    result = gw.cli("audit", "verify")
    assert result.code == 1
    assert "record 2" in result.stderr
    gw.start()


def _serial(creds: Credentials) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(creds.cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("=", 1)[1]
