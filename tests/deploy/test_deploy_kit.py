"""The deployment kit under deploy/ is checked by the tools that will read it: systemd's own verifier
for the units, promtool for the alert rules (syntax and unit tests of the alerts), and the gateway's
own /metrics for every metric name the rules and the dashboard use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app.metrics import metrics_registry, render
from gateway.app.runtime import Gateway
from gateway.config import load_config
from gateway.stores.datadir import DataDir
from tests.harness import INSECURE_KEYS, run_cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").iterdir())
RULES = DEPLOY / "prometheus" / "fleetgate-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "fleetgate-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "fleetgate.json"
INSTALLED_FLEETGATE = "/opt/fleetgate/bin/fleetgate"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it: apt-get install {name}'s package)")
    return path


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    # The units name the installed path; point them at this checkout's entry point so that the
    # verifier's "is the command executable" check has something real to look at.
    here = str(Path(sys.executable).parent / "fleetgate")
    copies = []
    for unit in UNITS:
        text = unit.read_text(encoding="utf-8")
        assert unit.suffix == ".timer" or INSTALLED_FLEETGATE in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_FLEETGATE, here), encoding="utf-8")
        copies.append(str(copy))
    result = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=60)
    # verify prints unknown keys and bad values as warnings with exit status 0: both must be silent.
    assert (result.returncode, result.stderr.strip()) == (0, "")


def test_the_gateway_unit_is_hardened_and_sized_for_a_fleet() -> None:
    settings = dict(
        line.split("=", 1)
        for line in (DEPLOY / "systemd" / "fleetgate.service").read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    assert int(settings["LimitNOFILE"]) >= 65536
    assert settings["ReadWritePaths"] == "/var/lib/fleetgate" and settings["CapabilityBoundingSet"] == ""
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the policy


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _exported_names(tmp_path: Path) -> set[str]:
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=tmp_path, check=True)
    gateway = Gateway(DataDir(tmp_path), load_config())
    text = render(metrics_registry(gateway.metrics_collector())).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))  # families with no sample yet count too


def test_every_metric_the_rules_and_the_dashboard_use_is_exported(tmp_path: Path) -> None:
    used = set(re.findall(r"\bfleetgate_[a-z_]+", RULES.read_text(encoding="utf-8")))
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bfleetgate_[a-z_]+", target["expr"]))
    assert len(used) > 10
    exported = _exported_names(tmp_path)
    # A histogram family `x` is queried as x_bucket, x_sum and x_count.
    missing = {
        n for n in used if n not in exported and re.sub(r"_(bucket|sum|count)$", "", n) not in exported
    }
    assert sorted(missing) == []


def test_the_metrics_pass_promtool_check_metrics(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=tmp_path, check=True)
    gateway = Gateway(DataDir(tmp_path), load_config())
    text = render(metrics_registry(gateway.metrics_collector()))
    for family in (
        "fleetgate_tls_handshake_seconds",
        "fleetgate_connect_seconds",
        "fleetgate_broker_receive_seconds",
        "fleetgate_containment_seconds",
    ):
        assert f"# TYPE {family} histogram" in text.decode()
    assert (
        "# TYPE fleetgate_units gauge" in text.decode() and "process_resident_memory_bytes" in text.decode()
    )
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, b"")
