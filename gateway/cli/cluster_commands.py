"""`fleetgate cluster`: the nodes sharing this database, and moving a single node's data into one.

`status` reads the nodes table (gateway/stores/cluster_nodes.py) of the shared database: the data
dir's SQLite file, or the cluster's PostgreSQL ($FLEETGATE_DATABASE_URL). `migrate --to URL` copies a
data directory's registry and audit chain into an empty PostgreSQL (gateway/stores/migrate.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli.common import CliError, data_option, emit_json, friendly_errors, json_option, utc_now
from gateway.cli.output import Column, output_option, show_rows
from gateway.stores.cluster_nodes import ClusterNodes
from gateway.stores.datadir import DataDir, shared_database
from gateway.stores.migrate import MigrationError, migrate
from pki.authority import CertificateAuthority
from pki.postgres import describe_url, is_postgres_url
from pki.sqlite import open_store


@click.group("cluster")
def cluster() -> None:
    """The gateway nodes sharing one database (docs/cluster.md)."""


@cluster.command("status")
@data_option
@output_option
@friendly_errors
def cluster_status(data_dir: Path | None, output: str) -> None:
    """Every node that shares the cluster's PostgreSQL ($FLEETGATE_DATABASE_URL), or every worker of
    `serve --workers N` on this data dir: up, degraded or down, its live sessions and units online,
    its NATS backbone and its listeners (each node reports once a second). Degraded: it serves its
    own clients but fails to follow the registry, or has lost NATS (messages to and from the other
    nodes wait or are lost). Wide: which wire form each node reads (`first form`: an earlier
    version, so every node sends it the first form until it is upgraded)."""
    data = DataDir.resolve(data_dir)
    target = shared_database(data)
    if not is_postgres_url(target) and not data.database.exists():
        raise CliError(f"{data.root} has no fleetgate database; check --data", "not_a_cluster")
    conn = open_store(target)
    try:
        rows = [node.as_dict() for node in ClusterNodes(conn).nodes(utc_now())]
    finally:
        conn.close()
    if not rows and not is_postgres_url(target):  # `serve --workers N` reports on SQLite too
        raise CliError(
            f"{data.root} is a single node on SQLite, not a cluster; set FLEETGATE_DATABASE_URL to the "
            "cluster's PostgreSQL, or run `fleetgate serve --workers N` (docs/cluster.md)",
            "not_a_cluster",
        )
    for row in rows:
        serving = row["healthy"] and row["backbone"] != "disconnected"
        row["state"] = ("up" if serving else "degraded") if row["up"] else "down"
        row["wire"] = "" if not row["backbone"] else "sealed" if row["reads_sealed"] else "first form"
    columns = [
        Column("node", "name"),
        Column("state", "state"),
        Column("sessions", "sessions"),
        Column("units online", "units_online"),
        Column("backbone", "backbone"),
        Column("seen", "seen_at"),
        Column("started", "started_at", wide=True),
        Column("wire", "wire", wide=True),
        Column("listeners", "listeners", wide=True),
    ]
    show_rows(rows, columns, output, title="Cluster nodes", name="name")


@cluster.command("migrate")
@data_option
@click.option("--to", "url", required=True, help="The cluster's PostgreSQL: postgresql://user@host/db.")
@json_option
@friendly_errors
def cluster_migrate(data_dir: Path | None, url: str, as_json: bool) -> None:
    """Copy this data directory's units, certificates, tokens and audit chain into an empty
    PostgreSQL, in one transaction, then verify it (counts, certificates, the chain, the CA); every
    unit keeps its certificate. Stop the gateway first. The CA's files stay in the data directory:
    provision them to every node (docs/cluster.md)."""
    data = DataDir.resolve(data_dir)
    if not is_postgres_url(url):
        raise CliError(f"--to must be a postgresql:// URL, not {url!r}")
    if not data.database.exists():
        raise CliError(f"{data.root} has no fleetgate database to migrate; check --data")
    authority = CertificateAuthority.load(data.ca_dir)
    try:
        report = migrate(data.database, url, authority.root.public_bytes(Encoding.DER), describe_url(url))
    except MigrationError as exc:
        raise CliError(str(exc), "migration_refused") from None
    result: dict[str, Any] = {
        "target": report.target,
        "counts": report.counts,
        "audit_head": {"seq": report.audit_head[0], "hash": report.audit_head[1]},
        "checks": report.checks,
    }
    if as_json:
        emit_json(result)
        return
    click.echo(f"migrated {data.root} into {report.target}")
    for check in report.checks:
        click.echo(f"  ok  {check}")
    click.echo("next: start each node with FLEETGATE_DATABASE_URL (or storage.url) set to that --to URL")
