"""Which gateway nodes share this database, and what each one last said about itself.

Every node writes its row once a second (`heartbeat`): name, when it started, when it last wrote,
its live sessions and units online, its listeners, whether its registry follower is healthy and
whether its NATS backbone is connected.
`fleetgate cluster status` reads them all; a node whose row is older than STALE_AFTER is shown as
down (it stopped, lost the database or its host). Only a cluster's nodes report (PostgreSQL).

`cluster_meta` holds what every node must agree on before it serves: the SHA-256 of the root CA
(`root_ca_sha256`), written by the first node (or `fleetgate cluster migrate`) and checked by every
later one,
so a node provisioned with another CA's files refuses to start instead of issuing certificates the
others do not trust. It also holds, for each node that reads the backbone's sealed wire form
(gateway/app/backbone_wire.py), `sealed-reader/<name>` = the start time of the run that reads it:
nodes of earlier versions never write it, and one that is downgraded starts again with another start
time, so a row whose start time does not match is a node that reads only the first form. No schema
step: nodes of earlier versions keep running on the same database during a rolling upgrade.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from pki.records import from_text, to_text
from pki.sqlite import apply_migrations, transaction

STALE_AFTER = timedelta(seconds=5)
SEALED_READER = "sealed-reader/"  # cluster_meta key prefix (above)

_SCHEMA = """
CREATE TABLE cluster_nodes (
    name TEXT PRIMARY KEY, started_at TEXT NOT NULL, seen_at TEXT NOT NULL,
    sessions INTEGER NOT NULL, units_online INTEGER NOT NULL, listeners TEXT NOT NULL,
    healthy INTEGER NOT NULL);
CREATE TABLE cluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# 2: the node's NATS backbone as it last said: "" (none: a single node), "connected", "disconnected".
_BACKBONE = "ALTER TABLE cluster_nodes ADD COLUMN backbone TEXT NOT NULL DEFAULT ''"
_MIGRATIONS = (_SCHEMA, _BACKBONE)
_POSTGRES_MIGRATIONS = (_SCHEMA.replace("INTEGER", "BIGINT"), _BACKBONE)


@dataclass(frozen=True)
class NodeRow:
    name: str
    started_at: str
    seen_at: str
    sessions: int
    units_online: int
    listeners: str
    healthy: bool
    up: bool  # seen within STALE_AFTER of the moment asked
    backbone: str = ""  # "" (no backbone), "connected" or "disconnected"
    reads_sealed: bool = False  # this run of the node reads the backbone's sealed form

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClusterNodes:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        apply_migrations(conn, "cluster", _MIGRATIONS, _POSTGRES_MIGRATIONS)

    def heartbeat(
        self,
        name: str,
        started: datetime,
        now: datetime,
        *,
        sessions: int,
        units_online: int,
        listeners: str,
        healthy: bool,
        backbone: str = "",
    ) -> None:
        # One statement on its own (autocommit), not under the write lock: a node's heartbeat touches
        # only its own row and must never queue behind, or delay, a change another node is making.
        self._conn.execute(
            "INSERT INTO cluster_nodes (name, started_at, seen_at, sessions, units_online, listeners, "
            "healthy, backbone) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "started_at = excluded.started_at, seen_at = excluded.seen_at, sessions = excluded.sessions, "
            "units_online = excluded.units_online, listeners = excluded.listeners, "
            "healthy = excluded.healthy, backbone = excluded.backbone",
            (name, to_text(started), to_text(now), sessions, units_online, listeners, int(healthy), backbone),
        )

    def reads_sealed(self, name: str, started: datetime) -> None:
        """Record that this run of node `name` (started at `started`) reads the sealed wire form."""
        self._conn.execute(
            "INSERT INTO cluster_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (f"{SEALED_READER}{name}", to_text(started)),
        )

    def nodes(self, now: datetime) -> list[NodeRow]:
        rows = self._conn.execute(
            "SELECT n.name, n.started_at, n.seen_at, n.sessions, n.units_online, n.listeners, "
            "n.healthy, n.backbone, m.value FROM cluster_nodes n "
            "LEFT JOIN cluster_meta m ON m.key = CAST(? AS TEXT) || n.name ORDER BY n.name",
            (SEALED_READER,),
        ).fetchall()
        return [
            NodeRow(
                str(name),
                str(started),
                str(seen),
                int(sessions),
                int(online),
                str(listeners),
                bool(healthy),
                now - from_text(str(seen)) <= STALE_AFTER,
                str(backbone),
                reader == started,
            )
            for name, started, seen, sessions, online, listeners, healthy, backbone, reader in rows
        ]

    def all_read_sealed(self, me: str, now: datetime) -> bool:
        """Whether every other node up now reads the sealed form (else send the first form)."""
        return all(node.reads_sealed for node in self.nodes(now) if node.up and node.name != me)

    def agree(self, key: str, value: str) -> str:
        """Record `value` under `key` if nobody did; return what is recorded (compare it with yours)."""
        with transaction(self._conn) as conn:
            row = conn.execute("SELECT value FROM cluster_meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
            conn.execute("INSERT INTO cluster_meta (key, value) VALUES (?, ?)", (key, value))
        return value
