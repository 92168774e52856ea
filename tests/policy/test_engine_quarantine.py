"""Quarantine never touches vehicle control: the proof, checked against the engine on random policies.

Policies are drawn from a small alphabet of levels so that overlaps are common and interesting. For
each one, `prove_quarantine_disjoint` either names overlaps (and loading refuses the policy) or says the
two are disjoint; in the disjoint case, for control topics of the unit itself and of another unit:

- the engine's publish decision for a quarantined unit equals the decision for the same unit not
  quarantined (same verdict, reason and rule), and
- no quarantine grant, filled in for the unit, matches any control topic (the proof is sound for the
  concrete topics, not only for the wildcarded filters it reasons about).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from gateway.policy.decision import Decision
from gateway.policy.directory import IdentityState, InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.grants import CompiledGrants
from gateway.policy.peer import Peer
from gateway.policy.rules import (
    Grant,
    Policy,
    Profile,
    policy_from_mapping,
    prove_quarantine_disjoint,
)
from gateway.policy.schema import PolicyError
from pki.names import Identity

UNIT = Identity("unit", "TRK-1", "fleet.local")
OTHER_UNIT_ID = "TRK-2"
LEVEL = st.sampled_from(["telemetry", "diag", "control", "cmd", "ack", "+"])
FILL = st.sampled_from(["telemetry", "diag", "control", "cmd", "ack", "brake", "x"])


def _template(head: list[str], tail: list[str], multi: bool) -> str:
    return "/".join([*head, *tail, *(["#"] if multi else [])])


unit_filters = st.builds(_template, st.just(["fleet", "{id}"]), st.lists(LEVEL, max_size=3), st.booleans())
control_filters = st.builds(
    _template,
    st.sampled_from([["fleet", "{unit}"], ["fleet", "+"]]),
    st.lists(LEVEL, max_size=2),
    st.booleans(),
)


@st.composite
def narrowed(draw: st.DrawFn, granted: list[str]) -> str:
    """A filter within one of the normal grants: the grant itself, or a '#' grant made deeper."""
    base = draw(st.sampled_from(granted))
    if base.endswith("/#") and draw(st.booleans()):
        return _template([base[:-2]], draw(st.lists(LEVEL, min_size=1, max_size=2)), draw(st.booleans()))
    return base


@st.composite
def policies(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    unit_publish = draw(st.lists(unit_filters, min_size=1, max_size=4, unique=True))
    quarantine = draw(st.lists(narrowed(unit_publish), max_size=3, unique=True))
    data = {
        "version": 1,
        "control_namespace": draw(st.lists(control_filters, min_size=1, max_size=2, unique=True)),
        "roles": {"unit": {"publish": unit_publish}},
    }
    return data, quarantine


def _with_quarantine(data: dict[str, Any], quarantine: list[str]) -> Policy:
    """The policy without its proof run, so the test can ask the prover itself."""
    policy = policy_from_mapping(data, "random.yaml")
    grants = tuple(
        Grant(f"quarantine/unit/publish/{i}", t, f"quarantine.unit.publish[{i}]")
        for i, t in enumerate(quarantine)
    )
    return replace(policy, quarantine={"unit": Profile("quarantine/unit", "quarantine.unit", publish=grants)})


def _fill(template: str, unit_id: str, levels: list[str]) -> str:
    """A concrete topic the control template matches, for the given unit."""
    out, extra = [], iter(levels)
    for level in template.split("/"):
        if level == "{unit}":
            out.append(unit_id)
        elif level == "+":
            out.append(next(extra, "x"))
        elif level == "#":
            out.extend(extra)
        else:
            out.append(level)
    return "/".join(out)


def _decide(policy: Policy, quarantined: bool, topic: str) -> Decision:
    directory = InMemoryDirectory()
    directory.put(UNIT, IdentityState("enrolled", quarantined=quarantined))
    return PolicyEngine(policy, directory).decide_publish(Peer("t", UNIT), topic, 1, 0, False, 0.0)


@settings(max_examples=300, deadline=None)
@given(policies(), st.lists(st.lists(FILL, max_size=3), min_size=1, max_size=4))
def test_quarantine_never_changes_a_control_decision(
    drawn: tuple[dict[str, Any], list[str]], fillings: list[list[str]]
) -> None:
    data, quarantine = drawn
    policy = _with_quarantine(data, quarantine)
    overlaps = prove_quarantine_disjoint(policy)
    note(f"control={data['control_namespace']} quarantine={quarantine} overlaps={len(overlaps)}")
    loaded: Policy | None
    try:
        loaded = policy_from_mapping({**data, "quarantine": {"unit": {"publish": quarantine}}}, "random.yaml")
    except PolicyError as error:
        assert overlaps, f"refused without an overlap: {error}"
        assert "overlaps control filter" in error.problem
        event("refused: overlap")
        return
    assert not overlaps  # loading and the prover agree
    event(f"disjoint, {len(quarantine)} quarantine filters")
    compiled = CompiledGrants.for_identity(loaded, UNIT, None, True)
    assert compiled.quarantine is not None
    for template in data["control_namespace"]:
        for unit_id in (UNIT.id, OTHER_UNIT_ID):
            for levels in fillings:
                topic = _fill(template, unit_id, levels)
                assert compiled.in_control_namespace(topic)
                assert compiled.quarantine.match(topic) is None, (topic, quarantine)
                assert _decide(loaded, True, topic) == _decide(loaded, False, topic), topic
