"""Where an ops command acts: the admin API of a running gateway, or the data dir directly.

Both backends answer with the same JSON-ready dicts, so commands print one way. The local backend
changes only the registry (through the same functions the gateway's Operations use) and audits with
the local user as actor; a gateway running on that data dir follows the registry within ~0.2 s: it
re-decides live sessions, publishes the unit's mode command, and cuts revoked identities off.
What only a running gateway knows (who is online, live sessions) is None locally.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from gateway.cli.admin_client import Remote
from gateway.cli.common import LocalState, local_actor, open_local, utc_now
from gateway.ops.operations import revocation_flag
from gateway.ops.partners import blast_radius, revoke_partner
from gateway.ops.quarantine import OpsError, quarantine_unit, release_unit
from gateway.ops.status import unit_statuses
from gateway.stores.audit_log import AuditRecord
from pki.names import CLIENT_KINDS

POLL_SECONDS = 0.25


class Backend(Protocol):
    where: str

    def quarantine(self, unit_id: str, reason: str) -> dict[str, Any]: ...
    def release(self, unit_id: str) -> dict[str, Any]: ...
    def status(self, unit_id: str | None) -> list[dict[str, Any]]: ...
    def revoke(self, kind: str, ident: str, reason: str) -> dict[str, Any]: ...
    def partner_disconnect(self, partner: str, dry_run: bool) -> dict[str, Any]: ...
    def events(self, since: int | None, follow: bool) -> Iterator[dict[str, Any]]: ...


class RemoteBackend:
    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.where = remote.server

    def quarantine(self, unit_id: str, reason: str) -> dict[str, Any]:
        return dict(
            self.remote.call("POST", f"/api/units/{quote(unit_id, safe='')}/quarantine", {"reason": reason})
        )

    def release(self, unit_id: str) -> dict[str, Any]:
        return dict(self.remote.call("POST", f"/api/units/{quote(unit_id, safe='')}/release", {}))

    def status(self, unit_id: str | None) -> list[dict[str, Any]]:
        if unit_id is not None:
            return [dict(self.remote.call("GET", f"/api/units/{quote(unit_id, safe='')}"))]
        return list(self.remote.call("GET", "/api/units")["units"])

    def revoke(self, kind: str, ident: str, reason: str) -> dict[str, Any]:
        body = {"reason": reason, "confirm": True}
        return dict(
            self.remote.call(
                "POST", f"/api/identities/{quote(kind, safe='')}/{quote(ident, safe='')}/revoke", body
            )
        )

    def partner_disconnect(self, partner: str, dry_run: bool) -> dict[str, Any]:
        return dict(
            self.remote.call(
                "POST", f"/api/partners/{quote(partner, safe='')}/disconnect", {"dry_run": dry_run}
            )
        )

    def events(self, since: int | None, follow: bool) -> Iterator[dict[str, Any]]:
        if not follow:
            if since is None:
                head = int(self.remote.call("GET", "/api/audit?limit=1")["head"])
                since = max(0, head - 20)
            yield from self.remote.call("GET", f"/api/audit?since={since}")["records"]
            return
        while True:  # a stream the gateway closed for reading too slowly resumes where it stopped
            query = "" if since is None else f"?since={since}"
            for event, data in self.remote.events(f"/api/events{query}"):
                if event == "audit":
                    record = dict(json.loads(data))
                    since = int(record["seq"])
                    yield record
                elif event == "overflow":
                    since = int(json.loads(data)["resume_from"])
                    break
            else:
                return  # the gateway ended the stream (it is stopping)


class LocalBackend:
    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self.where = "local data dir"

    def _audit(self, state: LocalState, action: str, subject: str, outcome: str, **extra: Any) -> None:
        state.audit.append(
            actor=local_actor(), action=action, subject=subject, outcome=outcome, now=utc_now(), **extra
        )

    def quarantine(self, unit_id: str, reason: str) -> dict[str, Any]:
        with open_local(self.data_dir) as state:
            change = quarantine_unit(state.registry, unit_id, reason, local_actor(), utc_now())
            meta = change.record.metadata
            self._audit(
                state,
                "unit.quarantine",
                f"unit/{unit_id}",
                "ok" if change.changed else "unchanged",
                reason=meta.get("quarantine_reason", reason),
                details={"since": meta.get("quarantined_since", ""), "by": meta.get("quarantined_by", "")},
            )
        return {
            "action": "quarantine",
            "subject": f"unit/{unit_id}",
            "changed": change.changed,
            "state": change.record.state,
            "applied_by": "the running gateway within ~0.2 s",
        }

    def release(self, unit_id: str) -> dict[str, Any]:
        with open_local(self.data_dir) as state:
            change = release_unit(state.registry, unit_id, local_actor(), utc_now())
            self._audit(state, "unit.release", f"unit/{unit_id}", "ok" if change.changed else "unchanged")
        return {
            "action": "release",
            "subject": f"unit/{unit_id}",
            "changed": change.changed,
            "state": change.record.state,
            "applied_by": "the running gateway within ~0.2 s",
        }

    def status(self, unit_id: str | None) -> list[dict[str, Any]]:
        with open_local(self.data_dir) as state:
            rows = unit_statuses(state.registry, None, {}, utc_now(), only=unit_id)
        if unit_id is not None and not rows:
            raise OpsError(
                "unknown_unit", f"there is no unit {unit_id}; check the id with `fleetgate status`", 404
            )
        return [row.as_dict() for row in rows]

    def revoke(self, kind: str, ident: str, reason: str) -> dict[str, Any]:
        if kind not in CLIENT_KINDS:
            raise OpsError("invalid_kind", f"kind {kind!r} is not one of {', '.join(CLIENT_KINDS)}")
        with open_local(self.data_dir) as state:
            before = state.registry.get_identity(kind, ident)
            if before is None:
                raise OpsError("unknown_identity", f"there is no {kind}/{ident}; check the id", 404)
            serials = state.ca.revoke_identity(kind, ident, revocation_flag(reason), utc_now())
            changed = before.state != "revoked" or bool(serials)
            hexed = [format(s, "x") for s in serials]
            self._audit(
                state,
                "identity.revoke",
                f"{kind}/{ident}",
                "ok" if changed else "unchanged",
                reason=reason,
                details={"serials": hexed},
            )
        return {
            "action": "revoke",
            "subject": f"{kind}/{ident}",
            "changed": changed,
            "state": "revoked",
            "revoked_serials": hexed,
            "sessions_closed": None,
        }

    def partner_disconnect(self, partner: str, dry_run: bool) -> dict[str, Any]:
        started = time.perf_counter()
        with open_local(self.data_dir) as state:
            now = utc_now()
            radius = blast_radius(state.registry, partner, now)
            serials, tokens = radius.serials, radius.tokens
            if not dry_run:
                serials, tokens = revoke_partner(state.ca, radius.members, now)
            report = {
                "partner": partner,
                "dry_run": dry_run,
                "identities": sorted(f"partner/{m.id}" for m in radius.members),
                "certificates": len(serials),
                "tokens": tokens,
                "sessions": None,
                "subscriptions": None,
                "offline_sessions": None,
                "serials": [format(s, "x") for s in serials],
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            details = {k: v for k, v in report.items() if k != "serials"}
            self._audit(
                state,
                "partner.disconnect",
                f"partner/{partner}",
                "dry_run" if dry_run else "ok",
                details=details,
            )
        return report

    def events(self, since: int | None, follow: bool) -> Iterator[dict[str, Any]]:
        with open_local(self.data_dir) as state:
            head = state.audit.head()[0]
            last = since if since is not None else (head if follow else max(0, head - 20))
            while True:
                batch: list[AuditRecord] = state.audit.tail_after(last)
                for record in batch:
                    yield record.as_dict()
                    last = record.seq
                if not follow:
                    return
                if not batch:
                    time.sleep(POLL_SECONDS)
