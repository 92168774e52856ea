"""The broker's SQLite store: the BrokerStore protocol (gateway.broker.persistence) on one SQLite
connection. What is stored, and the durability and fsync policy, are described with the protocol.
Give the broker its own connection (the same file is fine under WAL).
"""

from __future__ import annotations

import sqlite3

from gateway.broker.records import (
    DeliveryRecord,
    MessageRecord,
    QueuedRecord,
    SessionRecord,
    StoredState,
    properties_from_json,
    properties_to_json,
    subscriptions_from_json,
    subscriptions_to_json,
)
from pki.sqlite import apply_migrations, transaction

_SCHEMA_V1 = """
CREATE TABLE broker_retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties TEXT,
    expires_at REAL
);
CREATE TABLE broker_sessions (
    client_id TEXT PRIMARY KEY,
    identity TEXT,
    expiry_interval INTEGER NOT NULL,
    disconnected_at REAL,
    subscriptions TEXT NOT NULL
);
CREATE TABLE broker_messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties TEXT,
    expires_at REAL
);
CREATE TABLE broker_deliveries (
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT NOT NULL,
    packet_id INTEGER,
    released INTEGER NOT NULL,
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID;
CREATE TABLE broker_inbound_qos2 (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
"""

# v2: who owns each retained message, so the per-client retained quota survives a restart.
_SCHEMA_V2 = "ALTER TABLE broker_retained ADD COLUMN owner TEXT;"

# v3: a message row goes with the last delivery that points at it (delete_delivery, delete_session);
# finding whether one still does must not scan the table.
_SCHEMA_V3 = "CREATE INDEX broker_deliveries_message ON broker_deliveries (message_id);"

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)

_QUEUED_PAGE = (
    "SELECT d.seq, d.message_id, d.qos, d.retain, d.subscription_ids, "
    "m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at "
    "FROM broker_deliveries d JOIN broker_messages m ON m.id = d.message_id "
    "WHERE d.client_id = ? AND d.seq > ? AND d.packet_id IS NULL ORDER BY d.seq LIMIT ?"
)


