"""Following the registry: what another process (the CLI) or this one committed reaches live sessions.

Revocations cut the sessions holding those certificates; every changed identity is re-decided
(`reauthorize`); fleet operations act on each changed record (mode commands, cutting off revoked
identities) through `on_identity_changed` — the same code whichever process made the change.

How it notices: every DATA_VERSION_POLL_SECONDS it asks SQLite whether any other connection
committed (`PRAGMA data_version` reads no table), and only then reads the registry's change feeds;
a full read also runs every REGISTRY_REFRESH_SECONDS as a safety net. `step()` is one look; the
process root runs it under supervision (gateway/app/supervisor.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gateway.edge.driver import BrokerDriver
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.engine import PolicyEngine
from gateway.stores.registry_directory import RegistryDirectory
from pki.names import Identity
from pki.records import IdentityRecord

DATA_VERSION_POLL_SECONDS = 0.025
REGISTRY_REFRESH_SECONDS = 1.0

IdentityChanged = Callable[[Identity, datetime, IdentityRecord], None]


class RegistryFollower:
    def __init__(
        self,
        directory: RegistryDirectory,
        engine: PolicyEngine,
        driver: BrokerDriver,
        trust_domain: str,
        data_version: Callable[[], int],
    ) -> None:
        self._directory = directory
        self._engine = engine
        self._driver = driver
        self._trust_domain = trust_domain
        self._data_version = data_version
        self._on_identity_changed: IdentityChanged | None = None
        self._seen_version = data_version()
        self._last_refresh = driver.clock.monotonic()

    def on_identity_changed(self, callback: IdentityChanged) -> None:
        """Who acts on each changed record (fleet operations); set once, after both exist."""
        self._on_identity_changed = callback

    def step(self) -> None:
        """One look: apply the registry's changes if anything was committed or a refresh is due."""
        version = self._data_version()
        now = self._driver.clock.monotonic()
        if version != self._seen_version or now - self._last_refresh >= REGISTRY_REFRESH_SECONDS:
            self._seen_version, self._last_refresh = version, now
            self.apply_changes()

    def apply_changes(self) -> None:
        """Follow the registry now: revocations cut, state changes re-decide, operations follow."""
        now = self._driver.clock.wall()
        changes = self._directory.refresh(now)
        if changes.revoked_serials:
            self.on_revocations(changes.revoked_serials)
        for identity in changes.identities:
            self._engine.invalidate(identity)
        if changes.identities:
            self._driver.reauthorize()
        if self._on_identity_changed is None:
            return
        for record in changes.records:
            identity = Identity(record.kind, record.id, self._trust_domain)
            self._on_identity_changed(identity, now, record)

    def on_revocations(self, serials: set[int]) -> int:
        """Cut every live session whose certificate is among `serials`; returns how many."""
        if not serials:
            return 0
        self._engine.invalidate()
        return self._driver.disconnect_where(
            lambda peer: peer.certificate_serial in serials, ReasonCode.NOT_AUTHORIZED, "certificate revoked"
        )
