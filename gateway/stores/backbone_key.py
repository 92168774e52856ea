"""The key that authenticates the cluster backbone's messages (gateway/app/backbone.py).

32 random bytes, made by the first node that needs them and kept in the shared database, so every
node of a cluster has the same key and nothing more has to be provisioned; a node whose database is
not the others' has another key, and the others drop what it sends (fail closed). Whoever can read
the database could forge backbone messages, but whoever can write it owns the fleet anyway.
"""

from __future__ import annotations

import secrets
import sqlite3

from pki.sqlite import apply_migrations, transaction

COMPONENT = "cluster_secrets"
_SCHEMA = ("CREATE TABLE cluster_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)",)
KEY_BYTES = 32


def backbone_key(conn: sqlite3.Connection) -> bytes:
    """The cluster's backbone key, made now if no node made it before (two nodes starting at once
    agree: the first insert wins and both read it back)."""
    apply_migrations(conn, COMPONENT, _SCHEMA, _SCHEMA)
    with transaction(conn):
        conn.execute(
            "INSERT INTO cluster_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            ("backbone", secrets.token_hex(KEY_BYTES)),
        )
        row = conn.execute("SELECT value FROM cluster_secrets WHERE name = ?", ("backbone",)).fetchone()
    return bytes.fromhex(str(row[0]))
