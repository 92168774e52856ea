"""`fleetgate cluster status` reads what each node last wrote about itself (stores/cluster_nodes.py):
here rows written as nodes write them, on a data dir's SQLite, and the CLI run as a user runs it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.stores.cluster_nodes import ClusterNodes
from pki.sqlite import open_store
from tests.harness import INSECURE_KEYS, run_cli


def test_a_node_that_lost_nats_is_degraded_and_says_so(tmp_path: Path) -> None:
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=tmp_path, check=True)
    now = datetime.now(UTC)
    conn = open_store(str(tmp_path / "fleetgate.db"))
    nodes = ClusterNodes(conn)
    rows = {
        "gw-w0": (now, True, "connected"),
        "gw-w1": (now, True, "disconnected"),  # serves its own clients; the others' messages wait
        "gw-w2": (now - timedelta(seconds=30), True, "connected"),  # silent for 30 s
        "gw-w3": (now, False, "connected"),  # cannot follow the registry
    }
    for name, (seen, healthy, backbone) in rows.items():
        nodes.heartbeat(
            name, now - timedelta(minutes=5), seen, sessions=3, units_online=2,
            listeners="mqtt=127.0.0.1:8883", healthy=healthy, backbone=backbone,
        )  # fmt: skip
    conn.close()

    status = run_cli("cluster", "status", "-o", "json", data=tmp_path, check=True).json()
    assert {(r["name"], r["state"], r["backbone"]) for r in status} == {  # type: ignore[index,union-attr]
        ("gw-w0", "up", "connected"),
        ("gw-w1", "degraded", "disconnected"),
        ("gw-w2", "down", "connected"),
        ("gw-w3", "degraded", "connected"),
    }
    table = run_cli("cluster", "status", data=tmp_path, check=True).stdout
    assert "BACKBONE" in table and "disconnected" in table
