"""Device posture reported after connecting: a unit's retained `fleet/{id}/state` re-judges its session.

MQTT 3.1.1 units cannot put posture on CONNECT, and any unit may update its firmware while connected,
so the publish observer reads posture from each accepted state message of the unit itself and hands
it to the policy engine. When the outcome changes (restricted -> ok after an update, or ok -> refused),
every live session is re-authorized — on the next loop iteration (`BrokerDriver.later`), never
inside the routing that called the observer — and the change is audited. Restricted mode is not an
ops alert: no quarantine record, no mode command; the unit is simply held to diagnostic-only until
it reports a posture that meets the minimum.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from gateway.edge.driver import BrokerDriver
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.policy.posture import parse_posture_from_state
from gateway.stores.audit_log import AuditLog

log = logging.getLogger("fleetgate.posture")


class PostureWatch:
    def __init__(
        self,
        engine: PolicyEngine,
        driver: BrokerDriver,
        audit: AuditLog,
    ) -> None:
        self._engine = engine
        self._driver = driver
        self._audit = audit
        self._scheduled = False
        self._audits: list[dict[str, Any]] = []
        self.changes = 0

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        identity = peer.identity
        # Cheap test first: this runs for every accepted publish.
        if identity is None or not topic.endswith("/state") or identity.kind != "unit":
            return
        if topic != f"fleet/{identity.id}/state":
            return
        posture = parse_posture_from_state(payload)
        if posture is None:
            return
        verdict = self._engine.report_posture(identity, posture, now)
        if verdict is None:
            return
        self.changes += 1
        log.info("posture of %s: %s %s", identity, verdict.outcome, "; ".join(verdict.reasons))
        # Audited after routing too: the broker's store may hold a transaction on the same database.
        self._audits.append(
            {
                "actor": f"unit/{identity.id}",
                "action": "posture.changed",
                "subject": f"unit/{identity.id}",
                "outcome": verdict.outcome,
                "reason": verdict.shortfalls[0].code if verdict.shortfalls else "meets_minimum",
                "details": {
                    "rule": verdict.rule,
                    "reported": dict(posture.raw),
                    "shortfalls": verdict.reasons,
                },
                "now": datetime.fromtimestamp(now, UTC),
            }
        )
        if not self._scheduled:
            self._scheduled = self._driver.later(self.reauthorize)

    def reauthorize(self) -> None:
        """Audit the changes and re-decide every live session (after the state message was routed)."""
        self._scheduled = False
        audits, self._audits = self._audits, []
        for record in audits:
            self._audit.append(**record)
        self._driver.reauthorize()
