"""From a detector's firing to a response: the graduated ladder, its cooldown, and the Response value.

Theory of operation. Each (subject, detector) pair has a ladder, e.g. `[alert, throttle, quarantine]`:

    a firing more than `cooldown` after the previous firing    → the first step again (a calm subject
                                                                 that slips once is only alerted on)
    a firing within `cooldown` of the previous firing          → one step up (the top step stays)
    the step's action equals the last action taken, and that   → suppressed: counted, not repeated
    action was taken less than `cooldown` ago                    (shown as `suppressed` next time)

So a flood that keeps firing every window climbs alert → throttle → quarantine within three windows and
is then quarantined at most once per cooldown, never once per packet. Responses are plain values; the
thin adapter in gateway/detection/continuous.py hands them to Operations, the audit log and the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from gateway.policy.detector_rules import Plan
from gateway.policy.detectors import Firing
from pki.names import Identity

__all__ = ["Action", "LadderState", "Response", "climb"]

Action = Literal["alert", "throttle", "quarantine", "disconnect", "revoke"]


@dataclass(frozen=True)
class Response:
    """What to do about a firing, with everything the audit record needs."""

    action: Action
    identity: Identity | None  # None: the subject is a source address (only `alert` applies)
    detector: str
    reason: str
    evidence: dict[str, float]
    rule: str
    subject: str  # "unit/TRK-1" or "address/10.0.0.7": the audit record's subject
    step: int = 1  # 1-based position on the ladder...
    steps: int = 1  # ...of this many
    context: dict[str, str] = field(default_factory=dict)
    throttle_factor: float | None = None  # throttle only: keep this share of the rate...
    throttle_until: float | None = None  # ...until then (seconds, the caller's clock)
    at: float = 0.0

    @property
    def actor(self) -> str:
        return f"detector/{self.detector}"

    def sentence(self) -> str:
        """One line for Operations' reason and for logs: what fired, on which numbers."""
        numbers = ", ".join(f"{k}={v:g}" for k, v in self.evidence.items())
        return f"{self.detector} detected {self.reason.replace('_', ' ')} ({numbers}); rule {self.rule}"


@dataclass(slots=True)
class LadderState:
    """Where one (subject, detector) pair stands on its ladder."""

    level: int = -1
    last_firing: float = -math.inf
    last_action: str = ""
    last_action_at: float = -math.inf
    suppressed: int = 0  # firings not acted on since the last response


def climb(firing: Firing, plan: Plan, state: LadderState, now: float) -> Response | None:
    """The response to `firing` (None if suppressed by the cooldown); advances `state`."""
    top = len(plan.respond) - 1
    calm = now - state.last_firing > plan.cooldown
    state.level = 0 if calm else min(state.level + 1, top)
    state.last_firing = now
    subject = firing.subject
    identity = subject if isinstance(subject, Identity) else None
    action: Action = plan.respond[state.level] if identity is not None else "alert"  # type: ignore[assignment]
    if action == state.last_action and now - state.last_action_at < plan.cooldown:
        state.suppressed += 1
        return None
    evidence = firing.evidence
    if state.suppressed:
        evidence = {**evidence, "suppressed": float(state.suppressed)}
    state.last_action, state.last_action_at, state.suppressed = action, now, 0
    throttle = action == "throttle"
    return Response(
        action=action,
        identity=identity,
        detector=firing.detector,
        reason=firing.reason,
        evidence=evidence,
        rule=firing.rule,
        subject=str(subject),
        step=state.level + 1,
        steps=len(plan.respond),
        context=firing.context,
        throttle_factor=plan.throttle_factor if throttle else None,
        throttle_until=now + plan.throttle_seconds if throttle else None,
        at=now,
    )
