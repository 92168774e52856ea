"""Moving up: copy a single node's shared state (its SQLite file) into a cluster's empty PostgreSQL.

What moves: the registry (identities, tokens, certificates in the order they were recorded, CRL
numbers) and the whole audit chain with its head, so every unit keeps its certificate and
`fleetgate audit verify` goes on from the same head. What stays in the data directory: the CA's
files (provisioned to every node), the node's own broker state, keys and anchors.

One transaction on the target: a copy that fails half way leaves the database empty. Then it is
verified, each check a line of the report: the row counts per table, every certificate's serial and
fingerprint, the audit chain walked on the target and its head equal to the source's, and the root
CA recorded as the cluster's (every node started later must hold the same one).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from gateway.stores.audit_log import AuditLog
from gateway.stores.cluster_nodes import ClusterNodes
from pki.sqlite import open_database, open_store, transaction
from pki.store import Registry

# In dependency order (tokens name identities); certificates in the order they were recorded.
TABLES: tuple[tuple[str, str], ...] = (
    ("pki_identities", "kind, id"),
    ("pki_tokens", "token_hash"),
    ("pki_certificates", "rowid"),
    ("pki_crl_state", "id"),
    ("audit_log", "seq"),
)


class MigrationError(RuntimeError):
    """One sentence: why nothing was migrated, and what to do."""


@dataclass
class MigrationReport:
    target: str
    counts: dict[str, int] = field(default_factory=dict)
    audit_head: tuple[int, str] = (0, "")
    checks: list[str] = field(default_factory=list)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def migrate(database: Path, url: str, root_ca_der: bytes, where: str) -> MigrationReport:
    """Copy `database` (a node's SQLite file) into the PostgreSQL at `url`; `where` names it in text."""
    source = open_database(database)
    try:
        Registry(source), AuditLog(source)  # a data dir of an older release: migrated in place first
        target = open_store(url)
        try:
            return _copy_and_verify(source, target, root_ca_der, where)
        finally:
            target.close()
    finally:
        source.close()


def _copy_and_verify(
    source: sqlite3.Connection, target: sqlite3.Connection, root_ca_der: bytes, where: str
) -> MigrationReport:
    Registry(target), AuditLog(target)
    nodes = ClusterNodes(target)
    report = MigrationReport(where)
    with transaction(target):
        held = {table: _count(target, table) for table, _ in TABLES if table != "pki_crl_state"}
        if any(held.values()):
            busy = ", ".join(f"{n} rows in {t}" for t, n in held.items() if n)
            raise MigrationError(f"{where} already holds a fleet ({busy}); migrate into an empty database")
        for table, order in TABLES:
            columns = _columns(source, table)
            marks = ", ".join("?" for _ in columns)
            names = ", ".join(columns)
            rows = source.execute(f"SELECT {names} FROM {table} ORDER BY {order}").fetchall()
            for row in rows:
                target.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(row))
            report.counts[table] = len(rows)
        head = source.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if head is not None and int(head[0]) > 0:
            target.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (head[0], head[1]))
        report.audit_head = (int(head[0]), str(head[1])) if head is not None else (0, "")
    _verify(source, target, report)
    ours = hashlib.sha256(root_ca_der).hexdigest()
    recorded = nodes.agree("root_ca_sha256", ours)
    if recorded != ours:
        raise MigrationError(f"{where} records another root CA ({recorded[:16]}…); nothing else to do")
    report.checks.append(f"root CA {ours[:16]}… recorded as the cluster's")
    return report


def _verify(source: sqlite3.Connection, target: sqlite3.Connection, report: MigrationReport) -> None:
    for table, _ in TABLES:
        there = _count(target, table)
        if there != report.counts[table]:
            raise MigrationError(
                f"{table}: {report.counts[table]} rows copied but {there} found; run it again"
            )
    report.checks.append("row counts equal: " + ", ".join(f"{t} {n}" for t, n in report.counts.items()))
    sql = "SELECT serial, fingerprint FROM pki_certificates ORDER BY serial"
    if source.execute(sql).fetchall() != [tuple(row) for row in target.execute(sql).fetchall()]:
        raise MigrationError("the certificates copied differ from the source's; run it again")
    report.checks.append("every certificate's serial and fingerprint equal")
    result = AuditLog(target).verify()
    if not result.ok or (result.head_seq, result.head_hash) != report.audit_head:
        raise MigrationError(f"the audit chain on the target does not verify ({result.problem or 'head'})")
    report.checks.append(
        f"audit chain intact on the target: {result.checked} records, head {result.head_seq}"
    )
