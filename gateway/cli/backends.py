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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from cryptography import x509

from gateway.cli.admin_client import Remote
from gateway.cli.common import CliError, LocalState, local_actor, open_local, utc_now
from gateway.config import load_config
from gateway.ops.partners import blast_radius, revoke_partner
from gateway.ops.provisioning import UnitRequest, audit_registrations, register_units
from gateway.ops.quarantine import OpsError, quarantine_unit, release_unit
from gateway.ops.status import UnitFilter, unit_statuses
from gateway.stores.audit_log import AuditRecord
from gateway.stores.broker_store import SqliteBrokerStore
from pki.authority import revocation_flag
from pki.names import CLIENT_KINDS
from pki.records import CertificateRecord

POLL_SECONDS = 0.25
MAX_PAGE = 1000  # units per GET /api/units page
BATCH = 500  # units per POST /api/units


class Backend(Protocol):
    where: str

    def quarantine(self, unit_id: str, reason: str) -> dict[str, Any]: ...
    def release(self, unit_id: str) -> dict[str, Any]: ...
    def status(self, unit_id: str | None) -> list[dict[str, Any]]: ...
    def units(self, wanted: UnitFilter) -> list[dict[str, Any]]: ...
    def register(
        self, requests: list[UnitRequest], ttl: timedelta | None, skip_existing: bool
    ) -> dict[str, Any]: ...
    def new_token(self, unit_id: str, ttl: timedelta | None, replace_box: bool) -> dict[str, Any]: ...
    def show(self, unit_id: str) -> dict[str, Any]: ...
    def revoke(self, kind: str, ident: str, reason: str) -> dict[str, Any]: ...
    def partner_disconnect(self, partner: str, dry_run: bool) -> dict[str, Any]: ...
    def sessions(self) -> list[dict[str, Any]]: ...
    def kick(self, client_id: str, reason: str, confirm: bool) -> dict[str, Any]: ...
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
        return self.units(UnitFilter())

    def units(self, wanted: UnitFilter) -> list[dict[str, Any]]:
        """Every page of `GET /api/units` with these filters."""
        query: list[tuple[str, str]] = [("per_page", str(MAX_PAGE))]
        query += [("state", state) for state in sorted(wanted.states or ())]
        if wanted.online is not None:
            query.append(("online", "true" if wanted.online else "false"))
        if wanted.expiring_within is not None:
            query.append(("expiring", f"{int(wanted.expiring_within.total_seconds())}s"))
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.remote.call("GET", "/api/units?" + urlencode([*query, ("page", str(page))]))
            rows += answer["units"]
            if page >= int(answer.get("pages", 1)):
                return rows
            page += 1

    def register(
        self, requests: list[UnitRequest], ttl: timedelta | None, skip_existing: bool
    ) -> dict[str, Any]:
        """`POST /api/units` in batches of at most 500 (each all or nothing); stops at a refused one."""
        merged: dict[str, Any] = {"results": []}
        for start in range(0, len(requests), BATCH):
            batch = requests[start : start + BATCH]
            body: dict[str, Any] = {
                "units": [{"unit": r.unit, **({"vin": r.vin} if r.vin else {})} for r in batch],
                "skip_existing": skip_existing,
            }
            if ttl is not None:
                body["ttl_hours"] = ttl.total_seconds() / 3600
            answer = self.remote.call_with_report("POST", "/api/units", body)
            for result in answer["results"]:  # rows are numbered within the batch: number them in the file
                merged["results"].append({**result, "row": result["row"] + start})
            if "error" in answer:
                merged["error"], merged["code"] = answer["error"], answer["code"]
                merged["results"] += [_unsent(r) for r in requests[start + len(batch) :]]
                break
        return merged

    def new_token(self, unit_id: str, ttl: timedelta | None, replace_box: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"replace": replace_box}
        if ttl is not None:
            body["ttl_hours"] = ttl.total_seconds() / 3600
        return dict(self.remote.call("POST", f"/api/units/{quote(unit_id, safe='')}/token", body))

    def show(self, unit_id: str) -> dict[str, Any]:
        return dict(self.remote.call("GET", f"/api/units/{quote(unit_id, safe='')}"))

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

    def sessions(self) -> list[dict[str, Any]]:
        return list(self.remote.call("GET", "/api/sessions")["sessions"])

    def kick(self, client_id: str, reason: str, confirm: bool) -> dict[str, Any]:
        body = {"reason": reason, "confirm": confirm}
        return dict(self.remote.call("POST", f"/api/sessions/{quote(client_id, safe='')}/kick", body))

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
                "unknown_unit", f"there is no unit {unit_id}; check the id with `fleetgate unit list`", 404
            )
        return [row.as_dict() for row in rows]

    def units(self, wanted: UnitFilter) -> list[dict[str, Any]]:
        if wanted.online is not None:
            raise CliError(
                "who is online only the running gateway knows; pass --profile (or --server, --cert, --key)",
                "online_unknown",
            )
        now = utc_now()
        with open_local(self.data_dir) as state:
            rows = unit_statuses(state.registry, None, {}, now)
        return [row.as_dict() for row in wanted.apply(rows, now)]

    def register(
        self, requests: list[UnitRequest], ttl: timedelta | None, skip_existing: bool
    ) -> dict[str, Any]:
        now = utc_now()
        with open_local(self.data_dir) as state:
            lifetime = ttl or timedelta(hours=load_config().certificates.token_ttl_hours)
            report = register_units(state.ca, requests, now, lifetime, skip_existing=skip_existing)
            audit_registrations(state.audit, report, local_actor(), now)
        answer: dict[str, Any] = {"results": [r.as_dict() for r in report.results]}
        refused = [r for r in report.results if r.status == "refused"]
        if refused:
            answer["error"] = (
                f"nothing was registered: row {refused[0].row} ({refused[0].unit}): {refused[0].error}"
            )
            answer["code"] = refused[0].code
        return answer

    def new_token(self, unit_id: str, ttl: timedelta | None, replace_box: bool) -> dict[str, Any]:
        now = utc_now()
        with open_local(self.data_dir) as state:
            lifetime = ttl or timedelta(hours=load_config().certificates.token_ttl_hours)
            if state.registry.get_identity("unit", unit_id) is None:
                raise OpsError("unknown_unit", f"there is no unit {unit_id}; see `fleetgate unit list`", 404)
            serials: list[int] = []
            with state.registry.transaction():
                token = state.ca.new_token(unit_id, now, lifetime)
                if replace_box:  # a new box takes over: the old one's certificates go (superseded)
                    serials = state.ca.revoke_identity_certificates(
                        "unit", unit_id, x509.ReasonFlags.superseded, now
                    )
            if serials:
                state.ca.write_crl(now)
            hexed = [format(s, "x") for s in serials]
            expires = (now + lifetime).isoformat()
            self._audit(
                state,
                "unit.token",
                f"unit/{unit_id}",
                "ok",
                details={"expires_at": expires, "revoked_serials": hexed},
            )
        return {"unit": unit_id, "token": token, "expires_at": expires, "revoked_serials": hexed}

    def show(self, unit_id: str) -> dict[str, Any]:
        """The status row, and what only the data dir has: metadata and every certificate."""
        [row] = self.status(unit_id)
        with open_local(self.data_dir) as state:
            record = state.registry.get_identity("unit", unit_id)
            certs = state.registry.list_certificates(kind="unit", ident=unit_id)
            latest = state.registry.latest_certificate("unit", unit_id)
        if record is None:  # removed between the two reads
            raise OpsError("unknown_unit", f"there is no unit {unit_id}; see `fleetgate unit list`", 404)
        return {
            **row,
            "metadata": record.metadata,
            "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat(),
            "serial": format(latest.serial, "x") if latest else None,  # the newest, whatever its status
            "not_after": latest.not_after.isoformat() if latest else None,
            "certificates": [certificate_row(c) for c in certs],
        }

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

    def sessions(self) -> list[dict[str, Any]]:
        """The sessions the data dir stores (persistent ones, and those live when last written);
        whether each is connected only the running gateway knows."""
        with open_local(self.data_dir) as state:
            stored = SqliteBrokerStore(state.conn).stored_sessions()
        return [
            {
                "client_id": record.client_id,
                "identity": identity_label(record.identity),
                "address": None,
                "connected": None,
                "since": None
                if record.disconnected_at is None
                else datetime.fromtimestamp(record.disconnected_at, UTC).isoformat(timespec="seconds"),
                "subscriptions": [s.options.topic_filter for s in record.subscriptions],
                "queued": queued,
                "inflight": None,
                "expiry_interval": record.expiry_interval,
                "certificate_serial": None,
            }
            for record, queued in stored
        ]

    def kick(self, client_id: str, reason: str, confirm: bool) -> dict[str, Any]:
        raise CliError(
            "only the running gateway holds live sessions; pass --profile (or --server, --cert and --key) "
            "to kick one through its admin API"
        )

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


def certificate_row(r: CertificateRecord) -> dict[str, str]:
    """One certificate as `cert list` and `unit show` print it."""
    return {
        "serial": format(r.serial, "x"),
        "identity": f"{r.kind}/{r.id}",
        "status": r.status,
        "not_before": r.not_before.isoformat(),
        "not_after": r.not_after.isoformat(),
        "fingerprint": r.fingerprint,
        "revocation_reason": r.revocation_reason.name if r.revocation_reason else "",
        "renewed_from": "" if r.renewed_from is None else format(r.renewed_from, "x"),
    }


def identity_label(spiffe_uri: str | None) -> str | None:
    """`unit/TRK-1` for `spiffe://fleet.local/unit/TRK-1`, as the admin API names identities."""
    if spiffe_uri is None:
        return None
    kind, _, ident = spiffe_uri.removeprefix("spiffe://").partition("/")[2].partition("/")
    return f"{kind}/{ident}" if ident else spiffe_uri


def _unsent(request: UnitRequest) -> dict[str, Any]:
    because = "not sent: an earlier batch was refused"
    return {
        "row": request.row,
        "unit": request.unit,
        "status": "not_registered",
        "code": "batch_refused",
        "error": because,
        "token": None,
        "expires_at": None,
    }
