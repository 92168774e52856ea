"""What `scripts/demo --keep-running` prints about the console works as printed: the PKCS#12 file it
writes imports into a fresh NSS database with the printed command, next to the fleet root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from device_sim.demo.console_hint import console_hint
from device_sim.fleet.enroll import UnitFiles
from tests.harness import GatewayProcess

pytestmark = pytest.mark.skipif(shutil.which("pk12util") is None, reason="needs libnss3-tools")


def test_the_printed_commands_put_the_operator_certificate_in_the_browser_database(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw")
    gw.init()  # no gateway process: `operator add` works on the data dir
    creds = gw.issue("operator", "ops", "--role", "ops")
    hint = console_hint(UnitFiles(creds.cert, creds.key, creds.ca), "ops", 8443, gw.data)
    assert "Fleet console: https://localhost:8443/console" in hint
    assert f"operator totp ops --data {gw.data}" in hint

    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home)}
    commands = [line.split("#")[0].strip() for line in hint.splitlines() if line.startswith("  ")]
    for command in commands:
        if command.startswith(("mkdir", "certutil", "pk12util")):
            subprocess.run(command, shell=True, check=True, env=env, capture_output=True)
    listed = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{home}/.pki/nssdb"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert "fleetgate demo root" in listed and "ops" in listed
    keys = subprocess.run(
        ["certutil", "-K", "-d", f"sql:{home}/.pki/nssdb"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert "ops" in keys  # the key came along: the browser can present the certificate
    assert (creds.cert.with_suffix(".p12").stat().st_mode & 0o777) == 0o600
