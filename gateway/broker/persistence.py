"""Broker persistence: the BrokerStore protocol and an in-memory store (the SQLite one is
gateway.stores.broker_store).

What is stored: retained messages; sessions that outlive their connection (expiry > 0) with their
subscriptions; their undelivered and unacknowledged QoS 1/2 messages (queue and in-flight, with
packet ids and PUBREL state); and inbound QoS 2 packet ids awaiting PUBREL. Clean sessions and QoS 0
never touch the store.

Queues live here, not in memory: `load()` returns the in-flight deliveries and only counts the queued
ones (`StoredState.queued`); the broker pages them in, oldest first, with `load_queued` as its session
drains. A message row belongs to the deliveries that point at it: the store deletes it with the last
of them (`delete_delivery`, `delete_session`), so a message queued for several sessions, paged in by
each at its own pace, is neither kept forever nor deleted under another session's delivery.

Durability (the promise "nothing acknowledged is lost"): the broker stages every write of one entry
point call and calls `commit()` once at its end, before it returns the actions that carry the acks
(PUBACK, PUBREC, PUBCOMP). One transaction per call is a group commit: a TLS read that carried fifty
PUBLISH packets costs one commit. Writes are staged inside an open SQLite transaction, so a crash
before commit loses only messages that were never acknowledged.

fsync policy: the database is opened by pki.sqlite.open_database in WAL mode. With synchronous=NORMAL
(the default) a commit survives a process kill (`kill -9`) but the last commits may be lost on power
loss; synchronous=FULL fsyncs the WAL at every commit and survives power loss too, at the cost of one
fsync per broker call that wrote something. The gateway's storage.synchronous setting chooses.
Give the broker its own connection (the same file is fine under WAL).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.broker.records import (
    DeliveryRecord,
    MessageRecord,
    QueuedRecord,
    SessionRecord,
    StoredState,
)


class BrokerStore(Protocol):
    def load(self) -> StoredState: ...

    def save_retained(self, message: MessageRecord) -> None: ...

    def delete_retained(self, topic: str) -> None: ...

    def save_session(self, record: SessionRecord) -> None: ...

    def delete_session(self, client_id: str) -> None:
        """The session, its deliveries, its inbound QoS 2 ids, and the messages no other session's
        deliveries point at."""
        ...

    def save_message(self, message_id: int, message: MessageRecord) -> None:
        """Insert or replace."""
        ...

    def save_delivery(self, client_id: str, seq: int, record: DeliveryRecord) -> None:
        """Insert or replace."""
        ...

    def delete_delivery(self, client_id: str, seq: int, message_id: int) -> None:
        """The delivery, and its message if no delivery points at it any more."""
        ...

    def load_queued(self, client_id: str, after_seq: int, limit: int) -> list[QueuedRecord]:
        """Up to `limit` queued (not in-flight) deliveries of the session with a seq above `after_seq`,
        in seq order, each with its message; writes not yet committed included."""
        ...

    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None: ...

    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None: ...

    @property
    def pending(self) -> bool:
        """Writes staged since the last commit."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class InMemoryStore:
    """A store that lives as long as the process: for tests, the lab, and a "restart" inside a test
    (a new Broker on the same InMemoryStore sees exactly what was committed).

    Writes apply at once, as they do inside an open SQLite transaction (so `load_queued` sees them);
    the first write after a commit takes a snapshot, which `rollback` restores."""

    def __init__(self) -> None:
        self.retained: dict[str, MessageRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.messages: dict[int, MessageRecord] = {}
        self.deliveries: dict[str, dict[int, DeliveryRecord]] = {}
        self.inbound_qos2: dict[str, set[int]] = {}
        self.commits = 0
        self._snapshot: tuple[Any, ...] | None = None

    def load(self) -> StoredState:
        self._sweep()
        in_flight = {
            cid: sorted((seq, r) for seq, r in d.items() if r.packet_id is not None)
            for cid, d in self.deliveries.items()
        }
        queued: dict[str, tuple[int, int]] = {}
        for cid, d in self.deliveries.items():
            waiting = [r for r in d.values() if r.packet_id is None and r.message_id in self.messages]
            if waiting:
                queued[cid] = (len(waiting), sum(len(self.messages[r.message_id].payload) for r in waiting))
        wanted = {r.message_id for rows in in_flight.values() for _, r in rows}
        return StoredState(
            retained=list(self.retained.values()),
            sessions=list(self.sessions.values()),
            messages={mid: m for mid, m in self.messages.items() if mid in wanted},
            deliveries={cid: rows for cid, rows in in_flight.items() if rows},
            inbound_qos2={cid: set(ids) for cid, ids in self.inbound_qos2.items() if ids},
            queued=queued,
            max_message_id=max(self.messages, default=0),
            last_seq={cid: max(d) for cid, d in self.deliveries.items() if d},
        )

    def load_queued(self, client_id: str, after_seq: int, limit: int) -> list[QueuedRecord]:
        rows = sorted(self.deliveries.get(client_id, {}).items())
        out: list[QueuedRecord] = []
        for seq, record in rows:
            message = self.messages.get(record.message_id)
            if seq > after_seq and record.packet_id is None and message is not None:
                out.append((seq, record, message))
                if len(out) >= limit:
                    break
        return out

    def save_retained(self, message: MessageRecord) -> None:
        self._write()
        self.retained[message.topic] = message

    def delete_retained(self, topic: str) -> None:
        self._write()
        self.retained.pop(topic, None)

    def save_session(self, record: SessionRecord) -> None:
        self._write()
        self.sessions[record.client_id] = record

    def delete_session(self, client_id: str) -> None:
        self._write()
        self.sessions.pop(client_id, None)
        gone = self.deliveries.pop(client_id, {})
        self.inbound_qos2.pop(client_id, None)
        for message_id in {r.message_id for r in gone.values()}:
            self._collect(message_id)

    def save_message(self, message_id: int, message: MessageRecord) -> None:
        self._write()
        self.messages[message_id] = message

    def save_delivery(self, client_id: str, seq: int, record: DeliveryRecord) -> None:
        self._write()
        self.deliveries.setdefault(client_id, {})[seq] = record

    def delete_delivery(self, client_id: str, seq: int, message_id: int) -> None:
        self._write()
        self.deliveries.get(client_id, {}).pop(seq, None)
        self._collect(message_id)

    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._write()
        self.inbound_qos2.setdefault(client_id, set()).add(packet_id)

    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._write()
        self.inbound_qos2.get(client_id, set()).discard(packet_id)

    @property
    def pending(self) -> bool:
        return self._snapshot is not None

    def commit(self) -> None:
        if self._snapshot is not None:
            self._snapshot = None
            self.commits += 1

    def rollback(self) -> None:
        if self._snapshot is not None:
            self.retained, self.sessions, self.messages, self.deliveries, self.inbound_qos2 = self._snapshot
            self._snapshot = None

    def _write(self) -> None:
        if self._snapshot is None:
            self._snapshot = (
                dict(self.retained),
                dict(self.sessions),
                dict(self.messages),
                {cid: dict(d) for cid, d in self.deliveries.items()},
                {cid: set(ids) for cid, ids in self.inbound_qos2.items()},
            )

    def _collect(self, message_id: int) -> None:
        if not any(r.message_id == message_id for d in self.deliveries.values() for r in d.values()):
            self.messages.pop(message_id, None)

    def _sweep(self) -> None:
        """What the SQLite store does at load: messages no delivery points at go."""
        used = {r.message_id for d in self.deliveries.values() for r in d.values()}
        for message_id in [m for m in self.messages if m not in used]:
            del self.messages[message_id]
