"""The admin rights and which operator role has which: a table, with nothing to import (the CLI reads
it to list the roles without loading the HTTP stack; auth.py judges requests with it)."""

from __future__ import annotations

OPS_RIGHTS = frozenset(
    {
        "units.read",
        "sessions.read",
        "units.quarantine",
        "units.release",
        "sessions.kick",
        "docs.read",
        "flows.read",
        "metrics.read",
        "units.messages_pii",
    }
)
READ_RIGHTS = frozenset(
    {"units.read", "sessions.read", "audit.read", "events.read", "docs.read", "flows.read", "metrics.read"}
)
SECURITY_RIGHTS = OPS_RIGHTS | READ_RIGHTS | {"identities.revoke", "partners.disconnect", "policy.reload"}
# An integrator's backend or factory line: registers units and gives them tokens, reads their status.
PROVISIONING_RIGHTS = frozenset({"units.register", "units.token"})
INTEGRATOR_RIGHTS = PROVISIONING_RIGHTS | {"units.read", "docs.read"}

# The roles table (docs/operations.md repeats it): ops contain units, security may also cut off and
# change policy, auditors only read, integrators register units and read their status, and a metrics
# identity (a Prometheus scraper) reads /metrics only.
ROLE_RIGHTS: dict[str, frozenset[str]] = {
    "ops": OPS_RIGHTS | PROVISIONING_RIGHTS,
    "security": SECURITY_RIGHTS | PROVISIONING_RIGHTS,
    "integrator": INTEGRATOR_RIGHTS,
    "auditor": READ_RIGHTS,
    "metrics": frozenset({"metrics.read"}),
}
RIGHT_TEXT = {
    "units.read": "read unit status",
    "sessions.read": "list sessions",
    "sessions.kick": "close live sessions",
    "units.quarantine": "quarantine units",
    "units.release": "release units",
    "units.register": "register units",
    "units.token": "give units new enrollment tokens",
    "identities.revoke": "revoke identities",
    "partners.disconnect": "disconnect partners",
    "policy.reload": "reload the policy",
    "audit.read": "read the audit log",
    "events.read": "follow the event stream",
    "docs.read": "read the API document",
    "flows.read": "read the data-flow map",
    "metrics.read": "read the metrics",
    "units.messages_pii": "see PII in a unit's recent messages (the console)",
}
