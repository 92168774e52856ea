"""Flow control and queue bounds, back to back: a subscriber that falls behind holds back the publishers
that feed it (their acknowledgements are withheld), nobody else; acknowledged messages are never dropped
below the bound; past it the policy is explicit and counted; persistent queues live in the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import (
    BrokerLimits,
    BrokerStore,
    InMemoryStore,
    PauseReading,
    QueueOverflow,
    ResumeReading,
)
from gateway.mqtt.packets import Properties, ProtocolVersion, Publish
from gateway.stores.broker_store import SqliteBrokerStore
from pki.sqlite import open_database
from tests.broker.lab import V5, V311, Lab, Link, lab_peer

# Small numbers so that every state is reached by hand: 2 in flight, holding at 4 queued, released at 2.
LIMITS = BrokerLimits(max_inflight=2, queue_high_water=4, receive_maximum=10, subscriber_stall_timeout=30)
KEEP = Properties(session_expiry_interval=3600)


def telemetry(unit: str, n: int) -> bytes:
    return f"{unit}:{n}".encode()


def publish_many(link: Link, count: int, start: int = 0, qos: int = 1) -> None:
    """Send `count` telemetry messages in one go (one read for the broker), then settle. A 5.0 client
    must not send more than the Receive Maximum unacknowledged: for more, call again once acked."""
    unit = link.client.client_id
    for n in range(start, start + count):
        link.client.publish(f"fleet/{unit}/telemetry/gps", telemetry(unit, n), qos=qos)
    link.lab.pump()


def publish_acked(link: Link, count: int, window: int = 10) -> None:
    """`count` messages, a window at a time, each window acknowledged before the next is sent."""
    for start in range(0, count, window):
        publish_many(link, min(window, count - start), start)
        assert not link.client.pending, "held back"


def drain(lab: Lab, sub: Link, rounds: int = 1000) -> list[bytes]:
    """Acknowledge what the subscriber got, one message at a time (a slow reader), until nothing more
    arrives; returns every payload it received, in order."""
    for seen in range(rounds):
        messages = sub.messages
        if seen == len(messages):
            return sub.payloads
        sub.client.ack(messages[seen])
        lab.pump()
    raise AssertionError("the subscriber never caught up")


def acked(link: Link) -> int:
    return sum(1 for done in link.done if done.reason_code == 0)


def slow_subscriber(lab: Lab, **kw: Any) -> Link:
    sub = lab.connect("analytics", auto_ack=False, **kw)
    sub.subscribe("fleet/+/telemetry/#", qos=1)
    return sub


def test_a_slow_subscriber_holds_back_its_publishers_and_loses_nothing() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)
    units = [lab.connect(f"TRK-{i}") for i in range(3)]
    for unit in units:
        publish_many(unit, 8)
    # 2 in flight + 4 queued: then it holds everything that would go to it.
    assert len(sub.messages) == 2
    info = {s.client_id: s for s in lab.broker.sessions()}["analytics"]
    assert (info.inflight, info.queued, info.holding) == (2, 4, True)
    assert sum(acked(u) for u in units) == 6  # only what the gateway could hand on was acknowledged
    assert lab.broker.metrics.held == 18
    payloads = drain(lab, sub)
    assert len(payloads) == 24 and all(acked(u) == 8 for u in units)
    for unit in units:  # each unit's messages in the order it sent them
        mine = [p for p in payloads if p.startswith(unit.client.client_id.encode() + b":")]
        assert mine == [telemetry(unit.client.client_id, n) for n in range(8)]
    metrics = lab.broker.metrics
    assert not any(k.startswith("queue_full") for k in metrics.drops)
    assert (metrics.held, metrics.sessions_holding, metrics.publishes_held) == (0, 0, 18)
    assert not any(link.closed for link in lab.links.values())


def test_only_the_publishers_feeding_it_are_held_and_their_other_topics_flow() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)
    dispatch = lab.connect("dispatch")
    dispatch.subscribe("fleet/+/control/+/ack", qos=1)
    fed = lab.connect("TRK-1")
    bystander = lab.connect("TRK-9")
    bystander.subscribe("fleet/TRK-9/control/+", qos=1)
    fed.subscribe("fleet/TRK-1/control/+", qos=1)
    publish_many(fed, 8)
    assert acked(fed) == 6 and lab.broker.metrics.held == 2
    # The held unit's vehicle-control path: commands reach it and its ack reaches dispatch at once.
    dispatch.publish("fleet/TRK-1/control/brake", b"stop", qos=1)
    assert fed.payloads[-1] == b"stop"
    fed.publish("fleet/TRK-1/control/brake/ack", b"ok", qos=1)
    assert dispatch.payloads == [b"ok"] and acked(fed) == 7
    # A bystander notices nothing.
    dispatch.publish("fleet/TRK-9/control/brake", b"go", qos=1)
    bystander.publish("fleet/TRK-9/control/brake/ack", b"ok-9", qos=1)
    assert bystander.payloads == [b"go"] and dispatch.payloads == [b"ok", b"ok-9"] and acked(bystander) == 1
    # A later message on the held topic waits behind the held ones; it is not reordered.
    publish_many(fed, 1, start=8)
    assert acked(fed) == 7
    assert drain(lab, sub) == [telemetry("TRK-1", n) for n in range(9)]
    assert acked(fed) == 10


def test_qos0_is_never_held_back() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)
    unit = lab.connect("TRK-1")
    publish_many(unit, 6)  # 2 in flight, 4 queued: holding
    publish_many(unit, 3, start=100, qos=0)  # to a connected client QoS 0 is written at once, as ever
    assert sub.payloads[-3:] == [telemetry("TRK-1", n) for n in range(100, 103)]
    assert drain(lab, sub)[:2] + drain(lab, sub)[5:] == [telemetry("TRK-1", n) for n in range(6)]


def test_qos0_for_an_offline_session_far_behind_is_dropped_and_counted() -> None:
    lab = Lab(limits=LIMITS, store=InMemoryStore())
    sub = persistent_subscriber(lab)
    sub.lose()
    unit = lab.connect("TRK-1")
    publish_many(unit, 1, qos=0)
    publish_many(unit, 4, start=1)  # 5 queued: over the high-water mark of 4
    publish_many(unit, 2, start=5, qos=0)
    assert lab.broker.metrics.drops["queue_full_qos0"] == 2
    back = persistent_subscriber(lab)
    assert sorted(drain(lab, back)) == [telemetry("TRK-1", n) for n in range(5)]


def test_held_messages_count_against_the_receive_maximum_and_free_it_when_released() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)
    unit = lab.connect("TRK-1")
    publish_many(unit, 10)  # a whole window: 6 routed and acked, 4 held
    publish_many(unit, 6, start=10)  # 6 more fit: 10 held, the client's window is full, no violation
    assert acked(unit) == 6 and lab.broker.metrics.held == 10 and unit.closed is None
    assert not unit.paused  # a 5.0 client is never paused: its PINGREQs and acks are still read
    drain(lab, sub)
    publish_many(unit, 10, start=16)  # released: a whole window again, and no stale count left behind
    assert unit.closed is None and acked(unit) == 22 and lab.broker.metrics.held == 4


def test_a_client_past_its_window_in_311_is_paused_and_resumed() -> None:
    lab = Lab(limits=replace(LIMITS, subscriber_stall_timeout=1000))
    sub = slow_subscriber(lab, keep_alive=600)
    unit = lab.connect("TRK-1", version=V311, keep_alive=60)
    publish_many(unit, 30)  # 3.1.1 has no Receive Maximum: 6 routed, 10 held, then reading stops
    assert unit.paused and lab.broker.metrics.reads_paused == 1
    assert any(isinstance(a, PauseReading) and a.conn == unit.conn for a in lab.actions)
    assert acked(unit) == 6 and lab.broker.metrics.held == 10
    lab.advance(100)  # paused longer than 1.5 x its keep-alive: our silence, not the client's
    assert unit.closed is None
    assert drain(lab, sub) == [telemetry("TRK-1", n) for n in range(30)]
    assert not unit.paused and any(isinstance(a, ResumeReading) for a in lab.actions)
    assert acked(unit) == 30


def test_a_shared_group_prefers_the_member_that_keeps_up() -> None:
    lab = Lab(limits=LIMITS)  # two members of one group: lab clients share among themselves
    slow = lab.connect("lab-a", auto_ack=False, peer=lab_peer("127.0.0.1:1"))
    slow.subscribe("$share/g/fleet/+/telemetry/#", qos=1)
    quick = lab.connect("lab-b", peer=lab_peer("127.0.0.1:2"))
    quick.subscribe("$share/g/fleet/+/telemetry/#", qos=1)
    unit = lab.connect("TRK-1")
    publish_acked(unit, 40)  # never held: the member that keeps up takes what the other cannot
    assert lab.broker.metrics.held == 0
    assert (len(slow.messages), len(quick.messages)) == (2, 34)  # the slow one: 2 in flight, 4 queued
    assert len(drain(lab, slow)) == 6


def test_a_stalled_subscriber_stops_holding_and_its_bound_then_applies() -> None:
    limits = BrokerLimits(
        max_inflight=2, queue_high_water=4, max_queued_messages=10, subscriber_stall_timeout=30
    )
    lab = Lab(limits=limits)
    sub = slow_subscriber(lab)
    unit = lab.connect("TRK-1")
    publish_many(unit, 8)
    assert acked(unit) == 6
    lab.advance(29)
    assert acked(unit) == 6  # slow is not stalled
    lab.advance(2)  # nothing acknowledged for 30 s: stalled, held messages released into its queue
    metrics = lab.broker.metrics
    assert acked(unit) == 8 and metrics.subscribers_stalled == 1 and metrics.sessions_holding == 0
    publish_many(unit, 6, start=8)  # queue 6 → 10 (its bound), then the policy: refused and counted
    assert metrics.drops["queue_full_qos1"] == 2
    events = [e for e in lab.broker.drain_events() if isinstance(e, QueueOverflow)]
    assert len(events) == 1 and events[0].client_id == "analytics" and events[0].max_messages == 10
    publish_many(unit, 3, start=14)
    assert metrics.drops["queue_full_qos1"] == 5
    assert not [e for e in lab.broker.drain_events() if isinstance(e, QueueOverflow)]  # once per episode
    payloads = drain(lab, sub)  # acknowledging again ends the stall
    assert payloads == [telemetry("TRK-1", n) for n in range(12)]
    info = {s.client_id: s for s in lab.broker.sessions()}["analytics"]
    assert info.dropped == 5 and not info.holding


def test_held_messages_are_authorised_again_when_released() -> None:
    class Switch(Lab):
        pass

    from gateway.policy.access import CertificateOnlyPolicy
    from gateway.policy.decision import Decision, deny

    class Quarantinable(CertificateOnlyPolicy):
        quarantined = False

        def decide_will(
            self, peer: Any, topic: str, payload_size: int, qos: int, retain: bool, now: float
        ) -> Decision:
            if self.quarantined:
                return deny("quarantined", "test/quarantine")
            return super().decide_will(peer, topic, payload_size, qos, retain, now)

    policy = Quarantinable()
    lab = Switch(policy, LIMITS)
    sub = slow_subscriber(lab)
    unit = lab.connect("TRK-1")
    publish_many(unit, 8)
    policy.quarantined = True
    assert drain(lab, sub) == [telemetry("TRK-1", n) for n in range(6)]
    assert [d.reason_code for d in unit.done][-2:] == [0x87, 0x87] and lab.broker.metrics.held == 0


def test_a_publisher_that_goes_away_takes_its_held_messages_with_it() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)
    unit = lab.connect("TRK-1")
    publish_many(unit, 8)
    unit.lose()
    assert lab.broker.metrics.drops["held_at_disconnect"] == 2  # never acknowledged: the client has them
    assert drain(lab, sub) == [telemetry("TRK-1", n) for n in range(6)]
    again = lab.connect("TRK-1")
    publish_many(again, 2, start=6)
    assert drain(lab, sub)[-2:] == [telemetry("TRK-1", 6), telemetry("TRK-1", 7)]


def test_a_subscriber_that_disconnects_releases_its_publishers() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)  # a clean session: it ends with its connection
    unit = lab.connect("TRK-1")
    publish_many(unit, 8)
    assert acked(unit) == 6
    sub.lose()
    lab.pump()
    assert acked(unit) == 8 and lab.broker.metrics.held == 0


# --- persistent sessions: queues in the store, bounded ----------------------------------------------


def persistent_subscriber(lab: Lab, version: ProtocolVersion = V5) -> Link:
    kw: dict[str, Any] = {"clean_start": False, "version": version}
    if version == V5:
        kw["properties"] = KEEP
    return slow_subscriber(lab, **kw)


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BrokerStore]:
    """The store as a restarted process would open it again."""
    if request.param == "memory":
        memory = InMemoryStore()
        return lambda: memory
    return lambda: SqliteBrokerStore(open_database(tmp_path / "gateway.db"))


def rows(store: BrokerStore) -> tuple[int, int]:
    """(queued deliveries, in-flight deliveries) the store holds, for any session."""
    state = store.load()
    return sum(n for n, _ in state.queued.values()), sum(len(d) for d in state.deliveries.values())


@pytest.mark.parametrize("restart", [False, True])
def test_an_offline_service_queues_in_the_store_not_in_memory(
    restart: bool, store_factory: Callable[[], BrokerStore]
) -> None:
    store = store_factory()
    lab = Lab(limits=LIMITS, store=store)
    sub = persistent_subscriber(lab)
    sub.lose()
    units = [lab.connect(f"TRK-{i}") for i in range(4)]
    for unit in units:
        publish_acked(unit, 50)  # offline: nobody is held back, the store takes it
    session = lab.broker._st.sessions["analytics"]
    assert (session.queued, len(session.queue), session.stored_queued) == (200, 0, 200)
    if restart:
        lab = Lab(limits=LIMITS, store=store_factory(), now=lab.now + 10)
        session = lab.broker._st.sessions["analytics"]
        assert (session.queued, len(session.queue), session.stored_queued) == (200, 0, 200)
    back = persistent_subscriber(lab)
    assert back.connack.session_present
    payloads = drain(lab, back)
    for unit in units:
        name = unit.client.client_id
        assert [p for p in payloads if p.startswith(name.encode() + b":")] == [
            telemetry(name, n) for n in range(50)
        ]
    assert len(payloads) == 200
    assert rows(store_factory()) == (0, 0)  # every row went with its acknowledgement


def test_an_offline_service_past_its_bound_gets_exactly_what_the_policy_kept() -> None:
    limits = BrokerLimits(max_inflight=2, queue_high_water=4, max_queued_messages=30)
    store = InMemoryStore()
    lab = Lab(limits=limits, store=store)
    sub = persistent_subscriber(lab)
    sub.lose()
    unit = lab.connect("TRK-1")
    publish_acked(unit, 50)
    metrics = lab.broker.metrics
    assert metrics.drops["queue_full_qos1"] == 20
    (event,) = [e for e in lab.broker.drain_events() if isinstance(e, QueueOverflow)]
    assert (event.client_id, event.connected, event.queued) == ("analytics", False, 30)
    back = persistent_subscriber(lab)
    assert drain(lab, back) == [telemetry("TRK-1", n) for n in range(30)]  # the first 30, in order


def test_a_connected_persistent_subscriber_spills_past_high_water_and_pages_back_in() -> None:
    store = InMemoryStore()
    limits = BrokerLimits(max_inflight=2, queue_high_water=4, subscriber_stall_timeout=30)
    lab = Lab(limits=limits, store=store)
    sub = persistent_subscriber(lab)
    for n in range(20):  # the gateway's own messages cannot be held back: they queue, in the store
        lab.apply(lab.broker.publish_internal(Publish("fleet/TRK-1/telemetry/gps", b"%d" % n, 1), lab.now))
    session = lab.broker._st.sessions["analytics"]
    assert session.queued == 18 and len(session.queue) == 4 and session.stored_queued == 14
    assert drain(lab, sub) == [b"%d" % n for n in range(20)]


def test_a_mixed_qos_queue_drops_qos0_first_at_its_bound() -> None:
    lab = Lab(limits=BrokerLimits(max_queued_messages=3, queue_high_water=1000))
    sub = persistent_subscriber(lab, V311)
    sub.lose()
    unit = lab.connect("TRK-1")
    publish_many(unit, 1, qos=0)
    publish_many(unit, 3, start=1)
    metrics = lab.broker.metrics
    assert (metrics.drops["queue_full_qos0"], metrics.drops["queue_full_qos1"]) == (1, 0)
    back = persistent_subscriber(lab, V311)
    assert drain(lab, back) == [telemetry("TRK-1", n) for n in range(1, 4)]


def test_a_byte_bound_counts_payload_bytes() -> None:
    lab = Lab(limits=BrokerLimits(max_queued_bytes=100, queue_high_water=1000))
    sub = persistent_subscriber(lab)
    sub.lose()
    unit = lab.connect("TRK-1")
    for n in range(5):
        unit.publish("fleet/TRK-1/telemetry/blob", bytes(30) + bytes([n]), qos=1)
    assert lab.broker.metrics.drops["queue_full_qos1"] == 2  # 3 x 31 bytes fit in 100, the 4th does not
    back = persistent_subscriber(lab)
    assert [p[-1] for p in drain(lab, back)] == [0, 1, 2]


def test_qos2_is_held_with_its_pubrec_and_a_311_retransmission_is_not_routed_twice() -> None:
    lab = Lab(limits=LIMITS)
    sub = slow_subscriber(lab)
    unit = lab.connect("TRK-1", version=V311)
    publish_many(unit, 6)  # behind: holding
    packet_id = unit.client.publish("fleet/TRK-1/telemetry/gps", telemetry("TRK-1", 6), qos=2)
    lab.pump()
    assert lab.broker.metrics.held == 1 and not unit.client.released  # no PUBREC yet
    unit.client.resend_pending()  # 3.1.1 may resend with DUP while it waits
    lab.pump()
    assert lab.broker.metrics.held == 1
    payloads = drain(lab, sub)
    assert payloads == [telemetry("TRK-1", n) for n in range(7)]  # once
    assert packet_id not in unit.client.pending  # PUBREC, PUBREL, PUBCOMP went through on release


def test_acks_released_by_a_call_whose_commit_fails_are_withheld_too() -> None:
    from tests.broker.test_broker_sessions import FailingStore

    store = FailingStore()
    lab = Lab(limits=LIMITS, store=store)
    sub = persistent_subscriber(lab)  # its deliveries are written: releasing them writes
    unit = lab.connect("TRK-1")
    publish_many(unit, 8)
    assert acked(unit) == 6
    store.fail = True
    sub.client.ack(sub.messages[0])
    sub.client.ack(sub.messages[1])
    lab.pump()  # the subscriber's call releases TRK-1's held messages, and cannot commit
    assert acked(unit) == 6 and unit.closed == "store_error"  # no PUBACK that is not durable
    assert lab.broker.metrics.held == 0
