"""The policy engine's view of the registry: cached identity states and revoked serials.

The engine asks `state_of` on every connect and after every invalidation, so answers come from a
cache. The cache is kept honest by `refresh`, which the runtime calls a few times a second: it
reads what changed in the registry since the last call — including changes made by another
process, such as `fleetgate cert revoke` or `fleetgate quarantine` run while the gateway serves —
and reports them, so the runtime can invalidate the engine and re-decide live sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.policy.directory import IdentityState
from pki.names import Identity
from pki.records import IdentityRecord
from pki.store import Registry

# Writers stamp updated_at before they commit, so a row may become visible slightly "in the past".
# Each refresh therefore looks back this far and keeps only rows that actually differ.
OVERLAP = timedelta(seconds=5)


@dataclass
class Changes:
    identities: set[Identity] = field(default_factory=set)  # cached ones whose state differs
    revoked_serials: set[int] = field(default_factory=set)
    # Every record written in the window, cached or not, repeated while the window overlaps it:
    # for followers (the mode command) that must act on identities nobody has looked up yet.
    records: list[IdentityRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.identities or self.revoked_serials)


def state_from_record(record: IdentityRecord) -> IdentityState:
    tier_text = record.metadata.get("tier")
    quarantined = record.state == "quarantined"
    return IdentityState(
        state=record.state,
        tier=int(tier_text) if tier_text and tier_text.isdigit() else None,
        role=record.metadata.get("role") if record.kind == "operator" else None,
        quarantined=quarantined,
        quarantine_reason=record.metadata.get("quarantine_reason") if quarantined else None,
    )


class RegistryDirectory:
    def __init__(self, registry: Registry, trust_domain: str, now: datetime) -> None:
        self._registry = registry
        self._trust_domain = trust_domain
        self._states: dict[Identity, IdentityState | None] = {}
        self._revoked: set[int] = {entry.serial for entry in registry.revoked_entries()}
        self._since = now - OVERLAP

    def state_of(self, identity: Identity) -> IdentityState | None:
        if identity not in self._states:
            record = self._registry.get_identity(identity.kind, identity.id)
            self._states[identity] = state_from_record(record) if record is not None else None
        return self._states[identity]

    def is_certificate_revoked(self, serial: int) -> bool:
        return serial in self._revoked

    def refresh(self, now: datetime) -> Changes:
        """What changed in the registry since the last refresh, applied to the cache."""
        since, self._since = self._since, now - OVERLAP
        changes = Changes()
        for serial in self._registry.revoked_since(since):
            if serial not in self._revoked:
                self._revoked.add(serial)
                changes.revoked_serials.add(serial)
        for record in self._registry.identities_changed_since(since):
            changes.records.append(record)
            identity = Identity(record.kind, record.id, self._trust_domain)
            state = state_from_record(record)
            if identity in self._states and self._states[identity] != state:
                changes.identities.add(identity)
            if identity in self._states:
                self._states[identity] = state
        return changes

    def forget(self, identity: Identity) -> None:
        """Drop a cached answer (e.g. the identity was removed); the next lookup reads the registry."""
        self._states.pop(identity, None)
