"""The admin API's OpenAPI 3.1 document, written by hand as data and served at /api/openapi.json.

Kept beside the routes on purpose: tests/ops/test_admin_api.py fails if a route exists that this
document does not describe, or the other way round. Each operation names the right it needs
(`x-fleetgate-right`) and the roles that hold it.
"""

from __future__ import annotations

from typing import Any

from gateway.admin.rights import ROLE_RIGHTS

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def _nullable(kind: str, description: str = "") -> dict[str, Any]:
    return {"type": [kind, "null"], **({"description": description} if description else {})}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {"error": _string("One sentence: what was wrong and what to do."), "code": _string("Stable reason.")},
        ("error", "code"),
    ),
    "UnitStatus": _object(
        {
            "unit": _string(),
            "state": _string(enum=["registered", "enrolled", "quarantined", "revoked"]),
            "online": _nullable("boolean"),
            "last_seen": _nullable("string"),
            "address": _nullable("string"),
            "cert_serial": _nullable("string"),
            "cert_not_after": _nullable("string"),
            "quarantined_since": _nullable("string"),
            "quarantine_reason": _nullable("string"),
            "quarantined_by": _nullable("string"),
        },
        ("unit", "state", "online"),
    ),
    "UnitList": _object(
        {
            "units": {"type": "array", "items": _ref("UnitStatus")},
            "page": {"type": "integer", "description": "This page, from 1."},
            "per_page": {"type": "integer"},
            "total": {"type": "integer", "description": "Units matching the filters, on all pages."},
            "pages": {"type": "integer"},
        },
        ("units", "page", "per_page", "total", "pages"),
    ),
    "RegisterUnitsRequest": _object(
        {
            "units": {
                "type": "array",
                "maxItems": 500,
                "items": _object(
                    {"unit": _string("Unit id."), "vin": _string("Vehicle id (metadata).")}, ("unit",)
                ),
            },
            "ttl_hours": {"type": "number", "description": "Token lifetime (default: the gateway's)."},
            "skip_existing": {
                "type": "boolean",
                "default": False,
                "description": "Report units registered already as `exists` instead of refusing the batch.",
            },
        },
        ("units",),
    ),
    "RowResult": _object(
        {
            "row": {"type": "integer", "description": "1-based position in the request's list."},
            "unit": _string(),
            "status": _string(enum=["registered", "exists", "refused", "not_registered"]),
            "code": _string("Why refused (invalid_id, duplicate_in_batch, already_exists, ...)."),
            "error": _string("One sentence."),
            "token": _nullable("string", "The one-time enrollment token (registered rows; shown once)."),
            "expires_at": _nullable("string"),
        },
        ("row", "unit", "status"),
    ),
    "BulkReport": _object(
        {
            "registered": {"type": "integer"},
            "exists": {"type": "integer"},
            "refused": {"type": "integer"},
            "not_registered": {"type": "integer"},
            "results": {"type": "array", "items": _ref("RowResult")},
        },
        ("registered", "results"),
    ),
    "TokenRequest": _object(
        {
            "ttl_hours": {"type": "number"},
            "replace": {
                "type": "boolean",
                "default": False,
                "description": "A new box replaces the unit's: also revoke its certificates (superseded).",
            },
        }
    ),
    "NewToken": _object(
        {
            "unit": _string(),
            "token": _string("One-time enrollment token; older ones are void."),
            "expires_at": _string(),
            "revoked_serials": {"type": "array", "items": _string()},
        },
        ("unit", "token", "expires_at"),
    ),
    "Session": _object(
        {
            "client_id": _string(),
            "identity": _nullable("string"),
            "address": _nullable("string"),
            "connected": {"type": "boolean"},
            "since": _nullable("string"),
            "subscriptions": {"type": "array", "items": _string()},
            "queued": {"type": "integer", "description": "In memory and, for a persistent session, on disk."},
            "queued_bytes": {"type": "integer"},
            "inflight": {"type": "integer"},
            "holding": {"type": "boolean", "description": "Far enough behind to hold back its publishers."},
            "dropped": {"type": "integer", "description": "Deliveries dropped at its queue bound."},
            "expiry_interval": {"type": "integer"},
            "certificate_serial": _nullable("string"),
        },
        ("client_id", "connected"),
    ),
    "SessionList": _object({"sessions": {"type": "array", "items": _ref("Session")}}, ("sessions",)),
    "QuarantineRequest": _object(
        {"reason": _string("Why; shown to the unit and in the audit log.")}, ("reason",)
    ),
    "RevokeRequest": _object(
        {
            "reason": _string("Free text; an RFC 5280 reason name (keyCompromise...) goes into the CRL."),
            "confirm": {"const": True, "description": "Revoking cuts vehicle control too: must be true."},
        },
        ("reason", "confirm"),
    ),
    "KickRequest": _object(
        {
            "reason": _string("Why; sent to a 5.0 client as the DISCONNECT reason string and audited."),
            "confirm": {
                "type": "boolean",
                "default": False,
                "description": "Must be true for a unit: its session carries vehicle control.",
            },
        }
    ),
    "PartnerDisconnectRequest": _object({"dry_run": {"type": "boolean", "default": False}}),
    "OpResult": _object(
        {
            "action": _string(enum=["quarantine", "release", "revoke", "kick"]),
            "subject": _string(),
            "changed": {"type": "boolean"},
            "state": _string(),
            "elapsed_ms": {"type": "number"},
            "sessions_closed": {"type": "integer"},
            "revoked_serials": {"type": "array", "items": _string()},
            "details": {"type": "object", "additionalProperties": _string()},
        },
        ("action", "subject", "changed", "state", "elapsed_ms"),
    ),
    "PartnerReport": _object(
        {
            "partner": _string(),
            "dry_run": {"type": "boolean"},
            "identities": {"type": "array", "items": _string()},
            "certificates": {"type": "integer"},
            "tokens": {"type": "integer"},
            "sessions": {"type": "integer"},
            "subscriptions": {"type": "integer"},
            "offline_sessions": {"type": "integer"},
            "serials": {"type": "array", "items": _string()},
            "elapsed_ms": {"type": "number"},
        },
        ("partner", "dry_run", "identities", "certificates", "tokens", "sessions", "elapsed_ms"),
    ),
    "PolicyReloaded": _object(
        {"reloaded": {"const": True}, "source": _string(), "digest": _string()}, ("reloaded", "source")
    ),
    "AuditRecord": _object(
        {
            "seq": {"type": "integer"},
            "at": _string(),
            "actor": _string(),
            "action": _string(),
            "subject": _string(),
            "outcome": _string(),
            "reason": _string(),
            "details": {"type": "object"},
            "prev_hash": _string(),
            "hash": _string(),
        },
        ("seq", "at", "actor", "action", "subject", "outcome", "hash"),
    ),
    "AuditPage": _object(
        {"records": {"type": "array", "items": _ref("AuditRecord")}, "head": {"type": "integer"}},
        ("records", "head"),
    ),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _roles(right: str) -> list[str]:
    return sorted(role for role, rights in ROLE_RIGHTS.items() if right in rights)


