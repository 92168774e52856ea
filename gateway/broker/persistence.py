"""Broker persistence: the BrokerStore protocol and an in-memory store (the SQLite one is
gateway.stores.broker_store).

What is stored: retained messages; sessions that outlive their connection (expiry > 0) with their
subscriptions; their undelivered and unacknowledged QoS 1/2 messages (queue and in-flight, with
packet ids and PUBREL state); and inbound QoS 2 packet ids awaiting PUBREL. Clean sessions and QoS 0
never touch the store.

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

from collections.abc import Callable
from typing import Any, Protocol

from gateway.broker.records import (
    DeliveryRecord,
    MessageRecord,
    SessionRecord,
    StoredState,
)


class BrokerStore(Protocol):
    def load(self) -> StoredState: ...

    def save_retained(self, message: MessageRecord) -> None: ...

    def delete_retained(self, topic: str) -> None: ...

    def save_session(self, record: SessionRecord) -> None: ...

    def delete_session(self, client_id: str) -> None:
        """The session, its deliveries and its inbound QoS 2 ids (not the messages: see delete_message)."""
        ...

    def save_message(self, message_id: int, message: MessageRecord) -> None: ...

    def delete_message(self, message_id: int) -> None: ...

    def save_delivery(self, client_id: str, seq: int, record: DeliveryRecord) -> None:
        """Insert or replace."""
        ...

    def delete_delivery(self, client_id: str, seq: int) -> None: ...

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
    (a new Broker on the same InMemoryStore sees exactly what was committed)."""

    def __init__(self) -> None:
        self.retained: dict[str, MessageRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.messages: dict[int, MessageRecord] = {}
        self.deliveries: dict[str, dict[int, DeliveryRecord]] = {}
        self.inbound_qos2: dict[str, set[int]] = {}
        self.commits = 0
        self._staged: list[Callable[[], None]] = []

    def load(self) -> StoredState:
        return StoredState(
            retained=list(self.retained.values()),
            sessions=list(self.sessions.values()),
            messages=dict(self.messages),
            deliveries={cid: sorted(d.items()) for cid, d in self.deliveries.items() if d},
            inbound_qos2={cid: set(ids) for cid, ids in self.inbound_qos2.items() if ids},
        )

    def save_retained(self, message: MessageRecord) -> None:
        self._staged.append(lambda: self.retained.__setitem__(message.topic, message))

    def delete_retained(self, topic: str) -> None:
        self._staged.append(lambda: _discard(self.retained, topic))

    def save_session(self, record: SessionRecord) -> None:
        self._staged.append(lambda: self.sessions.__setitem__(record.client_id, record))

    def delete_session(self, client_id: str) -> None:
        def apply() -> None:
            self.sessions.pop(client_id, None)
            self.deliveries.pop(client_id, None)
            self.inbound_qos2.pop(client_id, None)

        self._staged.append(apply)

    def save_message(self, message_id: int, message: MessageRecord) -> None:
        self._staged.append(lambda: self.messages.__setitem__(message_id, message))

    def delete_message(self, message_id: int) -> None:
        self._staged.append(lambda: _discard(self.messages, message_id))

    def save_delivery(self, client_id: str, seq: int, record: DeliveryRecord) -> None:
        self._staged.append(lambda: self.deliveries.setdefault(client_id, {}).__setitem__(seq, record))

    def delete_delivery(self, client_id: str, seq: int) -> None:
        self._staged.append(lambda: _discard(self.deliveries.get(client_id, {}), seq))

    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._staged.append(lambda: self.inbound_qos2.setdefault(client_id, set()).add(packet_id))

    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._staged.append(lambda: self.inbound_qos2.get(client_id, set()).discard(packet_id))

    @property
    def pending(self) -> bool:
        return bool(self._staged)

    def commit(self) -> None:
        staged, self._staged = self._staged, []
        for apply in staged:
            apply()
        if staged:
            self.commits += 1

    def rollback(self) -> None:
        self._staged.clear()


def _discard(mapping: dict[Any, Any], key: object) -> None:
    mapping.pop(key, None)
