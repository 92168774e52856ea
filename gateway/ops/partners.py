"""Which identities make up a partner, and cutting them all off in one registry transaction.

A partner organisation may hold several partner identities (one per integration or region, each with
its own tier), tied together by the registry metadata ``org`` (`fleetgate partner add acme-eu --tier 1
--org acme`). An identity without ``org`` is its own organisation. `fleetgate partner disconnect acme`
therefore means: partner/acme if it exists, and every partner identity whose ``org`` is acme.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from gateway.ops.quarantine import OpsError
from pki.names import validate_id
from pki.records import IdentityRecord
from pki.service import FleetCA
from pki.store import Registry

ORG_KEY = "org"
# A partner announcing a breach is what this command is for; the CRL says so.
PARTNER_REVOCATION = x509.ReasonFlags.key_compromise


@dataclass(frozen=True)
class BlastRadius:
    members: list[IdentityRecord]
    serials: list[int]  # valid certificates
    tokens: int  # pending enrollment tokens


def partner_members(registry: Registry, partner: str) -> list[IdentityRecord]:
    try:
        validate_id("partner", partner)
    except ValueError as exc:
        raise OpsError("invalid_id", str(exc)) from None
    members = [
        r
        for r in registry.list_identities("partner")
        if r.id == partner or r.metadata.get(ORG_KEY) == partner
    ]
    if not members:
        raise OpsError(
            "unknown_partner",
            f"there is no partner {partner}; check the name with `fleetgate partner list`",
            404,
        )
    return members


def blast_radius(registry: Registry, partner: str, now: datetime) -> BlastRadius:
    members = partner_members(registry, partner)
    serials = [
        c.serial for m in members for c in registry.list_certificates("partner", m.id) if c.status == "valid"
    ]
    tokens = sum(len(registry.pending_tokens("partner", m.id, now)) for m in members)
    return BlastRadius(members, serials, tokens)


def revoke_partner(ca: FleetCA, members: list[IdentityRecord], now: datetime) -> tuple[list[int], int]:
    """Revoke every certificate and pending token of every member, mark them revoked: one transaction,
    then one CRL. Returns (revoked serials, expired tokens)."""
    registry = ca.registry
    serials: list[int] = []
    tokens = 0
    ca.authority.unlock()  # the CRL is signed after the commit: its key must open before anything changes
    with registry.transaction():
        for member in members:
            serials += ca.revoke_identity_certificates("partner", member.id, PARTNER_REVOCATION, now)
            tokens += registry.revoke_tokens("partner", member.id, now)
            registry.set_state("partner", member.id, "revoked", now)
    ca.write_crl(now)
    return serials, tokens
