"""What other nodes of a cluster tell this node's broker (gateway/broker/elsewhere.py): a connect
elsewhere ends the session here only if it is the later one ((time, node) compared) and only for the
session's own identity; the node that took over reports the takeover once; a retained message from
elsewhere is stored, not routed; share groups are left to the backbone while it balances them."""

from __future__ import annotations

from gateway.broker import SessionTakenOver
from gateway.mqtt.packets import Properties, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.access import identity_scope
from tests.broker.lab import T0, V5, V311, Lab, service_peer, unit_peer

HERE = "node-b"


def test_a_later_connect_elsewhere_takes_the_connection_over_with_0x8e_and_fires_the_will() -> None:
    lab = Lab()
    watcher = lab.connect("dispatch", peer=service_peer("dispatch"))
    watcher.subscribe("fleet/TRK-1/state", qos=1)
    unit = lab.connect("TRK-1", will=Will("fleet/TRK-1/state", b"gone", 1, False))
    taken, actions = lab.broker.connected_elsewhere(
        "TRK-1", unit.peer.identity, (T0 + 1, "node-a"), HERE, T0 + 1
    )
    lab.apply(actions)
    assert taken == unit.peer
    disconnect = unit.disconnect
    assert disconnect is not None and disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert unit.closed == "session_taken_over"
    assert watcher.payloads == [b"gone"]  # the will, as a local takeover publishes it
    assert "TRK-1" not in {s.client_id for s in lab.broker.sessions()}  # the session lives elsewhere now
    # The old node reports no takeover: the node that accepted the new connection does.
    assert not [e for e in lab.broker.drain_events() if isinstance(e, SessionTakenOver)]


def test_an_earlier_connect_elsewhere_leaves_the_later_connection_here() -> None:
    lab = Lab(now=T0 + 5)
    unit = lab.connect("TRK-1", version=V311)
    for announced in ((T0 + 4, "node-z"), (T0 + 5, "node-a")):  # earlier; same time, a lower node name
        taken, actions = lab.broker.connected_elsewhere("TRK-1", unit.peer.identity, announced, HERE, T0 + 6)
        lab.apply(actions)
        assert taken is None and unit.closed is None
    taken, actions = lab.broker.connected_elsewhere(
        "TRK-1", unit.peer.identity, (T0 + 5, "node-c"), HERE, T0 + 6
    )
    lab.apply(actions)
    assert taken == unit.peer and unit.closed == "session_taken_over"


def test_another_identitys_connect_elsewhere_changes_nothing() -> None:
    lab = Lab()
    unit = lab.connect("TRK-1")
    intruder = unit_peer("TRK-2").identity
    taken, actions = lab.broker.connected_elsewhere("TRK-1", intruder, (T0 + 1, "node-a"), HERE, T0 + 1)
    lab.apply(actions)
    assert taken is None and unit.closed is None


def test_an_offline_persistent_session_ends_when_its_client_connects_elsewhere() -> None:
    lab = Lab()
    unit = lab.connect("TRK-1", clean_start=False, properties=Properties(session_expiry_interval=3600))
    unit.subscribe("fleet/TRK-1/control/#", qos=1)
    unit.disconnect_cleanly()
    lab.pump()
    assert [s.connected for s in lab.broker.sessions() if s.client_id == "TRK-1"] == [False]
    taken, actions = lab.broker.connected_elsewhere("TRK-1", unit.peer.identity, (T0, "node-a"), HERE, T0)
    lab.apply(actions)
    assert taken is None
    assert "TRK-1" not in {s.client_id for s in lab.broker.sessions()}


def test_the_node_that_took_over_reports_it_once() -> None:
    lab = Lab()
    unit = lab.connect("TRK-1", peer=unit_peer("TRK-1", address="10.0.0.9:1"))
    lab.broker.drain_events()
    old = unit_peer("TRK-1", address="10.0.0.7:2")
    lab.broker.taken_over_elsewhere("TRK-1", old, T0)
    events = lab.broker.drain_events()
    assert events == [SessionTakenOver("TRK-1", old, unit.peer)]
    assert lab.broker.metrics.takeovers == 1


def test_a_retained_message_from_elsewhere_is_stored_not_routed_and_an_empty_one_clears_it() -> None:
    lab = Lab()
    watcher = lab.connect("dispatch", peer=service_peer("dispatch"))
    watcher.subscribe("fleet/TRK-1/state", qos=1)
    lab.apply(
        lab.broker.retained_elsewhere("fleet/TRK-1/state", b"online", 1, Properties(), None, "TRK-1", T0)
    )
    assert watcher.payloads == []  # its live copy crossed on the backbone; this is the store only
    late = lab.connect("dispatch-2", peer=service_peer("dispatch-2"), version=V5)
    late.subscribe("fleet/TRK-1/state", qos=1)
    assert late.payloads == [b"online"]
    lab.apply(lab.broker.retained_elsewhere("fleet/TRK-1/state", b"", 1, Properties(), None, "TRK-1", T0))
    assert lab.broker.metrics.retained_messages == 0
    expired = lab.broker.retained_elsewhere("fleet/TRK-1/state", b"x", 1, Properties(), T0 - 1, "TRK-1", T0)
    lab.apply(expired)
    assert lab.broker.metrics.retained_messages == 0  # already expired: not stored


def test_share_groups_are_left_to_the_backbone_while_it_balances_them() -> None:
    lab = Lab()
    member = lab.connect("dispatch", peer=service_peer("dispatch"))
    member.subscribe("$share/g/fleet/+/telemetry/#", qos=1)
    direct = lab.connect("ops", peer=service_peer("ops"))
    direct.subscribe("fleet/+/telemetry/#", qos=1)
    unit = lab.connect("TRK-1")
    balancing = [True]
    lab.broker.cluster.groups_elsewhere = lambda: balancing[0]
    unit.publish("fleet/TRK-1/telemetry/gps", b"1", qos=1)
    lab.pump()
    assert member.payloads == [] and direct.payloads == [b"1"]
    # NATS picked this node for the group: one member here gets it.
    message = ("fleet/TRK-1/telemetry/gps", b"1", 1, False, Properties(), "TRK-1")
    scope = identity_scope(member.peer)
    lab.apply(lab.broker.route_to_group(message, (scope, "g", "fleet/+/telemetry/#"), T0))
    assert member.payloads == [b"1"]
    balancing[0] = False  # the backbone is down: groups are served here again
    member.clear()
    unit.publish("fleet/TRK-1/telemetry/gps", b"2", qos=1)
    lab.pump()
    assert member.payloads == [b"2"]
