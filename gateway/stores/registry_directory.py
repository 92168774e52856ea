"""The policy engine's view of the registry: cached identity states, revoked and known serials.

The engine asks `state_of` on every connect and after every invalidation, so answers come from a
cache. The cache is kept honest by `refresh`, which the runtime calls a few times a second: it
reads what changed in the registry since the last call — including changes made by another
process, such as `fleetgate cert revoke` or `fleetgate unit quarantine` run while the gateway serves —
and reports them, so the runtime can invalidate the engine and re-decide live sessions.

Known serials (`certificate_refusal`): MQTT admits only certificates this CA recorded, with the
fingerprint it recorded, like the admin API and EST do. The valid ones are cached at start and
followed through the registry's issue feed, but unlike a revocation — where a lagging cache errs
towards "not revoked" for the few milliseconds until the next refresh — a lagging known-set would
refuse a certificate issued a moment ago (`fleetgate service add` in another process, then connect
at once). So a miss is read through to the registry before it becomes a refusal; only a certificate
the registry does not have is refused. EST in this process also tells the cache itself
(`note_issued`), before the new certificate is handed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.policy.directory import IdentityState
from pki.names import Identity
from pki.records import IdentityRecord
from pki.store import Registry

# Writers stamp updated_at before they commit, so a row may become visible slightly "in the past".
# Each refresh therefore looks back this far and keeps only rows that actually differ.
OVERLAP = timedelta(seconds=5)
# Known serials of certificates expired this long ago leave the cache (a refresh does it at most once
# per PRUNE_EVERY): their dates refuse them first, and a miss is read through to the registry anyway.
# Without it a fleet renewing every 20 days would grow the cache for as long as the gateway runs.
PRUNE_AFTER_EXPIRY = timedelta(days=1)
PRUNE_EVERY = timedelta(hours=1)

Known = tuple[bytes, datetime]  # a recorded certificate's SHA-256 fingerprint and its not_after


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
        # serial -> (fingerprint, not_after) of valid certificates; expired ones are read through.
        self._known: dict[int, Known] = _known(registry.valid_fingerprints(expiring_after=now))
        self._since = now - OVERLAP
        self._pruned = now
        # When the registry last answered a full refresh: while the database is unreachable, this
        # cache is what admits known certificates, for as long as the runtime's bound allows.
        self.last_good = now

    def state_of(self, identity: Identity) -> IdentityState | None:
        if identity not in self._states:
            record = self._registry.get_identity(identity.kind, identity.id)
            self._states[identity] = state_from_record(record) if record is not None else None
        return self._states[identity]

    def is_certificate_revoked(self, serial: int) -> bool:
        return serial in self._revoked

    def certificate_refusal(self, cert: x509.Certificate) -> str | None:
        """Why the registry does not vouch for this certificate (revoked, unknown), or None if it does.

        Unknown means: no record of this serial as issued by this CA, or a record with another
        fingerprint (the same serial on different bytes). Both are refused alike, because a
        certificate the registry does not hold can be neither listed nor revoked by serial.
        """
        serial = cert.serial_number
        if serial in self._revoked:
            return "certificate_revoked"
        known = self._known.get(serial)
        if known is None:
            record = self._registry.get_certificate(serial)  # read through: it may be seconds old
            if record is None:
                return "unknown_certificate"
            if record.status != "valid":
                return "certificate_revoked"  # the follower reports it (and cuts) at its next step
            known = self._known[serial] = (bytes.fromhex(record.fingerprint), record.not_after)
        return None if known[0] == cert.fingerprint(hashes.SHA256()) else "unknown_certificate"

    def note_issued(self, cert: x509.Certificate) -> None:
        """A certificate this process just recorded (EST): admit it without asking the registry."""
        self._known[cert.serial_number] = (cert.fingerprint(hashes.SHA256()), cert.not_valid_after_utc)

    def refresh(self, now: datetime) -> Changes:
        """What changed in the registry since the last refresh, applied to the cache."""
        # The window moves only once every feed was read: a refresh that fails (the database is
        # unreachable) leaves it where it was, so the next good one catches up with all it missed.
        since = self._since
        changes = Changes()
        # Issued first, then revoked: a certificate revoked between the two reads is dropped again
        # by the second (and the revoked set is asked first in any case).
        self._known.update(_known(self._registry.valid_fingerprints(recorded_since=since)))
        if now - self._pruned >= PRUNE_EVERY:
            self._pruned, gone = now, now - PRUNE_AFTER_EXPIRY
            self._known = {serial: known for serial, known in self._known.items() if known[1] >= gone}
        for serial in self._registry.revoked_since(since):
            if serial not in self._revoked:
                self._revoked.add(serial)
                self._known.pop(serial, None)
                changes.revoked_serials.add(serial)
        for record in self._registry.identities_changed_since(since):
            changes.records.append(record)
            identity = Identity(record.kind, record.id, self._trust_domain)
            state = state_from_record(record)
            if identity in self._states and self._states[identity] != state:
                changes.identities.add(identity)
            if identity in self._states:
                self._states[identity] = state
        self._since, self.last_good = now - OVERLAP, now
        return changes

    def forget(self, identity: Identity) -> None:
        """Drop a cached answer (e.g. the identity was removed); the next lookup reads the registry."""
        self._states.pop(identity, None)


def _known(rows: dict[int, tuple[str, datetime]]) -> dict[int, Known]:
    return {serial: (bytes.fromhex(text), not_after) for serial, (text, not_after) in rows.items()}
