"""Quarantine is a registry fact: it survives a gateway that was down, a restart, a certificate
renewal; `status` shows since/why; and an online backup restores it (a damaged backup does not)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.clients import V5
from tests.harness import Credentials, GatewayProcess, run_cli
from tests.ops.watch import Watch, topic_is

UNIT = "TRK-D1"
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("durable"))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def unit(gw: GatewayProcess) -> Credentials:
    return gw.enroll_unit(UNIT)


def assert_diagnostic_only(gw: GatewayProcess, creds: Credentials, reason: str) -> None:
    watch = Watch(gw, creds, f"fleet/{UNIT}/cmd/#", version=V5)
    try:
        message = watch.wait_for(topic_is(f"fleet/{UNIT}/cmd/mode"))
        body = json.loads(message.payload)
        assert message.retain and (body["mode"], body["reason"]) == ("diagnostic-only", reason)
        assert watch.client.publish(f"fleet/{UNIT}/telemetry/gps", b"x", qos=1) == NOT_AUTHORIZED
        assert watch.client.publish(f"fleet/{UNIT}/diag/dtc", b"P0300", qos=1) == 0
    finally:
        watch.close()


def cli_json(gw: GatewayProcess, *args: str, data: Path | None = None) -> Any:
    result = run_cli(*args, "--json", data=data or gw.data)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_quarantine_made_while_the_gateway_is_down_applies_at_start(
    gw: GatewayProcess, unit: Credentials
) -> None:
    gw.stop()
    result = gw.cli("quarantine", UNIT, "--reason", "stolen truck")
    assert result.code == 0, result.stderr
    gw.start()
    assert_diagnostic_only(gw, unit, "stolen truck")


def test_quarantine_survives_a_restart(gw: GatewayProcess, unit: Credentials) -> None:
    gw.restart()
    assert_diagnostic_only(gw, unit, "stolen truck")


def test_quarantine_survives_certificate_renewal(gw: GatewayProcess, unit: Credentials) -> None:
    old = x509.load_pem_x509_certificate(unit.cert.read_bytes()).serial_number
    args = (
        "--cert",
        str(unit.cert),
        "--key",
        str(unit.key),
        "--server",
        gw.https_url,
        "--ca",
        str(gw.root_ca),
    )
    result = run_cli("renew", *args, "--json")  # a device command: no data dir
    assert result.code == 0, result.stderr
    renewed = result.json()
    assert isinstance(renewed, dict) and int(renewed["serial"], 16) != old
    assert_diagnostic_only(gw, unit, "stolen truck")  # connected with the renewed certificate


def test_status_shows_since_and_why_locally_and_over_the_api(gw: GatewayProcess, unit: Credentials) -> None:
    profile = Path(
        str(
            cli_json(
                gw,
                "operator",
                "add",
                "viewer",
                "--role",
                "auditor",
                "--out",
                str(gw.clients / "operator"),
                "--server",
                gw.https_url,
            )["profile"]
        )
    )
    watch = Watch(gw, unit, f"fleet/{UNIT}/cmd/#")
    try:
        [local] = cli_json(gw, "status", UNIT)
        remote = {r["unit"]: r for r in cli_json(gw, "status", "--profile", str(profile))}
        table = run_cli("status", "--profile", str(profile), env={"COLUMNS": "200"})
    finally:
        watch.close()
    for row in (local, remote[UNIT]):
        assert row["state"] == "quarantined" and row["quarantine_reason"] == "stolen truck"
        assert row["quarantined_since"] and str(row["quarantined_by"]).startswith("local/")
        assert row["cert_not_after"]
    assert local["online"] is None and remote[UNIT]["online"] is True  # only the gateway knows
    assert table.code == 0 and "stolen truck" in table.stdout and UNIT in table.stdout


def test_online_backup_restores_the_quarantine(gw: GatewayProcess, unit: Credentials, tmp_path: Path) -> None:
    watch = Watch(gw, unit, f"fleet/{UNIT}/control/#")  # a live session while the snapshot is taken
    try:
        summary = cli_json(gw, "backup", str(tmp_path / "snap"))
    finally:
        watch.close()
    assert isinstance(summary, dict) and summary["files"] >= 8
    restored = cli_json(gw, "restore", str(tmp_path / "snap"), data=tmp_path / "new")
    assert isinstance(restored, dict) and restored["files"] == summary["files"]
    [row] = cli_json(gw, "status", UNIT, data=tmp_path / "new")
    assert row["state"] == "quarantined" and row["quarantine_reason"] == "stolen truck"
    live = gw.cli("restore", str(tmp_path / "snap"), "--force")  # into the data dir being served
    assert live.code == 1 and "a gateway is serving" in live.stderr
    damaged = tmp_path / "snap" / "fleetgate.db"
    body = bytearray(damaged.read_bytes())
    body[len(body) // 2] ^= 0xFF
    damaged.write_bytes(bytes(body))
    refused = run_cli("restore", str(tmp_path / "snap"), data=tmp_path / "out")
    assert refused.code == 1 and not (tmp_path / "out").exists()
    assert refused.stderr.startswith("error: fleetgate.db does not match its SHA-256 in the manifest")
