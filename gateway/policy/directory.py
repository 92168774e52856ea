"""Who is who right now: the identity facts the policy engine asks for and never stores itself.

The engine is pure apart from its caches; the registry (SQLite, later PostgreSQL) is not. This module
is the seam between them: the `IdentityDirectory` protocol the engine calls, and `InMemoryDirectory`,
a fake shipped as code so that engine tests, `policy explain` and the simulator need no database.

The runtime implements the protocol over the registry with its own cache and tells the engine
(`PolicyEngine.invalidate`) whenever a state, tier or certificate status changes; the engine then asks
again. Lookups must be cheap and must not block for long: they run inside the broker's event handling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from pki.names import Identity

__all__ = ["IDENTITY_STATES", "IdentityDirectory", "IdentityState", "InMemoryDirectory"]

# The registry's lifecycle of an identity. Quarantine is both a state (units) and a flag, because the
# registry may keep "enrolled" as the state of a quarantined unit and record quarantine beside it.
IDENTITY_STATES = ("registered", "enrolled", "quarantined", "revoked")


@dataclass(frozen=True, slots=True)
class IdentityState:
    state: str  # one of IDENTITY_STATES
    tier: int | None = None  # partners only: 1 (full feed) .. 3 (trickle); None when not a partner
    role: str | None = None  # operators only: the admin role (ops, security, auditor); None otherwise
    quarantined: bool = False
    quarantine_reason: str | None = None

    def __post_init__(self) -> None:
        if self.state not in IDENTITY_STATES:
            raise ValueError(
                f"identity state must be one of {', '.join(IDENTITY_STATES)}, not {self.state!r}"
            )

    @property
    def is_quarantined(self) -> bool:
        return self.quarantined or self.state == "quarantined"

    @property
    def is_revoked(self) -> bool:
        return self.state == "revoked"


class IdentityDirectory(Protocol):
    def state_of(self, identity: Identity) -> IdentityState | None:
        """The identity's current state, or None when the registry does not know it."""
        ...

    def is_certificate_revoked(self, serial: int) -> bool:
        """Is the certificate with this serial number revoked (whoever it was issued to)?"""
        ...


class InMemoryDirectory:
    """A dictionary-backed directory for tests and for judging a policy file without a data dir."""

    def __init__(self) -> None:
        self._states: dict[Identity, IdentityState] = {}
        self._revoked: set[int] = set()
        self.lookups = 0  # how often the engine asked, so tests can prove its cache works

    def state_of(self, identity: Identity) -> IdentityState | None:
        self.lookups += 1
        return self._states.get(identity)

    def is_certificate_revoked(self, serial: int) -> bool:
        self.lookups += 1
        return serial in self._revoked

    # --- setters (what the registry's writers would do) -----------------------------------------

    def put(self, identity: Identity, state: IdentityState) -> None:
        self._states[identity] = state

    def enroll(self, identity: Identity, tier: int | None = None, role: str | None = None) -> IdentityState:
        state = IdentityState("enrolled", tier=tier, role=role)
        self._states[identity] = state
        return state

    def quarantine(self, identity: Identity, reason: str) -> None:
        self._states[identity] = replace(self._require(identity), quarantined=True, quarantine_reason=reason)

    def release(self, identity: Identity) -> None:
        current = self._require(identity)
        state = "enrolled" if current.state == "quarantined" else current.state
        self._states[identity] = replace(current, state=state, quarantined=False, quarantine_reason=None)

    def set_tier(self, identity: Identity, tier: int | None) -> None:
        self._states[identity] = replace(self._require(identity), tier=tier)

    def revoke_identity(self, identity: Identity) -> None:
        self._states[identity] = replace(self._require(identity), state="revoked")

    def revoke_certificate(self, serial: int) -> None:
        self._revoked.add(serial)

    def forget(self, identity: Identity) -> None:
        self._states.pop(identity, None)

    def _require(self, identity: Identity) -> IdentityState:
        state = self._states.get(identity)
        if state is None:
            raise KeyError(f"{identity} is not in the directory; enroll it first")
        return state