class SqliteBrokerStore:
    """The broker's tables in the gateway database (component "broker").

    Each write runs at once inside a transaction this store opens on the first write after a commit;
    `commit()` ends it. Nothing is buffered in Python, so `pending` is just "a transaction is open".
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # Writes staged since the last commit (a transaction is open). A plain attribute, not a
        # property: the broker reads it after every connection's read (Broker.receive_batch).
        self.pending = False
        apply_migrations(conn, "broker", MIGRATIONS)

    # --- reading --------------------------------------------------------------------------------

    def load(self) -> StoredState:
        with transaction(self._conn) as conn:
            # Messages no delivery points at any more (deleted with their last delivery as the broker
            # goes; this sweeps what an older version or an interrupted write could have left).
            conn.execute(
                "DELETE FROM broker_messages WHERE id NOT IN (SELECT message_id FROM broker_deliveries)"
            )
            state = StoredState()
            for topic, payload, qos, props, expires_at, owner in conn.execute(
                "SELECT topic, payload, qos, properties, expires_at, owner FROM broker_retained"
            ):
                state.retained.append(
                    MessageRecord(
                        topic, bytes(payload), qos, True, properties_from_json(props), expires_at, owner
                    )
                )
            for client_id, identity, expiry, disconnected_at, subs in conn.execute(
                "SELECT client_id, identity, expiry_interval, disconnected_at, subscriptions "
                "FROM broker_sessions"
            ):
                state.sessions.append(
                    SessionRecord(client_id, identity, expiry, disconnected_at, subscriptions_from_json(subs))
                )
            for mid, topic, payload, qos, retain, props, expires_at in conn.execute(
                "SELECT id, topic, payload, qos, retain, properties, expires_at FROM broker_messages "
                "WHERE id IN (SELECT message_id FROM broker_deliveries WHERE packet_id IS NOT NULL)"
            ):
                state.messages[mid] = MessageRecord(
                    topic, bytes(payload), qos, bool(retain), properties_from_json(props), expires_at
                )
            self._load_deliveries(conn, state)
            top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM broker_messages").fetchone()
            state.max_message_id = int(top[0])
        return state

    def stored_sessions(self) -> list[tuple[SessionRecord, int]]:
        """Every stored session with how many messages are queued for it, by client id; reads only
        (`load` also sweeps), so another process may call it while a gateway serves."""
        rows = self._conn.execute(
            "SELECT s.client_id, s.identity, s.expiry_interval, s.disconnected_at, s.subscriptions, "
            "(SELECT COUNT(*) FROM broker_deliveries d WHERE d.client_id = s.client_id) "
            "FROM broker_sessions s ORDER BY s.client_id"
        ).fetchall()
        return [
            (SessionRecord(cid, ident, expiry, gone, subscriptions_from_json(subs)), int(queued))
            for cid, ident, expiry, gone, subs, queued in rows
        ]

    @staticmethod
    def _load_deliveries(conn: sqlite3.Connection, state: StoredState) -> None:
        """The in-flight deliveries; the queued ones only counted (they are paged in: load_queued)."""
        for client_id, seq, mid, qos, retain, sub_ids, packet_id, released in conn.execute(
            "SELECT client_id, seq, message_id, qos, retain, subscription_ids, packet_id, released "
            "FROM broker_deliveries WHERE packet_id IS NOT NULL ORDER BY client_id, seq"
        ):
            record = DeliveryRecord(mid, qos, bool(retain), _ids(sub_ids), packet_id, bool(released))
            state.deliveries.setdefault(client_id, []).append((seq, record))
        for client_id, count, size in conn.execute(
            "SELECT d.client_id, COUNT(*), COALESCE(SUM(length(m.payload)), 0) FROM broker_deliveries d "
            "JOIN broker_messages m ON m.id = d.message_id WHERE d.packet_id IS NULL GROUP BY d.client_id"
        ):
            state.queued[client_id] = (count, size)
        for client_id, last_seq in conn.execute(
            "SELECT client_id, MAX(seq) FROM broker_deliveries GROUP BY client_id"
        ):
            state.last_seq[client_id] = last_seq
        for client_id, packet_id in conn.execute("SELECT client_id, packet_id FROM broker_inbound_qos2"):
            state.inbound_qos2.setdefault(client_id, set()).add(packet_id)

    def load_queued(self, client_id: str, after_seq: int, limit: int) -> list[QueuedRecord]:
        out: list[QueuedRecord] = []
        for row in self._conn.execute(_QUEUED_PAGE, (client_id, after_seq, limit)):
            seq, mid, qos, retain, sub_ids, topic, payload, mqos, mretain, props, expires_at = row
            message = MessageRecord(
                topic, bytes(payload), mqos, bool(mretain), properties_from_json(props), expires_at
            )
            out.append((seq, DeliveryRecord(mid, qos, bool(retain), _ids(sub_ids)), message))
        return out

    # --- writing --------------------------------------------------------------------------------

    def _execute(self, sql: str, args: tuple[object, ...]) -> None:
        if not self.pending:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            self.pending = True
        self._conn.execute(sql, args)

    def save_retained(self, message: MessageRecord) -> None:
        self._execute(
            "INSERT OR REPLACE INTO broker_retained (topic, payload, qos, properties, expires_at, owner) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                message.topic,
                message.payload,
                message.qos,
                properties_to_json(message.properties),
                message.expires_at,
                message.owner,
            ),
        )

    def delete_retained(self, topic: str) -> None:
        self._execute("DELETE FROM broker_retained WHERE topic = ?", (topic,))

    def save_session(self, record: SessionRecord) -> None:
        self._execute(
            "INSERT OR REPLACE INTO broker_sessions "
            "(client_id, identity, expiry_interval, disconnected_at, subscriptions) VALUES (?, ?, ?, ?, ?)",
            (
                record.client_id,
                record.identity,
                record.expiry_interval,
                record.disconnected_at,
                subscriptions_to_json(record.subscriptions),
            ),
        )

    def delete_session(self, client_id: str) -> None:
        self._execute("DELETE FROM broker_sessions WHERE client_id = ?", (client_id,))
        self._execute(
            "DELETE FROM broker_messages WHERE id IN "
            "(SELECT message_id FROM broker_deliveries WHERE client_id = ?1) AND NOT EXISTS "
            "(SELECT 1 FROM broker_deliveries d "
            "WHERE d.message_id = broker_messages.id AND d.client_id != ?1)",
            (client_id,),
        )
        self._execute("DELETE FROM broker_deliveries WHERE client_id = ?", (client_id,))
        self._execute("DELETE FROM broker_inbound_qos2 WHERE client_id = ?", (client_id,))

    def save_message(self, message_id: int, message: MessageRecord) -> None:
        self._execute(
            "INSERT OR REPLACE INTO broker_messages "
            "(id, topic, payload, qos, retain, properties, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                message_id,
                message.topic,
                message.payload,
                message.qos,
                int(message.retain),
                properties_to_json(message.properties),
                message.expires_at,
            ),
        )

    def save_delivery(self, client_id: str, seq: int, record: DeliveryRecord) -> None:
        self._execute(
            "INSERT OR REPLACE INTO broker_deliveries "
            "(client_id, seq, message_id, qos, retain, subscription_ids, packet_id, released) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                client_id,
                seq,
                record.message_id,
                record.qos,
                int(record.retain),
                ",".join(map(str, record.subscription_ids)),
                record.packet_id,
                int(record.released),
            ),
        )

    def delete_delivery(self, client_id: str, seq: int, message_id: int) -> None:
        self._execute("DELETE FROM broker_deliveries WHERE client_id = ? AND seq = ?", (client_id, seq))
        self._execute(
            "DELETE FROM broker_messages WHERE id = ?1 AND NOT EXISTS "
            "(SELECT 1 FROM broker_deliveries WHERE message_id = ?1)",
            (message_id,),
        )

    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._execute(
            "INSERT OR IGNORE INTO broker_inbound_qos2 (client_id, packet_id) VALUES (?, ?)",
            (client_id, packet_id),
        )

    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._execute(
            "DELETE FROM broker_inbound_qos2 WHERE client_id = ? AND packet_id = ?", (client_id, packet_id)
        )

    def commit(self) -> None:
        if not self.pending:
            return
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")  # if this raises, the transaction stays open for rollback()
        self.pending = False

    def rollback(self) -> None:
        if self.pending:
            self.pending = False
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else ()
