"""A persistent session another node held, resumed here from the cluster's record
(gateway/broker/resume_elsewhere.py), and the records this node gives the cluster: the decisions
without sockets. The cluster-wide behaviour over real NATS and paho is in
tests/cluster/test_cluster_sessions.py."""

from __future__ import annotations

from gateway.broker.records import SessionRecord, SubscriptionRecord, identity_to_text
from gateway.mqtt.packets import Properties, Subscription
from tests.broker.lab import T0, V311, Lab, unit_peer
from tests.broker.test_broker_policy import ScriptedPolicy

KEEP = Properties(session_expiry_interval=3600)


def _record(unit: str, *filters: str, identity: str | None = None, left: float | None = T0) -> SessionRecord:
    owner = identity_to_text(unit_peer(unit).identity) if identity is None else identity
    subs = tuple(SubscriptionRecord(Subscription(f, 1), None) for f in filters)
    return SessionRecord(unit, owner, 3600, left, subs)


def _lab(records: dict[str, SessionRecord], policy: ScriptedPolicy | None = None) -> tuple[Lab, list[object]]:
    lab = Lab(policy)
    told: list[object] = []
    lab.broker.cluster.session_elsewhere = records.get
    lab.broker.cluster.session_recorded = lambda client_id, record: told.append((client_id, record))
    return lab, told


def test_a_clean_start_0_resumes_the_record_with_its_subscriptions() -> None:
    lab, told = _lab({"TRK-1": _record("TRK-1", "fleet/TRK-1/cmd/#")})
    unit = lab.connect("TRK-1", clean_start=False, properties=KEEP)
    assert unit.connack.session_present
    sender = lab.connect("TRK-2")
    sender.publish("fleet/TRK-1/cmd/go", b"go", qos=1)
    lab.pump()
    assert unit.payloads == [b"go"]  # subscribed without a SUBSCRIBE
    client_id, record = told[-1]  # type: ignore[misc]
    assert client_id == "TRK-1" and isinstance(record, SessionRecord)
    assert [s.options.topic_filter for s in record.subscriptions] == ["fleet/TRK-1/cmd/#"]


def test_3_1_1_clean_session_0_resumes_it_too() -> None:
    lab, _ = _lab({"TRK-1": _record("TRK-1", "fleet/TRK-1/cmd/#")})
    unit = lab.connect("TRK-1", version=V311, clean_start=False)
    assert unit.connack.session_present


def test_another_identitys_or_an_expired_record_is_no_session() -> None:
    other = identity_to_text(unit_peer("TRK-9").identity)
    for record in (_record("TRK-1", "fleet/#", identity=other), _record("TRK-1", "fleet/#", left=T0 - 3601)):
        lab, _ = _lab({"TRK-1": record})
        unit = lab.connect("TRK-1", clean_start=False, properties=KEEP)
        assert not unit.connack.session_present


def test_a_subscription_the_policy_denies_now_is_not_restored() -> None:
    policy = ScriptedPolicy()
    policy.subscribe_denied = lambda who, topic_filter: "diag" in topic_filter
    lab, _ = _lab({"TRK-1": _record("TRK-1", "fleet/TRK-1/cmd/#", "fleet/TRK-1/diag/#")}, policy)
    unit = lab.connect("TRK-1", clean_start=False, properties=KEEP)
    assert unit.connack.session_present
    sender = lab.connect("TRK-2")
    sender.publish("fleet/TRK-1/diag/x", b"diag", qos=1)
    sender.publish("fleet/TRK-1/cmd/x", b"cmd", qos=1)
    lab.pump()
    assert unit.payloads == [b"cmd"]


def test_a_clean_start_ends_the_record_and_a_move_elsewhere_leaves_it_to_the_new_node() -> None:
    lab, told = _lab({"TRK-1": _record("TRK-1", "fleet/TRK-1/cmd/#")})
    unit = lab.connect("TRK-1", properties=KEEP)  # clean start: the session elsewhere ends
    assert not unit.connack.session_present
    assert told[0] == ("TRK-1", None)
    told.clear()
    taken, actions = lab.broker.connected_elsewhere(
        "TRK-1", unit.peer.identity, (T0 + 1, "node-a"), "node-b", T0 + 1
    )
    lab.apply(actions)
    assert taken == unit.peer and told == []  # the new node writes the record, not this one
