"""`fleet-sim` as a user runs it: enroll, run, attack (table and --json), and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import GatewayProcess


def fleet_sim(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_enroll_then_run_a_small_fleet(gateway: GatewayProcess, tmp_path: Path) -> None:
    out = tmp_path / "units"
    enrolled = fleet_sim(
        "enroll", "--data", str(gateway.data), "--est", gateway.https_url, "--units", "3",
        "--prefix", "CLI", "--out", str(out), "--json",
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["enrolled"] == 3
    ran = fleet_sim(
        "run", "--certs", str(out), "--server", f"localhost:{gateway.mqtt_port}", "--seconds", "2",
        "--no-renew", "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["units"] == summary["online"] == 3
    assert summary["sent"] >= 3 * 2 and summary["refused"] == 0 and summary["connect_failures"] == 0


def test_attack_prints_a_table_and_json(gateway: GatewayProcess) -> None:
    common = (
        "--data",
        str(gateway.data),
        "--server",
        f"localhost:{gateway.mqtt_port}",
        "--est",
        gateway.https_url,
    )
    table = fleet_sim("attack", "client-id-spoof", "self-signed", *common)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "client-id-spoof" in table.stdout and "self-signed" in table.stdout and "held" in table.stdout
    as_json = fleet_sim("attack", "foreign-cert", *common, "--json")
    assert as_json.returncode == 0, as_json.stderr
    [result] = json.loads(as_json.stdout)
    assert result["name"] == "foreign-cert" and result["held"] is True and result["refused"] is True
    assert result["time_to_drop_ms"] > 0


def test_attack_refuses_what_it_cannot_do() -> None:
    listed = fleet_sim("attack", "--list")
    assert listed.returncode == 0 and "reconnect-storm" in listed.stdout
    unknown = fleet_sim("attack", "teleport", "--data", "/nonexistent")
    assert unknown.returncode == 2 and "unknown scenario teleport" in unknown.stderr
    no_data = fleet_sim("attack", "flood")
    assert no_data.returncode == 2 and "--data" in no_data.stderr
    bad_server = fleet_sim("run", "--certs", ".", "--server", "localhost")
    assert bad_server.returncode != 0
