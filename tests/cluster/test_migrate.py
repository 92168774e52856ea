"""Moving up: a single node's data directory copied into PostgreSQL keeps every identity.

A gateway runs on SQLite, enrolls units and quarantines one; it stops; `fleetgate cluster migrate
--to` copies its state and verifies it; a second run is refused; the node then serves from
PostgreSQL and every unit connects with the certificate it already had; `audit verify` and
`cluster status` answer against the database.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.clients import Paho
from tests.harness import Credentials, GatewayProcess
from tests.pg import PgCluster


def test_migrate_a_data_directory_and_serve_it_from_postgresql(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = pg_cluster.new_database()
    single = GatewayProcess(tmp_path_factory.mktemp("single"))
    single.init()
    single.start()
    units = {unit: single.enroll_unit(unit) for unit in ("TRK-M1", "TRK-M2", "TRK-M3")}
    assert single.cli("unit", "quarantine", "TRK-M2", "--reason", "before the move").code == 0
    single.stop()

    moved = single.cli("cluster", "migrate", "--to", url, "--json")
    assert moved.code == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["counts"]["pki_identities"] >= 3 and report["counts"]["audit_log"] > 0
    assert any("audit chain intact" in check for check in report["checks"])
    again = single.cli("cluster", "migrate", "--to", url)
    assert again.code != 0 and "already holds a fleet" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    cluster_env = {"FLEETGATE_DATABASE_URL": url, "FLEETGATE_CLUSTER_NODE_NAME": "n1"}
    node = GatewayProcess(single.root, env=cluster_env)
    node.start()
    try:
        for creds in units.values():
            client = Paho(node.mqtt_port, creds)
            assert client.connect()[0] == 0, creds.ident
            client.disconnect()
        shown = node.cli("unit", "show", "TRK-M2", "--json")
        assert shown.code == 0 and json.loads(shown.stdout)["state"] == "quarantined"
        verify = node.cli("audit", "verify")
        assert verify.code == 0, verify.stdout + verify.stderr
        status = node.cli("cluster", "status", "--json")
        assert status.code == 0, status.stderr
        assert [(n["name"], n["up"]) for n in json.loads(status.stdout)] == [("n1", True)]
    finally:
        node.stop()


def test_the_demos_data_directory_moves_to_postgresql_and_its_units_connect(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What `scripts/demo` leaves behind (its CA, its fleet, the unit it contained, their files in
    sim/units) moves into PostgreSQL, and every unit of it connects to the PostgreSQL-backed node with
    the certificate it enrolled for on SQLite."""
    url = pg_cluster.new_database()
    root = tmp_path_factory.mktemp("demo")
    demo = subprocess.run(
        [sys.executable, "-m", "device_sim.demo.main", "--units", "4", "--seconds", "2",
         "--data", str(root / "data"), "--mqtt-port", "0", "--https-port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    moved = GatewayProcess(root).cli("cluster", "migrate", "--to", url, "--json")  # from its SQLite
    assert moved.code == 0, moved.stderr
    node = GatewayProcess(root, env={"FLEETGATE_DATABASE_URL": url, "FLEETGATE_CLUSTER_NODE_NAME": "n1"})
    units_dir = node.data / "sim" / "units"
    units = sorted(path.stem for path in units_dir.glob("*.key"))
    assert len(units) == 4, units
    node.start()
    try:
        for unit in units:
            creds = Credentials(
                unit, units_dir / f"{unit}.crt", units_dir / f"{unit}.key", units_dir / "ca.crt"
            )
            client = Paho(node.mqtt_port, creds)
            assert client.connect()[0] == 0, unit  # the contained one too: quarantine is not a cut
            client.disconnect()
        listed = node.cli("unit", "list", "--json")
        assert listed.code == 0, listed.stderr
        assert {row["unit"] for row in json.loads(listed.stdout)} >= set(units)
    finally:
        node.stop()
