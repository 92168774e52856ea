"""Quarantine and release as registry facts, and the mode command that follows from them.

The registry is the truth: a unit is quarantined when its identity state is ``quarantined``, and its
metadata says why, since when and on whose word (``quarantine_reason``, ``quarantined_since``,
``quarantined_by``). Both the gateway (admin API, detectors) and the CLI acting on a data dir
directly change that truth only through `quarantine_unit` and `release_unit`, each one transaction,
committed before it returns: a quarantine is durable before anybody is told it is done.

The mode command (`fleet/{unit}/cmd/mode`, retained) is derived from the record alone by
`mode_command`, so whoever publishes it, whenever (live, or when a stopped gateway starts again),
publishes the same bytes; the publisher can dedupe by comparing payloads. It is signed with the
gateway's TLS server key (pki/signed_json.py: canonical JSON, deterministic ECDSA, so the bytes stay
a function of the record) and names its unit, so a unit can tell the gateway's command from one
forged by any client that may publish on its `cmd/` topics, or copied from another unit's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.policy.rules import Policy, substitute
from pki.names import validate_id
from pki.records import IdentityRecord, to_text
from pki.signed_json import JsonSigner
from pki.store import Registry

MODE_DIAGNOSTIC = "diagnostic-only"
MODE_NORMAL = "normal"
MAX_REASON = 500

# Metadata keys: what the directory, `status` and the mode command read.
REASON_KEY, SINCE_KEY, BY_KEY = "quarantine_reason", "quarantined_since", "quarantined_by"
RELEASED_AT_KEY, RELEASED_BY_KEY = "released_at", "released_by"


class OpsError(Exception):
    """An operation refused; `status` is the HTTP status the admin API answers with."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Change:
    record: IdentityRecord
    changed: bool  # False: it already was in the requested state (nothing written)


def check_reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text:
        raise OpsError("reason_required", "a quarantine needs a reason; say why in a few words")
    if len(text) > MAX_REASON:
        raise OpsError("reason_too_long", f"the reason is longer than {MAX_REASON} characters; shorten it")
    return text


def require_unit(registry: Registry, unit_id: str) -> IdentityRecord:
    try:
        validate_id("unit", unit_id)
    except ValueError as exc:
        raise OpsError("invalid_id", str(exc)) from None
    record = registry.get_identity("unit", unit_id)
    if record is None:
        raise OpsError(
            "unknown_unit", f"there is no unit {unit_id}; check the id with `fleetgate unit list`", 404
        )
    return record


def quarantine_unit(registry: Registry, unit_id: str, reason: str, actor: str, now: datetime) -> Change:
    """Mark the unit quarantined (state + why/since/by) in one committed transaction."""
    reason = check_reason(reason)
    with registry.transaction():
        record = require_unit(registry, unit_id)
        if record.state == "revoked":
            raise OpsError(
                "identity_revoked", f"unit {unit_id} is revoked; a revoked unit cannot be quarantined", 409
            )
        if record.state == "quarantined":
            return Change(record, False)  # the first quarantine's reason and time stand
        metadata = {k: v for k, v in record.metadata.items() if k not in (RELEASED_AT_KEY, RELEASED_BY_KEY)}
        metadata.update({REASON_KEY: reason, SINCE_KEY: to_text(now), BY_KEY: actor})
        registry.update_metadata("unit", unit_id, metadata, now)
        return Change(registry.set_state("unit", unit_id, "quarantined", now), True)


def release_unit(registry: Registry, unit_id: str, actor: str, now: datetime) -> Change:
    """End the quarantine: back to ``enrolled`` (or ``registered`` if it never got a certificate)."""
    with registry.transaction():
        record = require_unit(registry, unit_id)
        if record.state != "quarantined":
            return Change(record, False)
        metadata = {k: v for k, v in record.metadata.items() if k not in (REASON_KEY, SINCE_KEY, BY_KEY)}
        metadata.update({RELEASED_AT_KEY: to_text(now), RELEASED_BY_KEY: actor})
        registry.update_metadata("unit", unit_id, metadata, now)
        state = "enrolled" if registry.latest_certificate("unit", unit_id) is not None else "registered"
        return Change(registry.set_state("unit", unit_id, state, now), True)


def mode_topic(unit_id: str) -> str:
    return f"fleet/{unit_id}/cmd/mode"


def allowed_topics(policy: Policy, unit_id: str) -> list[str]:
    """What a quarantined unit may still publish outside its control namespace, as concrete filters."""
    profile = policy.quarantine_profile("unit")
    return [substitute(g.template, {"{id}": unit_id}) for g in profile.publish]


def mode_body(record: IdentityRecord, policy: Policy) -> dict[str, object] | None:
    """What the unit's record calls for, unsigned; None when it never needs a mode command.

    A unit that was never quarantined gets nothing (no retained message per unit for nothing); one
    that was released gets ``normal``, so a unit that missed the release while offline learns of it.
    `since` lets a unit refuse an older command replayed after a newer one.
    """
    meta = record.metadata
    if record.state == "quarantined":
        return {
            "mode": MODE_DIAGNOSTIC,
            "unit": record.id,
            "reason": meta.get(REASON_KEY, ""),
            "since": meta.get(SINCE_KEY, to_text(record.updated_at)),
            "by": meta.get(BY_KEY, "unknown"),
            "allowed": allowed_topics(policy, record.id),
        }
    if RELEASED_AT_KEY in meta and record.state != "revoked":
        return {
            "mode": MODE_NORMAL,
            "unit": record.id,
            "since": meta[RELEASED_AT_KEY],
            "by": meta.get(RELEASED_BY_KEY, ""),
        }
    return None


def mode_command(record: IdentityRecord, policy: Policy, signer: JsonSigner) -> bytes | None:
    """The retained mode command this unit's record calls for, signed; None when it needs none."""
    body = mode_body(record, policy)
    return None if body is None else signer.sign(body)
