"""`$share` groups are scoped: naming another identity's group never takes its messages away.

The real engine and the shipped policy. Finding: an auditor joining
`$share/dispatch-workers/fleet/+/telemetry/#` used to divert half of dispatch's messages. Now each
identity's groups are its own unless the policy's profile lists the group in `share_groups`; then
identities of that one profile (here: ops operators) share it, and only they.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.broker import InMemoryStore
from gateway.mqtt.packets import Properties
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.policy.rules import policy_from_mapping
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import TRUST_DOMAIN, Lab, Link, lab_peer, service_peer, unit_peer

SHARED = "$share/dispatch-workers/fleet/+/telemetry/#"
GPS = "fleet/TRK-1/telemetry/gps"
EMBEDDED = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"


def operator(name: str) -> Peer:
    return Peer(f"10.0.2.{len(name)}:1", Identity("operator", name, TRUST_DOMAIN), certificate_serial=7)


def lab_with(share_groups_for_ops: list[str] | None = None) -> Lab:
    return engine_and_lab(share_groups_for_ops)[1]


def engine_and_lab(share_groups_for_ops: list[str] | None = None) -> tuple[PolicyEngine, Lab]:
    directory = InMemoryDirectory()
    directory.enroll(Identity("unit", "TRK-1", TRUST_DOMAIN))
    directory.enroll(Identity("service", "dispatch", TRUST_DOMAIN))
    for name, role in (("bob", "auditor"), ("olga", "ops"), ("oscar", "ops"), ("sam", "security")):
        directory.enroll(Identity("operator", name, TRUST_DOMAIN), role=role)
    policy = load_policy(None)
    if share_groups_for_ops is not None:
        raw = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
        raw["roles"]["operator"]["ops"]["share_groups"] = share_groups_for_ops
        policy = policy_from_mapping(raw, "test-policy.yaml")
    engine = PolicyEngine(policy, directory)
    return engine, Lab(engine)


def publish_ten(lab: Lab) -> None:
    unit = lab.connect("TRK-1", peer=unit_peer("TRK-1"))
    for i in range(10):
        unit.publish(GPS, str(i).encode(), qos=1)


def got(link: Link) -> int:
    return len(link.payloads)


def test_an_auditor_naming_dispatchs_group_diverts_nothing() -> None:
    lab = lab_with()
    dispatch = lab.connect("dispatch", peer=service_peer("dispatch"))
    bob = lab.connect("bob", peer=operator("bob"))
    assert dispatch.subscribe(SHARED, qos=1).reason_codes == (1,)
    assert bob.subscribe(SHARED, qos=1).reason_codes == (1,)  # granted: auditors read telemetry
    publish_ten(lab)
    assert got(dispatch) == 10  # every one of its messages
    assert got(bob) == 10  # bob's own group of one: a copy, taken from no one


def test_a_group_the_policy_names_is_shared_within_that_profile_only() -> None:
    lab = lab_with(["dispatch-workers"])
    olga, oscar = (lab.connect(n, peer=operator(n)) for n in ("olga", "oscar"))
    sam = lab.connect("sam", peer=operator("sam"))  # security: another profile, its own group
    dispatch = lab.connect("dispatch", peer=service_peer("dispatch"))
    for link in (olga, oscar, sam, dispatch):
        assert link.subscribe(SHARED, qos=1).reason_codes == (1,)
    publish_ten(lab)
    assert (got(olga), got(oscar)) == (5, 5)  # the ops operators share the group between them
    assert (got(sam), got(dispatch)) == (10, 10)


def test_a_policy_reload_moves_live_members_to_their_new_groups() -> None:
    engine, lab = engine_and_lab()  # no share_groups: olga and oscar each have a group of their own
    olga, oscar = (lab.connect(n, peer=operator(n)) for n in ("olga", "oscar"))
    for link in (olga, oscar):
        link.subscribe(SHARED, qos=1)
    publish_ten(lab)
    assert (got(olga), got(oscar)) == (10, 10)
    raw = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
    raw["roles"]["operator"]["ops"]["share_groups"] = ["dispatch-workers"]
    engine.reload(policy_from_mapping(raw, "reloaded.yaml"))
    lab.apply(lab.broker.reauthorize(lab.now))
    for link in (olga, oscar):
        link.clear()
    publish_ten(lab)
    assert (got(olga), got(oscar)) == (5, 5)


def test_engine_scopes() -> None:
    engine, _ = engine_and_lab(["dispatch-workers"])
    assert engine.share_scope(operator("olga"), "dispatch-workers") == "profile/operator/ops"
    assert engine.share_scope(operator("olga"), "other") == "identity/operator/olga"
    assert engine.share_scope(operator("bob"), "dispatch-workers") == "identity/operator/bob"
    assert engine.share_scope(service_peer("dispatch"), "dispatch-workers") == "identity/service/dispatch"
    assert engine.share_scope(Peer("127.0.0.1:1", None), "dispatch-workers") == "lab"


def test_restored_members_are_in_the_same_groups_as_live_ones() -> None:
    store = InMemoryStore()
    keep = Properties(session_expiry_interval=600)
    lab = Lab(store=store)
    for name in ("lab-w1", "lab-w2"):
        lab.connect(name, clean_start=False, properties=keep, peer=lab_peer()).subscribe(
            "$share/g/jobs/#", qos=1
        )
    restarted = Lab(store=store, now=lab.now + 1)  # the sessions come back from the store, offline
    w3 = restarted.connect("lab-w3", peer=lab_peer())
    w3.subscribe("$share/g/jobs/#", qos=1)
    publisher = restarted.connect("lab-p", peer=lab_peer())
    for i in range(6):
        publisher.publish(f"jobs/{i}", b"x", qos=1)
    back = [
        restarted.connect(n, clean_start=False, properties=keep, peer=lab_peer())
        for n in ("lab-w1", "lab-w2")
    ]
    assert got(w3) + sum(got(b) for b in back) == 6  # one group: each job delivered once
