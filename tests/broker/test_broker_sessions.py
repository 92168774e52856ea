"""Persistent sessions, flow control, wills, expiry, and surviving a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import BrokerLimits, BrokerStore, InMemoryStore
from gateway.mqtt.client import MqttClient
from gateway.mqtt.packets import Properties, ProtocolVersion, Puback, Subscription, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.stores.broker_store import SqliteBrokerStore
from pki.sqlite import open_database
from tests.broker.lab import V5, V311, VERSIONS, Lab, lab_peer, service_peer, unit_peer

KEEP = Properties(session_expiry_interval=3600)


def persistent(version: ProtocolVersion) -> dict[str, Any]:
    """Connect arguments for a session that outlives its connection, in either protocol version."""
    return {"version": version, "clean_start": False, "properties": KEEP if version == V5 else Properties()}


@pytest.mark.parametrize("version", VERSIONS)
def test_messages_published_while_offline_are_delivered_on_resume(version: ProtocolVersion) -> None:
    lab = Lab()
    sub = lab.connect("ops-1", **persistent(version))
    sub.subscribe("fleet/+/telemetry/#", qos=1)
    sub.disconnect_cleanly()
    pub = lab.connect("TRK-1")
    for i in range(3):
        pub.publish("fleet/TRK-1/telemetry/gps", f"fix-{i}".encode(), qos=1)
    pub.publish("fleet/TRK-1/telemetry/gps", b"qos0", qos=0)  # may be queued too (it is, in memory)
    back = lab.connect("ops-1", **persistent(version))
    assert back.connack.session_present
    assert back.payloads == [b"fix-0", b"fix-1", b"fix-2", b"qos0"]
    pub.publish("fleet/TRK-1/telemetry/gps", b"live", qos=1)  # the subscription survived too
    assert back.payloads[-1] == b"live"


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_start_discards_the_session(version: ProtocolVersion) -> None:
    lab = Lab()
    sub = lab.connect("ops-1", **persistent(version))
    sub.subscribe("a/#", qos=1)
    sub.lose()
    lab.connect("TRK-1").publish("a/1", b"x", qos=1)
    fresh = lab.connect("ops-1", version=version, clean_start=True)
    assert not fresh.connack.session_present and fresh.messages == []
    assert lab.broker.metrics.sessions_discarded["clean_start"] == 1


def test_session_expires() -> None:
    lab = Lab()
    sub = lab.connect("ops-1", clean_start=False, properties=Properties(session_expiry_interval=60))
    sub.subscribe("a/#", qos=1)
    sub.lose()
    lab.advance(59)
    assert [s.client_id for s in lab.broker.sessions()] == ["ops-1"]
    lab.advance(2)
    assert lab.broker.sessions() == []
    back = lab.connect("ops-1", clean_start=False, properties=Properties(session_expiry_interval=60))
    assert not back.connack.session_present


def test_a_different_identity_never_inherits_a_session() -> None:
    lab = Lab()
    owner = lab.connect("TRK-1", clean_start=False, properties=KEEP, peer=unit_peer("TRK-1"))
    owner.subscribe("fleet/TRK-1/cmd/#", qos=1)
    owner.lose()
    lab.connect("ops").publish("fleet/TRK-1/cmd/reboot", b"secret", qos=1)
    # A lab client (no certificate) may not even ask: its ids start with "lab-".
    intruder = lab.connect("TRK-1", clean_start=False, properties=KEEP, peer=lab_peer())
    assert intruder.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    assert not intruder.connack.session_present and intruder.messages == []
    # Another identity asks for the session: refused, and the session stays its owner's.
    svc = lab.connect("TRK-1", clean_start=False, properties=KEEP, peer=service_peer("TRK-1"))
    assert svc.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID and svc.messages == []
    back = lab.connect("TRK-1", clean_start=False, properties=KEEP, peer=unit_peer("TRK-1"))
    assert back.connack.session_present
    assert [m.payload for m in back.messages] == [b"secret"]


def test_the_same_identity_from_a_new_address_resumes() -> None:
    lab = Lab()
    first = lab.connect(
        "TRK-1", clean_start=False, properties=KEEP, peer=unit_peer("TRK-1", address="1.1.1.1:1")
    )
    first.lose()
    again = lab.connect("TRK-1", clean_start=False, properties=KEEP, peer=unit_peer("TRK-1", serial=2))
    assert again.connack.session_present  # a renewed certificate is still the same identity


@pytest.mark.parametrize("version", VERSIONS)
def test_queue_limit_drops_oldest_qos0_first(version: ProtocolVersion) -> None:
    lab = Lab(limits=BrokerLimits(max_queued_messages=3))
    sub = lab.connect("ops-1", **persistent(version))
    sub.subscribe("a/#", qos=1)
    sub.lose()
    pub = lab.connect("TRK-1")
    pub.publish("a/1", b"q0-old", qos=0)
    pub.publish("a/1", b"q1-a", qos=1)
    pub.publish("a/1", b"q1-b", qos=1)
    pub.publish("a/1", b"q1-c", qos=1)  # evicts q0-old
    pub.publish("a/1", b"q1-d", qos=1)  # nothing left to evict: refused
    drops = lab.broker.metrics.drops
    assert (drops["queue_full_qos0"], drops["queue_full_qos1"]) == (1, 1)
    back = lab.connect("ops-1", **persistent(version))
    assert back.payloads == [b"q1-a", b"q1-b", b"q1-c"]


def test_in_flight_window_is_respected() -> None:
    lab = Lab(limits=BrokerLimits(max_inflight=10))
    sub = lab.connect("ops-1", auto_ack=False, properties=Properties(receive_maximum=3))
    sub.subscribe("a/#", qos=1)
    pub = lab.connect("TRK-1")
    for i in range(8):
        pub.publish("a/1", str(i).encode(), qos=1)
    assert sub.payloads == [b"0", b"1", b"2"]  # the client's receive maximum, not ours
    info = {s.client_id: s for s in lab.broker.sessions()}["ops-1"]
    assert (info.inflight, info.queued) == (3, 5)
    sub.client.ack(sub.messages[0])
    lab.pump()
    assert sub.payloads[-1] == b"3" and len(sub.messages) == 4
    for m in sub.messages[1:]:
        sub.client.ack(m)
    lab.pump()
    for m in sub.messages[4:]:
        sub.client.ack(m)
    lab.pump()
    assert sub.payloads == [str(i).encode() for i in range(8)]


def test_unacked_messages_are_resent_with_dup_on_resume() -> None:
    lab = Lab()
    sub = lab.connect("ops-1", clean_start=False, properties=KEEP, auto_ack=False)
    sub.subscribe("a/#", qos=2)
    pub = lab.connect("TRK-1")
    pub.publish("a/1", b"one", qos=1)
    pub.publish("a/2", b"two", qos=2)
    one, two = sub.messages
    sub.client.ack(two)  # PUBREC: the broker sends PUBREL and waits for PUBCOMP...
    sub.flush_once()
    sub.drop_output()  # ...which is lost with the connection
    sub.lose()
    back = lab.connect("ops-1", clean_start=False, properties=KEEP, auto_ack=False)
    (again,) = back.messages
    assert (again.payload, again.dup, again.packet_id) == (b"one", True, one.packet_id)
    assert two.packet_id is not None
    assert back.received.endswith(bytes((0x62, 2, 0, two.packet_id)))  # PUBREL resent


def test_will_published_on_abnormal_loss_not_on_normal_disconnect() -> None:
    for version in VERSIONS:
        lab = Lab()
        ops = lab.connect("ops-1")
        ops.subscribe("fleet/+/state")
        will = Will("fleet/TRK-1/state", b"offline", qos=1, retain=True)
        unit = lab.connect("TRK-1", version=version, will=will)
        unit.disconnect_cleanly()
        assert ops.messages == []
        unit = lab.connect("TRK-1", version=version, will=will)
        unit.lose()
        assert ops.payloads == [b"offline"]
        assert lab.broker.metrics.wills_published == 1
        late = lab.connect("ops-2")
        late.subscribe("fleet/+/state")
        assert late.messages[0].retain  # the will was retained


def test_disconnect_with_will_message_0x04_publishes_the_will() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    unit = lab.connect("TRK-1", will=Will("fleet/TRK-1/state", b"bye"))
    unit.disconnect_cleanly(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
    assert ops.payloads == [b"bye"]


def test_will_delay_is_cancelled_by_a_timely_reconnect() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    will = Will("fleet/TRK-1/state", b"offline", properties=Properties(will_delay_interval=30))
    unit = lab.connect("TRK-1", will=will, clean_start=False, properties=KEEP)
    unit.lose()
    lab.advance(20)
    lab.connect("TRK-1", will=will, clean_start=False, properties=KEEP)
    lab.advance(60)
    assert ops.messages == []


def test_will_delay_fires_when_nobody_comes_back() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    will = Will("fleet/TRK-1/state", b"offline", properties=Properties(will_delay_interval=30))
    unit = lab.connect("TRK-1", will=will, clean_start=False, properties=KEEP)
    unit.lose()
    lab.advance(29)
    assert ops.messages == []
    lab.advance(2)
    assert ops.payloads == [b"offline"]


def test_will_fires_early_when_the_session_ends_first() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    will = Will("fleet/TRK-1/state", b"offline", properties=Properties(will_delay_interval=300))
    unit = lab.connect(
        "TRK-1", will=will, clean_start=False, properties=Properties(session_expiry_interval=10)
    )
    unit.lose()
    lab.advance(11)
    assert ops.payloads == [b"offline"]


def test_the_will_goes_exactly_when_the_session_ends_if_that_is_before_its_delay() -> None:
    """§3.1.3.2.2: the will is published when the delay passes or the session ends, whichever is first."""
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    will = Will("fleet/TRK-1/state", b"offline", properties=Properties(will_delay_interval=300))
    unit = lab.connect(
        "TRK-1", will=will, clean_start=False, properties=Properties(session_expiry_interval=10)
    )
    unit.lose()
    lab.advance(9.9)
    assert ops.messages == []
    lab.advance(0.1)
    assert ops.payloads == [b"offline"]
    lab.advance(600)
    assert ops.payloads == [b"offline"]  # once


def test_a_disconnect_that_shortens_the_session_brings_the_will_forward() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    will = Will("fleet/TRK-1/state", b"offline", properties=Properties(will_delay_interval=300))
    unit = lab.connect("TRK-1", will=will, clean_start=False, properties=KEEP)
    unit.disconnect_cleanly(
        ReasonCode.DISCONNECT_WITH_WILL_MESSAGE, properties=Properties(session_expiry_interval=5)
    )
    lab.advance(4.9)
    assert ops.messages == []
    lab.advance(0.2)
    assert ops.payloads == [b"offline"]


def test_takeover_that_continues_the_session_keeps_a_delayed_will_pending() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    delayed = Will("fleet/TRK-1/state", b"offline", properties=Properties(will_delay_interval=30))
    lab.connect("TRK-1", will=delayed, clean_start=False, properties=KEEP)
    lab.connect("TRK-1", clean_start=False, properties=KEEP)  # continues: no will (§3.1.3.2.2)
    lab.advance(60)
    assert ops.messages == []
    lab.connect("TRK-1", will=delayed, clean_start=False, properties=KEEP)
    lab.connect("TRK-1", clean_start=True)  # clean start ends the session: the will goes now
    assert ops.payloads == [b"offline"]


def test_takeover_with_no_will_delay_publishes_the_old_will() -> None:
    lab = Lab()
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    lab.connect("TRK-1", version=V311, will=Will("fleet/TRK-1/state", b"offline"))
    lab.connect("TRK-1", version=V311)
    assert ops.payloads == [b"offline"]


def _sqlite_store(tmp_path: Path) -> SqliteBrokerStore:
    return SqliteBrokerStore(open_database(tmp_path / "gateway.db"))


STORES: dict[str, Callable[[Path], BrokerStore]] = {
    "memory": lambda tmp_path: InMemoryStore(),
    "sqlite": _sqlite_store,
}


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("version", VERSIONS)
def test_nothing_acknowledged_is_lost_across_a_restart(
    tmp_path: Path, kind: str, version: ProtocolVersion
) -> None:
    store: BrokerStore = STORES[kind](tmp_path)
    lab = Lab(store=store)
    sub = lab.connect("ops-1", auto_ack=False, **persistent(version))
    sub.subscribe(Subscription("fleet/#", qos=2), Subscription("cmd/#", qos=1))
    pub = lab.connect("TRK-1", clean_start=False, properties=KEEP)
    pub.publish("fleet/TRK-1/a", b"in-flight", qos=1)  # sent, not acked
    sub.lose()
    pub.publish("fleet/TRK-1/b", b"queued-1", qos=1)
    pub.publish("fleet/TRK-1/c", b"queued-2", qos=2, properties=Properties(content_type="text/plain"))
    pub.publish("fleet/TRK-1/state", b"retained", qos=1, retain=True)
    qos2_id = pub.client.publish("fleet/TRK-1/d", b"qos2-in", qos=2)
    pub.flush_once()  # PUBREC received...
    pub.drop_output()  # ...and the PUBREL never makes it before the gateway stops
    assert qos2_id is not None and qos2_id in pub.client.released
    assert all(d.reason_code == 0 for d in pub.done)

    if kind == "sqlite":
        store = _sqlite_store(tmp_path)  # a fresh connection: only what was committed
    lab2 = Lab(store=store, now=lab.now + 5)
    back = lab2.connect("ops-1", auto_ack=True, **persistent(version))
    assert back.connack.session_present
    assert back.payloads == [b"in-flight", b"queued-1", b"queued-2", b"retained", b"qos2-in"]
    assert back.messages[0].dup
    if version == V5:
        assert back.messages[2].properties.content_type == "text/plain"
    late = lab2.connect("ops-2")
    late.subscribe("fleet/+/state")
    assert late.payloads == [b"retained"]
    # The publisher's QoS 2 flow continues after the restart: its PUBREL finds the id (PUBCOMP 0x00).
    unit = lab2.connect("TRK-1", clean_start=False, properties=KEEP)
    assert unit.connack.session_present
    unit.client.pending[qos2_id] = pub.client.pending[qos2_id]
    unit.client.released.add(qos2_id)
    unit.client.resend_pending()
    lab2.pump()
    assert [(d.packet_id, d.reason_code) for d in unit.done] == [(qos2_id, 0)]
    assert back.payloads.count(b"qos2-in") == 1
    # And the subscriber's acks emptied the store of its messages.
    lab3 = Lab(store=STORES[kind](tmp_path) if kind == "sqlite" else store, now=lab2.now + 1)
    again = lab3.connect("ops-1", **persistent(version))
    assert again.connack.session_present and again.messages == []


def test_group_commit_one_commit_per_receive_and_acks_only_after_it() -> None:
    store = InMemoryStore()
    lab = Lab(store=store)
    sub = lab.connect("ops-1", clean_start=False, properties=KEEP)
    sub.subscribe("a/#", qos=1)
    sub.lose()
    pub = lab.connect("TRK-1")
    before = store.commits
    for i in range(20):
        pub.client.publish("a/1", str(i).encode(), qos=1)
    lab.pump()  # the 20 PUBLISHes arrive in one read
    assert store.commits == before + 1
    assert len(pub.done) == 20
    assert len(store.deliveries["ops-1"]) == 20


class FailingStore(InMemoryStore):
    fail = False

    def commit(self) -> None:
        if self.fail:
            raise OSError("disk full")
        super().commit()


def test_no_ack_when_the_store_cannot_commit() -> None:
    store = FailingStore()
    lab = Lab(store=store)
    sub = lab.connect("ops-1", clean_start=False, properties=KEEP)
    sub.subscribe("a/#", qos=1)
    sub.lose()
    pub = lab.connect("TRK-1")
    store.fail = True
    pub.publish("a/1", b"x", qos=1)
    assert pub.done == [] and pub.closed == "store_error"
    assert lab.broker.metrics.store_errors == 1


def test_clean_sessions_and_qos0_never_touch_the_store() -> None:
    store = InMemoryStore()
    lab = Lab(store=store)
    sub = lab.connect("ops-1")
    sub.subscribe("a/#", qos=1)
    pub = lab.connect("TRK-1")
    pub.publish("a/1", b"x", qos=1)
    pub.publish("a/1", b"y", qos=0)
    assert store.commits == 0 and not store.sessions


def test_puback_for_unknown_id_is_ignored() -> None:
    lab = Lab()
    link = lab.connect("ops-1")
    link.client.send_packet(Puback(999))
    lab.pump()
    assert link.closed is None


def test_shutdown_tells_5_0_clients_and_keeps_sessions_for_the_restart() -> None:
    store = InMemoryStore()
    lab = Lab(store=store)
    ops = lab.connect("ops-1")
    ops.subscribe("fleet/#")
    v5 = lab.connect("TRK-1", clean_start=False, properties=KEEP, will=Will("fleet/TRK-1/state", b"x"))
    v3 = lab.connect("TRK-2", version=V311, clean_start=False)
    waiting = lab.open(MqttClient("TRK-3"), unit_peer("TRK-3"))
    lab.apply(lab.broker.shutdown(lab.now))
    assert {link.closed for link in (ops, v5, v3, waiting)} == {"server_shutdown"}
    assert v5.disconnect is not None and v5.disconnect.reason_code == ReasonCode.SERVER_SHUTTING_DOWN
    assert v3.disconnect is None and ops.messages == []  # no wills on a shutdown
    assert {cid: r.disconnected_at for cid, r in store.sessions.items()} == {
        "TRK-1": lab.now,
        "TRK-2": lab.now,
    }


def test_deferred_commit_waits_for_flush_store() -> None:
    from gateway.broker import Broker
    from gateway.policy.access import CertificateOnlyPolicy

    store = InMemoryStore()
    broker = Broker(CertificateOnlyPolicy(), store=store, defer_commit=True)
    client = MqttClient("TRK-1", clean_start=False, properties=KEEP)
    conn = broker.open(unit_peer("TRK-1"), 0.0)
    client.connect()
    broker.receive(conn, client.data_to_send(), 0.0)
    assert store.pending and store.commits == 0
    broker.flush_store()
    assert not store.pending and store.commits == 1 and "TRK-1" in store.sessions


def test_sessions_view_for_the_admin_api() -> None:
    lab = Lab()
    sub = lab.connect("ops-1", clean_start=False, properties=KEEP, auto_ack=False)
    sub.subscribe("a/#", "b", qos=1)
    lab.connect("TRK-1").publish("a/1", b"x", qos=1)
    info = {s.client_id: s for s in lab.broker.sessions()}["ops-1"]
    assert (info.connected, info.subscriptions, info.inflight, info.queued) == (True, ("a/#", "b"), 1, 0)
    assert info.peer is not None and info.since == lab.now and info.expiry_interval == 3600
    sub.lose()
    lab.advance(5)
    info = {s.client_id: s for s in lab.broker.sessions()}["ops-1"]
    assert not info.connected and info.since == lab.now - 5
    metrics = lab.broker.metrics
    assert (metrics.sessions, metrics.connected) == (2, 1)


def test_next_deadline_follows_keep_alive_and_expiry() -> None:
    lab = Lab()
    link = lab.connect(
        "TRK-1", keep_alive=10, clean_start=False, properties=Properties(session_expiry_interval=100)
    )
    assert lab.broker.next_deadline() == lab.now + 15
    lab.now += 12
    link.client.ping()
    lab.pump()
    lab.advance(3.5)  # the old deadline passes; the timer re-arms from the ping
    assert link.closed is None and lab.broker.next_deadline() == lab.now - 3.5 + 15
    link.lose()
    assert lab.broker.next_deadline() == lab.now + 100
