"""Operations: the one path every quarantine, release, revocation and partner cut-off takes.

Callers are the admin API (an operator), the detectors (`detector/<name>`) and, through the registry
watcher, the CLI acting on the data dir from another process. Each operation is, in this order:
1. durable: one registry transaction, committed (gateway.ops.quarantine, gateway.ops.partners, pki.service);
2. live: the directory and the policy engine forget what they cached, and the registry follower
   runs at once (`OpsContext.follow_registry`, gateway/app/registry_follower.py), which re-decides
   live sessions and calls `on_identity_changed` — the same code that follows a change another
   process made;
3. audited, with the actor.

Mode commands come from observed state, never from the command that changed it: `on_identity_changed`
publishes the retained `fleet/{unit}/cmd/mode` whenever a unit's record calls for a different one
than was last published, so a quarantine from the CLI, the API, a detector or a restart all end in
the same message. The gateway never publishes anywhere else, least of all on control topics.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from gateway.broker import ClientConnected, ClientDisconnected
from gateway.broker.histogram import Histogram
from gateway.edge.driver import BrokerDriver
from gateway.mqtt.reason_codes import ReasonCode
from gateway.ops.mode_publisher import ModePublisher
from gateway.ops.partners import blast_radius, revoke_partner
from gateway.ops.provisioning import BulkReport, UnitRequest, audit_registrations, register_units
from gateway.ops.quarantine import (
    BY_KEY,
    REASON_KEY,
    SINCE_KEY,
    OpsError,
    mode_topic,
    quarantine_unit,
    release_unit,
)
from gateway.ops.status import OpResult, PartnerReport, UnitStatus, unit_statuses
from gateway.policy.engine import PolicyEngine
from gateway.stores.audit_log import AuditLog
from gateway.stores.registry_directory import RegistryDirectory
from pki.authority import revocation_flag
from pki.names import CLIENT_KINDS, Identity, make_identity
from pki.records import IdentityRecord
from pki.service import FleetCA
from pki.signed_json import JsonSigner
from pki.store import Registry

log = logging.getLogger("fleetgate.ops")

__all__ = [
    "OpResult",
    "Operations",
    "OpsContext",
    "OpsError",
    "PartnerReport",
    "UnitStatus",
    "revocation_flag",
]


@dataclass(frozen=True)
class OpsContext:
    """What fleet operations act on; built once by the process root (gateway/app/runtime.py)."""

    registry: Registry
    ca: FleetCA
    audit: AuditLog
    directory: RegistryDirectory
    engine: PolicyEngine
    driver: BrokerDriver
    trust_domain: str
    # Apply what the registry committed to live sessions now, instead of at the follower's next poll.
    follow_registry: Callable[[], None]
    # Signs mode commands: the gateway's TLS server key, which units verify with the certificate
    # they saw in their handshake.
    mode_signer: JsonSigner


class Operations:
    def __init__(self, ctx: OpsContext) -> None:
        self._ctx = ctx
        self._modes = ModePublisher(ctx.driver, lambda: ctx.engine.policy, ctx.mode_signer)
        self._seen: dict[Identity, tuple[str, datetime]] = {}  # (state, updated_at) last acted on
        self.last_seen: dict[str, float] = {}  # client id -> epoch of its last disconnect
        # Time to contain: from the operation's start until live sessions follow it, per action.
        self.containment_seconds: dict[str, Histogram] = {
            action: Histogram() for action in ("quarantine", "revoke", "partner_disconnect")
        }

    # --- quarantine -------------------------------------------------------------------------------

    def quarantine(self, unit_id: str, reason: str, actor: str, now: datetime) -> OpResult:
        started = self._ctx.driver.clock.monotonic()
        with self._refusal_audited(actor, "unit.quarantine", f"unit/{unit_id}", now):
            change = quarantine_unit(self._ctx.registry, unit_id, reason, actor, now)
        if change.changed:
            self._apply_now(self._identity("unit", unit_id))
        meta = change.record.metadata
        facts = {
            "reason": meta.get(REASON_KEY, ""),
            "since": meta.get(SINCE_KEY, ""),
            "by": meta.get(BY_KEY, ""),
        }
        self._ctx.audit.append(
            actor=actor,
            action="unit.quarantine",
            subject=f"unit/{unit_id}",
            outcome="ok" if change.changed else "unchanged",
            reason=facts["reason"],
            details={"since": facts["since"], "by": facts["by"]},
            now=now,
        )
        return self._result("quarantine", change.record, change.changed, started, details=facts)

    def release(self, unit_id: str, actor: str, now: datetime) -> OpResult:
        started = self._ctx.driver.clock.monotonic()
        with self._refusal_audited(actor, "unit.release", f"unit/{unit_id}", now):
            change = release_unit(self._ctx.registry, unit_id, actor, now)
        if change.changed:
            self._apply_now(self._identity("unit", unit_id))
        self._ctx.audit.append(
            actor=actor,
            action="unit.release",
            subject=f"unit/{unit_id}",
            outcome="ok" if change.changed else "unchanged",
            now=now,
        )
        return self._result("release", change.record, change.changed, started)

    # --- cutting off ------------------------------------------------------------------------------

    def revoke_identity(self, kind: str, ident: str, reason: str, actor: str, now: datetime) -> OpResult:
        """Revoke every certificate and token of the identity and cut its whole session — for a unit,
        vehicle control included. Callers must have had the operator confirm (--force / confirm)."""
        started = self._ctx.driver.clock.monotonic()
        subject = f"{kind}/{ident}"

        with self._refusal_audited(actor, "identity.revoke", subject, now):
            if kind not in CLIENT_KINDS:
                raise OpsError("invalid_kind", f"kind {kind!r} is not one of {', '.join(CLIENT_KINDS)}")
            before = self._ctx.registry.get_identity(kind, ident)
            if before is None:
                raise OpsError("unknown_identity", f"there is no {subject}; check the id", 404)
            serials = self._ctx.ca.revoke_identity(kind, ident, revocation_flag(reason), now)
        identity = self._identity(kind, ident)
        closed = self._cut_off({identity}, set(serials), "identity revoked", now)
        changed = before.state != "revoked" or bool(serials)
        hex_serials = tuple(format(s, "x") for s in serials)
        self._ctx.audit.append(
            actor=actor,
            action="identity.revoke",
            subject=subject,
            outcome="ok" if changed else "unchanged",
            reason=reason,
            details={"serials": list(hex_serials), "sessions_closed": closed},
            now=now,
        )
        record = self._ctx.registry.get_identity(kind, ident) or before
        return self._result("revoke", record, changed, started, closed, hex_serials)

    def disconnect(self, identity: Identity, reason: str, actor: str, now: datetime) -> int:
        """Close the identity's live sessions (it may reconnect); returns how many were closed."""
        closed = self._ctx.driver.disconnect_where(
            lambda peer: peer.identity == identity, ReasonCode.ADMINISTRATIVE_ACTION, reason, now.timestamp()
        )
        self._ctx.audit.append(
            actor=actor,
            action="session.disconnect",
            subject=str(identity),
            outcome="ok",
            reason=reason,
            details={"sessions_closed": closed},
            now=now,
        )
        return closed

    def kick(self, client_id: str, reason: str, actor: str, now: datetime, confirm: bool) -> OpResult:
        """Close one live session (DISCONNECT 0x98 for 5.0); the client may reconnect at once, its
        certificate and state untouched. A unit's session carries vehicle control, so closing one
        needs `confirm`, as revoking does."""
        started = self._ctx.driver.clock.monotonic()
        subject = f"session/{client_id}"
        with self._refusal_audited(actor, "session.kick", subject, now):
            live = [s for s in self._ctx.driver.sessions() if s.client_id == client_id and s.connected]
            if not live or live[0].peer is None:
                message = f"no client {client_id} is connected; see `fleetgate session list`"
                raise OpsError("unknown_session", message, 404)
            peer = live[0].peer
            identity = peer.identity
            if identity is not None and identity.kind == "unit" and not confirm:
                raise OpsError(
                    "confirm_required",
                    f"kicking unit {identity.id} closes its vehicle-control session until it reconnects; "
                    "confirm it (CLI: --force)",
                )
        closed = self._ctx.driver.disconnect_where(
            lambda p: p.address == peer.address and p.identity == identity,
            ReasonCode.ADMINISTRATIVE_ACTION,
            reason,
            now.timestamp(),
        )
        self._ctx.audit.append(
            actor=actor,
            action="session.kick",
            subject=subject,
            outcome="ok" if closed else "unchanged",
            reason=reason,
            details={"identity": str(identity) if identity else "", "sessions_closed": closed},
            now=now,
        )
        return OpResult(
            action="kick",
            subject=subject,
            changed=bool(closed),
            state="disconnected" if closed else "unknown",
            elapsed_ms=round((self._ctx.driver.clock.monotonic() - started) * 1000, 3),
            sessions_closed=closed,
        )

    def partner_disconnect(self, partner: str, actor: str, now: datetime, dry_run: bool) -> PartnerReport:
        started = self._ctx.driver.clock.monotonic()
        with self._refusal_audited(actor, "partner.disconnect", f"partner/{partner}", now):
            radius = blast_radius(self._ctx.registry, partner, now)
        identities = {self._identity("partner", m.id) for m in radius.members}
        sessions = [
            s for s in self._ctx.driver.sessions() if s.peer is not None and s.peer.identity in identities
        ]
        live = sum(1 for s in sessions if s.connected)
        subscriptions = sum(len(s.subscriptions) for s in sessions)
        serials, tokens = radius.serials, radius.tokens
        if not dry_run:
            serials, tokens = revoke_partner(self._ctx.ca, radius.members, now)
            live = self._cut_off(identities, set(serials), "partner disconnected", now)
        report = PartnerReport(
            partner=partner,
            dry_run=dry_run,
            identities=tuple(sorted(str(i) for i in identities)),
            certificates=len(serials),
            tokens=tokens,
            sessions=live,
            subscriptions=subscriptions,
            offline_sessions=len(sessions) - sum(1 for s in sessions if s.connected),
            serials=tuple(format(s, "x") for s in serials),
            elapsed_ms=round((self._ctx.driver.clock.monotonic() - started) * 1000, 3),
        )
        if not dry_run:
            self.containment_seconds["partner_disconnect"].observe(report.elapsed_ms / 1000)
        details: dict[str, object] = {k: v for k, v in report.as_dict().items() if k != "serials"}
        details["identities"] = list(report.identities)
        self._ctx.audit.append(
            actor=actor,
            action="partner.disconnect",
            subject=f"partner/{partner}",
            outcome="dry_run" if dry_run else "ok",
            details=details,
            now=now,
        )
        return report

    # --- provisioning -----------------------------------------------------------------------------

    def register_units(
        self,
        requests: list[UnitRequest],
        actor: str,
        now: datetime,
        token_ttl: timedelta,
        skip_existing: bool,
    ) -> BulkReport:
        """Register many units, all or nothing (gateway/ops/provisioning.py); audited per unit."""
        report = register_units(self._ctx.ca, requests, now, token_ttl, skip_existing=skip_existing)
        audit_registrations(self._ctx.audit, report, actor, now)
        if not report.ok:
            refused = [r for r in report.results if r.status == "refused"]
            self._ctx.audit.append(
                actor=actor,
                action="unit.add",
                subject=f"unit/{refused[0].unit}" if refused else "units",
                outcome="refused",
                reason=refused[0].code if refused else "batch_refused",
                details={"rows": len(requests), "refused": len(refused)},
                now=now,
            )
        return report

    def new_token(
        self, unit_id: str, actor: str, now: datetime, ttl: timedelta, replace_box: bool
    ) -> dict[str, object]:
        """A new one-time token for a unit (its older tokens void). `replace_box`: a new box takes
        over, so the certificates of the old one are revoked too (superseded), in the same
        transaction, and its live session is cut; the unit keeps its state (a quarantine stays)."""
        with self._refusal_audited(actor, "unit.token", f"unit/{unit_id}", now):
            if self._ctx.registry.get_identity("unit", unit_id) is None:
                raise OpsError("unknown_unit", f"there is no unit {unit_id}; see GET /api/units", 404)
        serials: list[int] = []
        with self._ctx.registry.transaction():
            token = self._ctx.ca.new_token(unit_id, now, ttl)
            if replace_box:
                serials = self._ctx.ca.revoke_identity_certificates(
                    "unit", unit_id, x509.ReasonFlags.superseded, now
                )
        if serials:
            self._ctx.ca.write_crl(now)
            self._cut_off(set(), set(serials), "unit replaced", now)
        hexed = [format(s, "x") for s in serials]
        self._ctx.audit.append(
            actor=actor,
            action="unit.token",
            subject=f"unit/{unit_id}",
            outcome="ok",
            details={"expires_at": (now + ttl).isoformat(), "revoked_serials": hexed},
            now=now,
        )
        expires = (now + ttl).isoformat()
        return {"unit": unit_id, "token": token, "expires_at": expires, "revoked_serials": hexed}

    # --- views ------------------------------------------------------------------------------------

    def status(self, now: datetime, unit_id: str | None = None) -> list[UnitStatus]:
        sessions = {
            s.client_id: s
            for s in self._ctx.driver.sessions()
            if s.peer is not None and s.peer.identity is not None and s.peer.identity.kind == "unit"
        }
        return unit_statuses(self._ctx.registry, sessions, self.last_seen, now, only=unit_id)

    def observe(self, events: Iterable[object]) -> None:
        """Broker events the runtime drains: remember when each client was last connected."""
        stamp = self._ctx.driver.clock.now()
        for event in events:
            if isinstance(event, ClientDisconnected | ClientConnected):
                self.last_seen[event.client_id] = stamp

    # --- following the registry -------------------------------------------------------------------

    def on_identity_changed(
        self, identity: Identity, now: datetime, record: IdentityRecord | None = None
    ) -> None:
        """The registry says this identity changed (here or in another process): act on its new state.

        Called with every changed record the registry poll sees (repeatedly, as its window overlaps),
        so it acts only on a (state, updated_at) it has not acted on yet.
        """
        if record is None:
            record = self._ctx.registry.get_identity(identity.kind, identity.id)
            if record is None:
                return
        key = (record.state, record.updated_at)
        if self._seen.get(identity) == key:
            return
        self._seen[identity] = key
        payload = self._modes.publish(record, now) if identity.kind == "unit" else None
        if payload is not None:
            mode = json.loads(payload)["mode"]

            def audit() -> None:
                self._ctx.audit.append(
                    actor="system",
                    action="unit.mode_command",
                    subject=str(identity),
                    outcome="ok",
                    reason=mode,
                    details={"topic": mode_topic(identity.id)},
                    now=now,
                )

            # The command is on its way to the unit already (the hub writes at the end of this loop
            # iteration); its audit record is a database write that, in a cluster, may wait for the
            # write lock another node holds, so it follows on the next iteration instead of delaying
            # the unit's command. Without a running loop (tests driving the core) it is written now.
            if not self._ctx.driver.later(lambda: self._audit_later(audit)):
                audit()
        if record.state == "revoked":
            self._cut_off({identity}, set(), "identity revoked", now)

    @staticmethod
    def _audit_later(append: Callable[[], None]) -> None:
        try:
            append()
        except sqlite3.Error as exc:
            log.error("the audit record of a mode command could not be written (%s)", exc)

    def use_mode_signer(self, signer: JsonSigner) -> None:
        """Sign mode commands with this key from now on (the server certificate was re-issued);
        `reconcile` then publishes every unit's command signed with it."""
        self._modes.use_signer(signer)

    def reconcile(self, now: datetime) -> int:
        """At start: every unit's retained mode command matches its record (a CLI quarantine made while
        the gateway was down takes effect now). Returns how many were published."""
        records = self._ctx.registry.list_identities("unit")
        return sum(self._modes.publish(record, now) is not None for record in records)

    # --- internals ----------------------------------------------------------------------------------

    def _apply_now(self, identity: Identity) -> None:
        """Make a committed change live at once instead of at the next registry poll."""
        self._ctx.directory.forget(identity)
        self._ctx.engine.invalidate(identity)
        self._ctx.follow_registry()
        self._ctx.driver.reauthorize()

    def _cut_off(self, identities: set[Identity], serials: set[int], reason: str, now: datetime) -> int:
        """Close live sessions of these identities (or certificates) and discard their offline ones."""
        for identity in identities:
            self._ctx.directory.forget(identity)
            self._ctx.engine.invalidate(identity)
        self._ctx.engine.invalidate()  # serial answers are cached without their owner
        closed = self._ctx.driver.disconnect_where(
            lambda peer: peer.identity in identities or (peer.certificate_serial or 0) in serials,
            ReasonCode.NOT_AUTHORIZED,
            reason,
            now.timestamp(),
        )
        self._ctx.driver.discard_offline(lambda peer: peer.identity in identities, now.timestamp())
        self._ctx.follow_registry()  # revoked serials into the directory: refused at the handshake
        return closed

    def _identity(self, kind: str, ident: str) -> Identity:
        return make_identity(kind, ident, self._ctx.trust_domain)

    @contextmanager
    def _refusal_audited(self, actor: str, action: str, subject: str, now: datetime) -> Iterator[None]:
        """An OpsError inside is audited as this action refused, then raised on."""
        try:
            yield
        except OpsError as exc:
            self._ctx.audit.append(
                actor=actor,
                action=action,
                subject=subject,
                outcome="refused",
                reason=exc.code,
                details={"error": str(exc)},
                now=now,
            )
            raise

    def _result(
        self,
        action: str,
        record: IdentityRecord,
        changed: bool,
        started: float,
        closed: int = 0,
        serials: tuple[str, ...] = (),
        details: dict[str, str] | None = None,
    ) -> OpResult:
        elapsed = self._ctx.driver.clock.monotonic() - started
        if changed and action in self.containment_seconds:
            self.containment_seconds[action].observe(elapsed)
        return OpResult(
            action=action,
            subject=f"{record.kind}/{record.id}",
            changed=changed,
            state=record.state,
            elapsed_ms=round(elapsed * 1000, 3),
            sessions_closed=closed,
            revoked_serials=serials,
            details=details or {},
        )
