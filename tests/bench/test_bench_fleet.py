"""`scripts/bench_fleet.py` keeps working: a small fleet through HAProxy to `serve --workers 2`.

What it reports, never how fast: every unit connected, every message delivered, and the CPU and RSS of
each process it names (both workers, the nats-server, HAProxy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.haproxy import HAPROXY

ROOT = Path(__file__).parents[2]


def test_a_small_fleet_through_haproxy_to_two_workers(tmp_path: Path) -> None:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed")
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_fleet.py"), "--target", "fleetgate-w2-haproxy",
         "--units", "20", "--rate", "2", "--duration", "2", "--workdir", str(tmp_path / "work"),
         "--json", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["units_connected"] == 20
    assert result["sent"] > 0 and result["delivered"] == result["sent"]
    for process in ("worker_0", "worker_1", "nats-server", "haproxy"):
        assert result["processes"][f"{process}_rss_mb"] > 0, result["processes"]
    assert "fleetgate-w2-haproxy: 20/20 units connected" in proc.stdout