def _op(
    op_id: str,
    summary: str,
    right: str,
    ok: str | dict[str, Any],
    body: str | None = None,
    params: tuple[dict[str, Any], ...] = (),
    errors: tuple[int, ...] = (),
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": ok if isinstance(ok, dict) else {"description": "OK", "content": {JSON: {"schema": _ref(ok)}}},
        "401": _error("No client certificate."),
        "403": _error("Not an operator certificate, revoked, or the role lacks the right."),
    }
    for status in (400, *errors):
        responses[str(status)] = _error(
            {
                400: "Bad input.",
                404: "No such unit or partner.",
                409: "The identity's state forbids it.",
                422: "The policy file cannot be loaded, or (units) a row was refused: nothing was done.",
            }[status]
        )
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "description": f"Right `{right}`; roles: {', '.join(_roles(right))}.",
        "x-fleetgate-right": right,
        "x-fleetgate-roles": _roles(right),
        "parameters": list(params),
        "responses": responses,
    }
    if body is not None:
        operation["requestBody"] = {
            "required": body not in ("PartnerDisconnectRequest", "KickRequest", "TokenRequest"),
            "content": {JSON: {"schema": _ref(body)}},
        }
    return operation


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _string()}


def _query(name: str, description: str, kind: str = "integer") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind},
    }


UNIT = _path("id", "Unit id, e.g. TRK-00042.")
SSE = {
    "description": "text/event-stream: `id: SEQ`, `event: audit`, `data: AuditRecord`; `: heartbeat` "
    "comments; `event: overflow` (then closed) for a client that reads too slowly.",
    "content": {"text/event-stream": {"schema": _string()}},
}

