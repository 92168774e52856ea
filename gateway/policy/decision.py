"""A decision is a value with a reason: what was decided, why, and which rule said so.

Every connect, subscribe, publish and delivery the gateway judges produces one of these, so a denial
can be counted by reason, audited with the rule that fired, and explained to an operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str  # a stable snake_case code, e.g. "topic_outside_namespace"
    rule: str = ""  # where it came from, e.g. "unit/publish/2" or "builtin/client_id_binding"
    # Does this denial count towards the connection's violation limit? Not when the client is doing
    # nothing wrong by its own lights, or is only sending too much (a quarantined unit's telemetry, a
    # rate-limited or throttled flood: dropped, but cutting the session would cut its vehicle-control
    # path too).
    violation: bool = True

    def __init__(self, verdict: Verdict, reason: str, rule: str = "", violation: bool = True) -> None:
        # Written out: compiled with the per-message path (gateway/mqtt/packets.Publish says why).
        object.__setattr__(self, "verdict", verdict)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "violation", violation)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


def allow(reason: str = "granted", rule: str = "") -> Decision:
    return Decision(Verdict.ALLOW, reason, rule)


def deny(reason: str, rule: str = "", *, violation: bool = True) -> Decision:
    return Decision(Verdict.DENY, reason, rule, violation)
