"""What the console's pages read: the admin API's context, the unit watch and the policy engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.admin.api import AdminContext
from gateway.admin.auth import Operator
from gateway.admin.console_chain import ChainCheck
from gateway.admin.rights import ROLE_RIGHTS
from gateway.context.unit_watch import UnitWatch
from gateway.policy.engine import PolicyEngine
from pki.names import Identity


@dataclass
class ConsoleContext:
    admin: AdminContext
    watch: UnitWatch
    engine: PolicyEngine
    chain: ChainCheck = field(default_factory=ChainCheck)

    def rights(self, who: Operator) -> frozenset[str]:
        return ROLE_RIGHTS.get(who.role, frozenset())

    def needs_totp(self, right: str) -> bool:
        totp = self.admin.totp
        return totp is None or totp.policy.requires_totp(right)

    def posture(self, unit: str) -> str | None:
        verdict = self.engine.posture_of(Identity("unit", unit, self.admin.trust_domain))
        if verdict is None:
            return None
        return verdict.outcome + (": " + "; ".join(verdict.reasons) if verdict.reasons else "")
