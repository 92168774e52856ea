"""`scripts/demo` end to end, small: a fresh CA, its own gateway process, five units, the attack, the
containment, and a summary, finished by itself with exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_to_completion_and_tells_the_story(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "device_sim.demo.main",
            "--units",
            "5",
            "--seconds",
            "5",
            "--data",
            str(tmp_path / "demo"),
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--summary",
            str(summary_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for line in (
        "1. CA created",
        "2. gateway up",
        "3. 5 units",
        "4. 5 of 5 units connected",
        "8. what happened",
    ):
        assert line in out, out
    s = json.loads(summary_file.read_text())
    assert s["enrolled"] == s["connected"] == 5
    assert s["protocols"] == {"3.1.1": 3, "5.0": 2}
    assert s["telemetry_delivered"] > 5 * 4  # five units, about five seconds of GPS at 1 Hz
    assert s["controls_acked"] == s["controls_sent"] >= 1
    attack = s["attack"]
    assert attack["subscriptions_refused"] == len(attack["subscriptions"]) == 4
    assert attack["forged_reached_victim"] == 0
    assert attack["first_refusal_ms"] is not None
    assert attack["flood_delivered"] < attack["flood_sent"] or attack["flood_sent"] == 0
    during = s["during_containment"]
    assert during["controls_acked"] == during["controls_sent"] == 3  # control kept working throughout
    contained = s["containment"]
    if contained["quarantined"]:
        assert during["telemetry_delivered"] == 0 and during["unit_mode"] == "diagnostic-only"
        assert during["diagnostics_delivered"] >= 1  # diagnostics keep flowing to ops
        assert contained["time_to_contain_ms"] is not None
    else:
        assert contained["note"]  # says why not, in words
    assert s["spoof"].startswith("refused")
    assert "Traceback" not in done.stderr
