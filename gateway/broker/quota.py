"""Who owns each retained message, so one identity cannot fill the retained store.

The retained store is global and keyed by topic; a unit may publish retained messages on as many
distinct topics as its grants allow (``fleet/{id}/telemetry/#`` is a whole tree), so without a
per-identity count one client could pin up to ``max_retained_messages`` payloads in memory and on
disk. The owner is the client whose message is currently retained on a topic; replacing or deleting
it moves or frees the slot. The owner is stored with the message, so a restart does not give every
client a fresh quota; the gateway's own messages have none.
Memory: one dict entry per retained topic, already bounded by ``max_retained_messages``.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["RetainedOwners"]


class RetainedOwners:
    __slots__ = ("_count", "_owner")

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}
        self._count: Counter[str] = Counter()

    def allows(self, topic: str, client_id: str, limit: int) -> bool:
        """Whether `client_id` may retain a message on `topic` (replacing its own never costs a slot)."""
        return self._owner.get(topic) == client_id or self._count[client_id] < limit

    def count(self, client_id: str) -> int:
        return self._count[client_id]

    def set(self, topic: str, client_id: str | None) -> None:
        old = self._owner.get(topic)
        if old == client_id:
            return
        self.release(topic)
        if client_id:
            self._owner[topic] = client_id
            self._count[client_id] += 1

    def release(self, topic: str) -> None:
        old = self._owner.pop(topic, None)
        if old is not None:
            self._count[old] -= 1
            if self._count[old] <= 0:
                del self._count[old]