PATHS: dict[str, Any] = {
    "/api/units": {
        "get": _op(
            "listUnits",
            "Units, a page at a time, in id order: state, online, last seen, certificate, quarantine.",
            "units.read",
            "UnitList",
            params=(
                _query("state", "Only units in this state (repeat, or comma-separated).", "string"),
                _query("online", "true: only connected units; false: only the others.", "boolean"),
                _query("expiring", "Only units whose certificate ends within this (7d, 12h, 30m).", "string"),
                _query("page", "Page number, from 1 (default 1)."),
                _query("per_page", "Units per page, 1-1000 (default 100)."),
            ),
        ),
        "post": _op(
            "registerUnits",
            "Register up to 500 units at once, all or nothing; one-time tokens in the answer "
            "(422 with the per-row results when a row is refused).",
            "units.register",
            "BulkReport",
            "RegisterUnitsRequest",
            errors=(422,),
        ),
    },
    "/api/units/{id}/token": {
        "post": _op(
            "newUnitToken",
            "A new one-time enrollment token for a unit (a new box, a lost token); replace: true also "
            "revokes the old box's certificates.",
            "units.token",
            "NewToken",
            "TokenRequest",
            (UNIT,),
            (404, 409),
        )
    },
    "/api/units/{id}": {
        "get": _op(
            "showUnit", "One unit's status.", "units.read", "UnitStatus", params=(UNIT,), errors=(404,)
        )
    },
    "/api/sessions": {
        "get": _op("listSessions", "MQTT sessions held, live or persistent.", "sessions.read", "SessionList")
    },
    "/api/sessions/{client_id}/kick": {
        "post": _op(
            "kickSession",
            "Close one live session (5.0: DISCONNECT 0x98); the client may reconnect, nothing is revoked.",
            "sessions.kick",
            "OpResult",
            "KickRequest",
            (_path("client_id", "The session's MQTT client id (a unit's id, an operator's name...)."),),
            (404,),
        )
    },
    "/api/units/{id}/quarantine": {
        "post": _op(
            "quarantineUnit",
            "Diagnostic-only mode: durable, live within 1 s, vehicle control untouched.",
            "units.quarantine",
            "OpResult",
            "QuarantineRequest",
            (UNIT,),
            (404, 409),
        )
    },
    "/api/units/{id}/release": {
        "post": _op(
            "releaseUnit",
            "End a quarantine; the unit is told mode normal.",
            "units.release",
            "OpResult",
            params=(UNIT,),
            errors=(404,),
        )
    },
    "/api/identities/{kind}/{id}/revoke": {
        "post": _op(
            "revokeIdentity",
            "Revoke every certificate and token; cuts the whole session, control included.",
            "identities.revoke",
            "OpResult",
            "RevokeRequest",
            (_path("kind", "unit, operator, service or partner."), _path("id", "The identity's id.")),
            (404, 409),
        )
    },
    "/api/partners/{id}/disconnect": {
        "post": _op(
            "disconnectPartner",
            "Revoke all of a partner's certificates and tokens, close its sessions "
            "(dry_run: report the blast radius only).",
            "partners.disconnect",
            "PartnerReport",
            "PartnerDisconnectRequest",
            (_path("id", "Partner name (identity id or org)."),),
            (404,),
        )
    },
    "/api/policy/reload": {
        "post": _op(
            "reloadPolicy",
            "Load the policy file again and re-decide live sessions.",
            "policy.reload",
            "PolicyReloaded",
            errors=(422,),
        )
    },
    "/api/audit": {
        "get": _op(
            "readAudit",
            "Audit records after a sequence number, oldest first.",
            "audit.read",
            "AuditPage",
            params=(
                _query("since", "Records with seq > since (default 0)."),
                _query("limit", "At most this many (1-1000)."),
            ),
        )
    },
    "/api/events": {
        "get": _op(
            "followEvents",
            "New audit records as Server-Sent Events.",
            "events.read",
            SSE,
            params=(
                _query("since", "Replay records after this seq first."),
                _query("heartbeat", "Seconds between heartbeats.", "number"),
            ),
        )
    },
    "/api/flows": {
        "get": _op(
            "flows",
            "The live data-flow map: per role/partner, topic templates published, subscribed and received,"
            " rates, data classes, denied attempts, and the protect surface (receivers of pii/commercial).",
            "flows.read",
            {"description": "The flow map", "content": {JSON: {"schema": {"type": "object"}}}},
        )
    },
    "/api/openapi.json": {
        "get": _op(
            "openapi",
            "This document.",
            "docs.read",
            {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}},
        )
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetgate admin API",
            "version": "1",
            "description": "Operate a fleetgate gateway: unit status, quarantine, revocation, partner "
            "disconnect, policy reload, audit. Authenticate with an operator certificate over mTLS; the "
            "role in the registry (ops, security, auditor, integrator, metrics) decides what it may do.",
        },
        "servers": [{"url": "https://localhost:8443"}],
        "security": [{"mutualTLS": []}],
        "components": {
            "securitySchemes": {
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "A client certificate issued by the fleet CA "
                    "to an operator identity (spiffe://<trust-domain>/operator/<name>).",
                }
            },
            "schemas": SCHEMAS,
        },
        "paths": PATHS,
    }
