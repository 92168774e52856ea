"""`scripts/bench --quick` keeps working: both brokers start, every case runs, both deliver messages.

Structure and "something was delivered", never speed: timed assertions are flaky on a shared machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks.mosquitto import MOSQUITTO

ROOT = Path(__file__).parents[2]
BROKERS = ("fleetgate", "mosquitto")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fleetgate vs Mosquitto" in proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_every_case_ran_on_both_brokers_without_error(results: dict[str, Any]) -> None:
    for case, by_broker in results["results"].items():
        for broker in BROKERS:
            runs = by_broker[broker]
            assert runs, (case, broker)
            assert all("error" not in run for run in runs), (case, broker, runs)


@pytest.mark.parametrize(
    ("case", "metric"),
    [
        ("gencheck", "0.4k_delivered_per_s"),
        ("qos0", "delivered_per_s"),
        ("qos1", "delivered_per_s"),
        ("hop", "qos1_same_node_delivered_pct"),
        ("fanin", "0.4k_delivered_pct"),
        ("fanout", "delivered_pct"),
        ("broadcast", "delivered_pct"),
        ("storm", "handshakes_per_s"),
        ("memory", "0.02k_connected"),
    ],
)
def test_both_brokers_delivered(results: dict[str, Any], case: str, metric: str) -> None:
    row = results["summary"][case][metric]
    for broker in BROKERS:
        assert row[broker] > 0, (case, metric, row)
    assert row["ratio"] > 0


def test_the_generator_reports_each_process_and_its_warnings(results: dict[str, Any]) -> None:
    gencheck = results["summary"]["gencheck"]
    for broker in BROKERS:
        assert gencheck["0.4k_generator_procs"][broker] == 3  # the subscriber's process and two workers
        assert gencheck["0.4k_generator_cpu_max_pct"][broker] > 0
        assert isinstance(gencheck["broker_limit_reached"][broker], bool)
    assert results["summary"]["fanin"]["0.4k_generator_procs"]["fleetgate"] == 1
    assert isinstance(results["generator_warnings"], list)


def test_containment_is_reported_for_both(results: dict[str, Any]) -> None:
    contain = results["summary"]["contain"]
    assert contain["contained_pct"]["fleetgate"] == 100
    assert contain["sessions_cut_by_restart"]["mosquitto"] >= 1
    assert isinstance(contain["live_session_survives_crl_update"]["mosquitto"], bool)


def test_the_report_says_where_it_ran(results: dict[str, Any]) -> None:
    env = results["environment"]
    assert env["mosquitto"].startswith("mosquitto version")
    assert env["cpus"] >= 1 and results["targets"]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-w2") / "quick.json"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick", "--cases", "hop,qos1", "--gateway-workers", "2",
         "--only", "fleetgate", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_the_hop_is_measured_worker_to_worker_under_two_workers(two_workers: dict[str, Any]) -> None:
    """`serve --workers 2`: the hop case put the publisher on the other worker (a message crossing on
    NATS reached the subscriber) and reports each worker's and the nats-server's CPU."""
    hop = two_workers["summary"]["hop"]
    for qos in (0, 1):
        assert hop[f"qos{qos}_cross_node_delivered_pct"]["fleetgate"] == 100
        assert isinstance(hop[f"qos{qos}_hop_p99_ms"]["fleetgate"], float)
    for process in ("worker_0", "worker_1", "nats-server"):
        assert f"qos1_cross_node_{process}_cpu_pct" in hop
    assert "worker_1_rss_mb" in two_workers["summary"]["qos1"]


def test_a_single_broker_has_no_hop(results: dict[str, Any]) -> None:
    hop = results["summary"]["hop"]
    assert "qos0_same_node_p99_ms" in hop
    assert hop.get("qos0_cross_node_p99_ms", {}).get("mosquitto") is None
