"""What an operator's tooling sees of a running gateway: health and readiness probes, the lock that
keeps a second gateway off the same data directory, JSON logs that carry the security events, and
the build-info metric."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FLEETGATE, GatewayProcess, free_port
from tests.ops.helpers import context, eventually, metrics_text


@pytest.fixture(scope="module")
def json_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("ops"), extra_args=("--log-format", "json"))
    gw.init()
    gw.start()
    yield gw
    gw.stop()


def _get(gw: GatewayProcess, path: str) -> tuple[int, dict[str, Any]]:
    """An anonymous probe, as a load balancer sends it (no client certificate)."""
    try:
        with urllib.request.urlopen(gw.https_url + path, context=context(gw, None), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_and_readyz_answer_anonymously_and_reveal_nothing_else(json_gateway: GatewayProcess) -> None:
    assert _get(json_gateway, "/healthz") == (200, {"status": "ok"})
    _, body = eventually(lambda: (r := _get(json_gateway, "/readyz"))[0] == 200 and r)
    assert body == {
        "status": "ready",
        "checks": {"listeners": "ok", "store_writable": "ok", "registry_followed": "ok"},
    }


def test_readyz_fails_while_the_store_cannot_be_written_and_recovers(json_gateway: GatewayProcess) -> None:
    blocker = sqlite3.connect(json_gateway.data / "fleetgate.db", timeout=5)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: nothing can be saved
        status, body = _get(json_gateway, "/readyz")
        assert status == 503 and body["status"] == "not_ready"
        assert body["checks"]["store_writable"] == "failing"
        assert _get(json_gateway, "/healthz")[0] == 200  # alive, just not ready
    finally:
        blocker.rollback()
        blocker.close()
    assert eventually(lambda: _get(json_gateway, "/readyz")[0] == 200)


def test_a_second_gateway_on_the_same_data_directory_refuses_to_start(json_gateway: GatewayProcess) -> None:
    second = subprocess.run(
        [
            *FLEETGATE,
            "serve",
            "--data",
            str(json_gateway.data),
            "--listen-mqtt",
            f"127.0.0.1:{free_port()}",
            "--listen-https",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    pid = json_gateway.proc.pid if json_gateway.proc else 0
    assert error == [
        f"error: another gateway (pid {pid}) is already serving {json_gateway.data}; stop it first, "
        "or give this one its own data directory with --data"
    ]
    assert "Traceback" not in second.stderr
    assert _get(json_gateway, "/readyz")[0] == 200  # the first one is untouched


def _log_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.log().splitlines() if line.strip()]


def test_json_logs_are_one_object_per_line_and_carry_security_events(json_gateway: GatewayProcess) -> None:
    json_gateway.add_unit("TRK-LOG")
    json_gateway.cli("quarantine", "TRK-LOG", "--reason", "line one\nforged line", check=True)

    def mode_command_logged() -> dict[str, Any] | None:
        for line in _log_lines(json_gateway):  # every line parses: one object per line
            audit = line.get("audit")
            if audit and audit["action"] == "unit.mode_command" and audit["subject"].endswith("TRK-LOG"):
                return line
        return None

    line = eventually(mode_command_logged, timeout=10)
    assert set(line) == {"ts", "level", "logger", "msg", "audit"}
    assert line["logger"] == "fleetgate.audit" and line["level"] == "info"
    assert line["audit"]["reason"] == "diagnostic-only"


def test_the_build_info_metric_names_the_version(json_gateway: GatewayProcess) -> None:
    text = metrics_text(json_gateway)
    build = [row for row in text.splitlines() if row.startswith("fleetgate_build_info{")]
    assert len(build) == 1 and 'version="' in build[0] and build[0].endswith(" 1.0")


def test_version_everywhere() -> None:
    fleet_sim = str(Path(sys.executable).parent / "fleet-sim")
    for command in ([*FLEETGATE, "--version"], [fleet_sim, "--version"]):
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "version 0." in out.stdout, command
