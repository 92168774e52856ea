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


def test_a_node_of_an_earlier_version_is_sent_the_first_wire_form_until_it_is_gone(tmp_path: Path) -> None:
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=tmp_path, check=True)
    now = datetime.now(UTC)
    started = now - timedelta(minutes=5)
    conn = open_store(str(tmp_path / "fleetgate.db"))
    nodes = ClusterNodes(conn)

    def beat(name: str, seen: datetime, run_started: datetime = started) -> None:
        nodes.heartbeat(
            name, run_started, seen, sessions=0, units_online=0, listeners="", healthy=True,
            backbone="connected",
        )  # fmt: skip

    for name in ("new-a", "new-b"):  # this version: reads the sealed form, and says so
        nodes.reads_sealed(name, started)
        beat(name, now)
    assert nodes.all_read_sealed("new-a", now)
    beat("old-c", now)  # an earlier version heartbeats and has never heard of the sealed form
    assert not nodes.all_read_sealed("new-a", now)
    assert nodes.all_read_sealed("old-c", now)  # (it would not ask; every other node reads it)
    beat("old-c", now - timedelta(seconds=30))  # gone: the others seal again
    assert nodes.all_read_sealed("new-a", now)
    beat("new-b", now, run_started=now - timedelta(seconds=1))  # downgraded: a new run, no record
    assert not nodes.all_read_sealed("new-a", now)
    nodes.reads_sealed("new-b", now - timedelta(seconds=1))  # upgraded again
    assert nodes.all_read_sealed("new-a", now)
    beat("new-b", now, run_started=now - timedelta(seconds=1))
    beat("old-c", now)
    conn.close()

    wide = run_cli("cluster", "status", "-o", "json", data=tmp_path, check=True).json()
    assert {r["name"]: r["wire"] for r in wide} == {  # type: ignore[index,union-attr]
        "new-a": "sealed",
        "new-b": "sealed",
        "old-c": "first form",
    }
