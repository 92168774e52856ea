"""MQTT admits only certificates the registry recorded: a certificate signed by the fleet's own
issuing key but unknown to the registry (made outside FleetCA, or issued after the backup a gateway
was restored from) is refused right after the TLS handshake, counted and audited, while certificates
issued a moment ago — over EST in the gateway's process or by the CLI in another — connect at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests import certs_factory
from tests.harness import Credentials, GatewayProcess, run_cli
from tests.integration.mtls import V5, V311, connack, openssl, serial_of
from tests.ops.helpers import audit_records, eventually, metric


def test_a_certificate_signed_by_the_ca_key_but_not_recorded_is_refused(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    genuine = gateway.enroll_unit("TRK-KNOWN-1")  # the identity exists and is in good standing
    forged = certs_factory.issued_by_gateway_ca(
        gateway, tmp_path, "TRK-KNOWN-1", datetime.now(UTC) - timedelta(minutes=1), timedelta(days=30)
    )
    # Nothing is wrong with it but that: it chains to the fleet CA, names the unit, is in its dates.
    chain = openssl(
        "verify", "-CAfile", gateway.root_ca, "-untrusted", gateway.data / "ca" / "issuing.crt", forged.cert
    )
    assert chain.returncode == 0, chain.stdout + chain.stderr
    before = metric(gateway, "certificates_refused", reason="unknown_certificate")
    assert connack(gateway, forged, V5) is None
    assert connack(gateway, forged, V311) is None
    assert eventually(
        lambda: metric(gateway, "certificates_refused", reason="unknown_certificate") >= before + 2, 5
    )
    assert eventually(
        lambda: any(
            r["action"] == "tls.handshake" and r["reason"] == "unknown_certificate"
            for r in audit_records(gateway)
        ),
        5,
    )
    # Not in the registry, so it cannot be looked up or revoked by serial either; the genuine one can.
    shown = gateway.cli("cert", "show", serial_of(forged))
    assert shown.code == 4 and "no certificate with serial" in shown.stderr  # 4: not found
    assert connack(gateway, genuine) == 0


def test_certificates_issued_a_moment_ago_connect_at_once(gateway: GatewayProcess) -> None:
    for n in range(3):
        unit = gateway.enroll_unit(f"TRK-FRESH-{n}")  # EST in the gateway's own process
        assert connack(gateway, unit) == 0, f"unit {n} refused right after enrolling"
        service = gateway.issue("service", f"fresh-{n}")  # the CLI, another process
        assert connack(gateway, service) == 0, f"service {n} refused right after being issued"


def test_after_a_restore_certificates_issued_since_the_backup_are_refused(
    fresh_gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = fresh_gateway
    before_backup = gw.enroll_unit("TRK-BACKUP-1")
    snapshot = tmp_path / "snap"
    assert gw.cli("backup", str(snapshot)).code == 0
    after_backup = gw.enroll_unit("TRK-BACKUP-2")
    renewed = run_cli(
        "renew",
        "--cert",
        str(before_backup.cert),
        "--key",
        str(before_backup.key),
        "--server",
        gw.https_url,
        "--ca",
        str(gw.root_ca),
        "--json",
    )
    assert renewed.code == 0, renewed.stderr  # TRK-BACKUP-1 now holds a certificate the backup lacks
    gw.stop()

    restored = run_cli("restore", str(snapshot), "--force", data=gw.data)
    assert restored.code == 0, restored.stderr
    notes = [line for line in restored.stdout.splitlines() if "issued after" in line]
    assert len(notes) == 1 and "refused" in notes[0] and "fleetgate unit token" in notes[0]
    gw.start()

    assert connack(gw, after_backup) is None
    assert connack(gw, before_backup) is None  # its renewed certificate, issued after the backup
    assert eventually(lambda: metric(gw, "certificates_refused", reason="unknown_certificate") >= 2, 5)

    # The way back the restore names: a new token, enroll again, connect.
    token = gw.cli("unit", "token", "TRK-BACKUP-1", "--json")
    assert token.code == 0, token.stderr
    fresh = run_cli(
        "enroll",
        "--server",
        gw.https_url,
        "--unit",
        "TRK-BACKUP-1",
        "--token",
        token.json()["token"],  # type: ignore[index]
        "--ca-sha256",
        gw.root_sha256(),
        "--out",
        str(tmp_path / "again"),
        "--json",
    )
    assert fresh.code == 0, fresh.stderr
    paths = fresh.json()
    creds = Credentials("TRK-BACKUP-1", Path(paths["cert"]), Path(paths["key"]), gw.root_ca)  # type: ignore[index]
    assert connack(gw, creds) == 0
