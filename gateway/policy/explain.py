"""What `fleetgate policy check` and `fleetgate policy explain` print, as values first and text second.

Both commands judge a policy file, not a running gateway: `explain` builds a one-identity directory in
memory with the state asked for and runs the real `PolicyEngine` on it, so what it prints is exactly
what the broker would decide (connect first, then the publish or subscribe), not a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.packets import Connect
from gateway.mqtt.topics import parse_shared, validate_topic_name
from gateway.policy.decision import Decision
from gateway.policy.directory import IdentityState, InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.grants import CompiledGrants
from gateway.policy.peer import Peer
from gateway.policy.rules import (
    Limits,
    Policy,
    Profile,
    lint_policy,
    quarantine_pairs,
)
from pki.names import Identity

__all__ = ["Explanation", "PolicySummary", "explain", "render_explanation", "render_summary", "summarize"]


# ------------------------------------------------------------------------------------------ explain


@dataclass(frozen=True, slots=True)
class Explanation:
    action: str  # "publish" or "subscribe"
    target: str  # the topic or filter asked about
    identity: Identity
    tier: int | None
    quarantined: bool
    profile: str  # the normal profile the identity falls under, e.g. "partner/tier2"
    decision: Decision
    template: str | None  # the grant as written in the policy, when a grant decided
    grant_filter: str | None  # that grant filled in for this identity
    control: bool  # the topic lies in (a filter reaches into) the control namespace
    quarantine_grants: tuple[str, ...] = ()  # what a quarantined identity may still publish

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "identity": str(self.identity),
            "tier": self.tier,
            "quarantined": self.quarantined,
            "profile": self.profile,
            "verdict": self.decision.verdict.value,
            "reason": self.decision.reason,
            "rule": self.decision.rule,
            "grant": self.template,
            "grant_filter": self.grant_filter,
            "control_namespace": self.control,
            "quarantine_grants": list(self.quarantine_grants),
        }


def explain(
    policy: Policy,
    identity: Identity,
    *,
    tier: int | None = None,
    quarantined: bool = False,
    publish: str | None = None,
    subscribe: str | None = None,
    payload_size: int = 0,
    role: str | None = None,
) -> Explanation:
    """Decide one publish or subscribe for `identity` in the given state; ValueError for a bad topic."""
    if (publish is None) == (subscribe is None):
        raise ValueError("ask about exactly one of a publish topic or a subscribe filter")
    if publish is not None:
        validate_topic_name(publish)  # the broker never asks the policy about an invalid topic either
    directory = InMemoryDirectory()
    directory.put(identity, IdentityState("enrolled", tier=tier, role=role, quarantined=quarantined))
    engine = PolicyEngine(policy, directory)
    peer = Peer("policy-explain", identity)
    decision = engine.decide_connect(peer, Connect(client_id=identity.id), 0.0)
    if decision.allowed and publish is not None:
        decision = engine.decide_publish(peer, publish, payload_size, 0, False, 0.0)
    elif decision.allowed and subscribe is not None:
        decision = engine.decide_subscribe(peer, subscribe, 0.0)
    grants = CompiledGrants.for_identity(policy, identity, tier, quarantined, role=role)
    grant = policy.grant(decision.rule)
    action, target = ("publish", publish) if publish is not None else ("subscribe", subscribe or "")
    return Explanation(
        action=action,
        target=target,
        identity=identity,
        tier=tier,
        quarantined=quarantined,
        profile=grants.profile.name,
        decision=decision,
        template=grant.template if grant is not None else None,
        grant_filter=_filled(grants, decision.rule),
        control=_in_control(grants, action, target),
        quarantine_grants=tuple(f for f, _ in grants.quarantine.filters) if grants.quarantine else (),
    )


def _filled(grants: CompiledGrants, rule: str) -> str | None:
    matchers = [grants.publish, grants.subscribe, *([grants.quarantine] if grants.quarantine else [])]
    return next((f for m in matchers for f, r in m.filters if r == rule), None)


def _in_control(grants: CompiledGrants, action: str, target: str) -> bool:
    if action == "publish":
        return grants.in_control_namespace(target)
    try:
        return bool(grants.control.intersecting(parse_shared(target).topic_filter))
    except TopicFilterInvalid:
        return False


def render_explanation(e: Explanation) -> str:
    state = "quarantined" if e.quarantined else "enrolled"
    tier = f", tier {e.tier}" if e.tier is not None else ""
    lines = [
        f"{e.decision.verdict.value.upper()}: {e.identity} ({e.profile}, {state}{tier}) "
        f"{e.action} {e.target}",
        f"  reason: {e.decision.reason}",
        f"  rule:   {e.decision.rule}",
    ]
    if e.template is not None:
        lines.append(f"  grant:  {e.template}  (for this identity: {e.grant_filter})")
    if e.decision.reason == "quarantined":
        lines.append(
            f"  while quarantined, outside control only: {', '.join(e.quarantine_grants) or 'nothing'}"
        )
    if e.control:
        where = "is in" if e.action == "publish" else "reaches into"
        lines.append(f"  note:   {where} the control namespace, where quarantine never applies")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- check


@dataclass(frozen=True, slots=True)
class PolicySummary:
    source: str
    digest: str
    profiles: tuple[Profile, ...]
    control_namespace: tuple[str, ...]
    proved_pairs: int  # (quarantine, control) filter pairs shown disjoint
    warnings: tuple[tuple[str, str], ...]  # (key path, message)
    max_denied_before_disconnect: int

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "source": self.source,
            "sha256": self.digest,
            "roles": [_profile_json(p) for p in self.profiles],
            "control_namespace": list(self.control_namespace),
            "quarantine_control_disjoint": {"proved": True, "filter_pairs": self.proved_pairs},
            "warnings": [{"path": path, "message": message} for path, message in self.warnings],
            "max_denied_before_disconnect": self.max_denied_before_disconnect,
        }


def summarize(policy: Policy) -> PolicySummary:
    """A loaded policy has passed the proof and has no lint errors; what is left to report is this."""
    return PolicySummary(
        source=policy.source,
        digest=policy.digest,
        profiles=tuple(policy.profiles()),
        control_namespace=tuple(g.template for g in policy.control_namespace),
        proved_pairs=len(quarantine_pairs(policy)),
        warnings=tuple((f.path, f.message) for f in lint_policy(policy) if f.severity == "warning"),
        max_denied_before_disconnect=policy.max_denied_before_disconnect,
    )


def _profile_json(profile: Profile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "publish": [g.template for g in profile.publish],
        "subscribe": [g.template for g in profile.subscribe],
        "share_groups": list(profile.share_groups),
        "limits": dict(_limit_items(profile.limits)),
    }


def _limit_items(limits: Limits) -> list[tuple[str, float]]:
    return [(k, v) for k in Limits.__dataclass_fields__ if (v := getattr(limits, k)) is not None]


def render_summary(s: PolicySummary) -> str:
    lines = [f"policy {s.source}: valid (sha256 {s.digest[:12]})", "roles:"]
    width = max(len(p.name) for p in s.profiles)
    for p in s.profiles:
        limits = ", ".join(f"{k}={v:g}" for k, v in _limit_items(p.limits)) or "no policy limits"
        lines.append(
            f"  {p.name:<{width}}  {len(p.publish):>2} publish  {len(p.subscribe):>2} subscribe  ({limits})"
        )
    lines.append(f"control namespace: {', '.join(s.control_namespace)}")
    lines.append(f"quarantine ∩ control = ∅ (proved over {s.proved_pairs} filter pairs)")
    lines.append(f"disconnect after {s.max_denied_before_disconnect} denied publishes/subscribes")
    if not s.warnings:
        lines.append("warnings: none")
    for path, message in s.warnings:
        lines.append(f"warning: {path}: {message}")
    return "\n".join(lines)
