"""`partner disconnect`: one command cuts a whole partner organisation off, live, at once.

acme holds two partner identities (acme-eu on 5.0, acme-us on 3.1.1 with a persistent session);
globex is another partner that must not notice anything. The dry run changes nothing and reports
the blast radius; the real run closes both live sessions within a second, refuses their reconnects
and purges their subscriptions.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Connect, ProtocolVersion
from tests.clients import V5, V311
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import api, audit_via_api, issue_operator, totp_code
from tests.ops.watch import Watch

UNIT = "TRK-P1"


@dataclass
class Scene:
    gw: GatewayProcess
    security: Credentials
    security2: Credentials  # a second security operator, so nobody waits for a fresh TOTP code
    unit: Watch
    partners: dict[str, Watch]
    creds: dict[str, Credentials]

    def telemetry_reaches(self, names: tuple[str, ...], tag: str) -> None:
        # Partners see units through their tier's view: the tag rides in a field every tier keeps.
        payload = json.dumps({"status": f"gps-{tag}", "lat": 51.95, "lon": 4.14}).encode()
        assert self.unit.client.publish(f"fleet/{UNIT}/telemetry/gps", payload, qos=1) == 0
        for name in names:
            self.partners[name].wait_for(lambda m: json.loads(m.payload).get("status") == f"gps-{tag}")


@pytest.fixture(scope="module")
def scene(gateway: GatewayProcess) -> Iterator[Scene]:
    creds = {
        "acme-eu": gateway.issue("partner", "acme-eu", "--tier", "1", "--org", "acme"),
        "acme-us": gateway.issue("partner", "acme-us", "--tier", "2", "--org", "acme"),
        "globex": gateway.issue("partner", "globex", "--tier", "1"),
    }
    security = issue_operator(gateway, "sec", "security")  # partner disconnect needs a second factor
    security2 = issue_operator(gateway, "sec2", "security")
    unit = Watch(gateway, gateway.enroll_unit(UNIT))
    partners = {
        "acme-eu": Watch(gateway, creds["acme-eu"], "views/1/fleet/+/gps", version=V5),
        "globex": Watch(gateway, creds["globex"], "views/1/#", version=V5),
        # clean session 0: its session and subscription outlive the connection unless purged
        "acme-us": Watch(gateway, creds["acme-us"], "views/2/fleet/+/gps", version=V311, clean=False),
    }
    time.sleep(0.6)  # views are projected for tiers with subscribers, noticed on the 0.25 s event tick
    scene = Scene(gateway, security, security2, unit, partners, creds)
    yield scene
    for name, watch in (("unit", unit), *partners.items()):
        if name.startswith("acme"):
            watch.client.client.loop_stop()  # cut off: nothing to say goodbye to
        else:
            watch.close()


def reconnect_answer(gw: GatewayProcess, creds: Credentials) -> bytes:
    """Handshake and send CONNECT with these credentials; what comes back before the close (b"": none)."""
    context = ssl.create_default_context(cafile=str(creds.ca))
    context.load_cert_chain(str(creds.cert), str(creds.key))
    with socket.create_connection(("127.0.0.1", gw.mqtt_port), timeout=5) as sock:
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(encode(Connect(client_id=creds.ident), ProtocolVersion.MQTT_5))
                return tls.recv(1024)
        except (ssl.SSLError, OSError):
            return b""


def cert_statuses(gw: GatewayProcess) -> dict[str, str]:
    listed = gw.cli("cert", "list", "--kind", "partner", "--json")
    return {row["serial"]: row["status"] for row in json.loads(listed.stdout)}


def acme_sessions(gw: GatewayProcess, security: Credentials) -> list[dict[str, object]]:
    sessions = api(gw, security, "GET", "/api/sessions")[1]["sessions"]
    return [s for s in sessions if str(s["identity"]).startswith("partner/acme")]


def test_dry_run_reports_the_blast_radius_and_changes_nothing(scene: Scene) -> None:
    gw = scene.gw
    scene.telemetry_reaches(("acme-eu", "acme-us", "globex"), "before")
    statuses, sessions = cert_statuses(gw), acme_sessions(gw, scene.security)
    profile = scene.security.cert.parent / "sec.profile.json"
    code = totp_code(scene.security)
    result = gw.cli(
        "partner", "disconnect", "acme", "--dry-run", "--json", "--profile", str(profile), "--totp", code
    )
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["identities"] == ["partner/acme-eu", "partner/acme-us"]
    assert (report["certificates"], report["tokens"], report["sessions"], report["subscriptions"]) == (
        2,
        0,
        2,
        2,
    )
    assert cert_statuses(gw) == statuses
    assert [s["connected"] for s in acme_sessions(gw, scene.security)] == [s["connected"] for s in sessions]
    scene.telemetry_reaches(("acme-eu", "acme-us", "globex"), "after-dry-run")
    other = str(profile.parent / "sec2.profile.json")
    human = gw.cli(
        "partner", "disconnect", "acme", "--dry-run", "--profile", other, "--totp", totp_code(scene.security2)
    )
    assert human.code == 0 and human.stdout.startswith("Would revoke 2 certificate(s)")


def test_disconnect_closes_every_session_at_once_and_refuses_reconnects(scene: Scene) -> None:
    gw = scene.gw
    started = time.monotonic()
    status, report = api(gw, scene.security, "POST", "/api/partners/acme/disconnect", {"dry_run": False})
    assert status == 200, report
    for name in ("acme-eu", "acme-us"):
        scene.partners[name].client.disconnects.get(timeout=1)  # both gone
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert (report["certificates"], report["sessions"], report["subscriptions"]) == (2, 2, 2)
    cut_ms = elapsed * 1000
    print(
        f"\npartner disconnect: server {report['elapsed_ms']:.1f} ms, both clients cut within {cut_ms:.0f} ms"
    )
    assert set(cert_statuses(gw).values()) >= {"revoked"}
    assert acme_sessions(gw, scene.security) == []  # the persistent one too: subscriptions purged
    for name in ("acme-eu", "acme-us"):
        scene.partners[name].client.client.loop_stop()
        assert reconnect_answer(gw, scene.creds[name]) == b""  # refused at admission: no CONNACK at all
    scene.telemetry_reaches(("globex",), "after")  # the other partner noticed nothing
    records = [r for r in audit_via_api(gw, scene.security) if r["action"] == "partner.disconnect"]
    assert [r["outcome"] for r in records] == ["dry_run", "dry_run", "ok"]
    assert records[-1]["actor"] == "operator/sec" and records[-1]["details"]["sessions"] == 2
