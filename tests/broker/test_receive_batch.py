"""Broker.receive_batch and the hub that feeds it: many connections' reads in one broker entry.

What must hold: each connection's bytes are handled in the order they came, exactly as one
`receive` per read would handle them; a connection that sends garbage, trips a bug or closed
earlier in the batch hurts nobody else in it; and the edge gives the broker every read of one
event-loop iteration in one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.broker import Broker, BrokerLimits, Close
from gateway.edge.hub import ConnectionHub
from gateway.mqtt.client import MqttClient
from gateway.mqtt.codec import encode_publish
from gateway.mqtt.packets import Publish
from gateway.policy.access import CertificateOnlyPolicy
from gateway.policy.decision import Decision
from gateway.policy.peer import Peer
from tests.broker.lab import Lab, Link, RecordingTransport, unit_peer

TOPIC = "fleet/{unit}/telemetry/gps"


def _units(lab: Lab, count: int) -> list[Link]:
    return [lab.connect(f"TRK-{i}") for i in range(count)]


def _subscriber(lab: Lab, qos: int = 1) -> Link:
    sub = lab.connect("analytics")
    sub.subscribe("fleet/+/telemetry/#", qos=qos)
    return sub


def _queue(link: Link, first: int, count: int, qos: int = 1) -> bytes:
    unit = link.client.client_id
    for n in range(first, first + count):
        link.client.publish(TOPIC.format(unit=unit), f"{unit}:{n}".encode(), qos=qos)
    return link.client.data_to_send()


def _mine(sub: Link, unit: Link) -> list[bytes]:
    prefix = unit.client.client_id.encode() + b":"
    return [p for p in sub.payloads if p.startswith(prefix)]


@pytest.mark.parametrize("qos", [0, 1])
def test_a_batch_keeps_each_connection_s_order_and_equals_one_call_per_read(qos: int) -> None:
    results = []
    for batched in (False, True):
        lab = Lab()
        sub = _subscriber(lab)
        units = _units(lab, 3)
        # Two reads per unit, interleaved with the other units' reads, as one loop iteration may see.
        reads = [(u.conn, _queue(u, 0, 2, qos)) for u in units]
        reads += [(u.conn, _queue(u, 2, 3, qos)) for u in units]
        if batched:
            lab.apply(lab.broker.receive_batch(reads, lab.now))
        else:
            for conn, data in reads:
                lab.apply(lab.broker.receive(conn, data, lab.now))
        lab.pump()
        for unit in units:
            name = unit.client.client_id
            assert _mine(sub, unit) == [f"{name}:{n}".encode() for n in range(5)]
            if qos:
                assert [d.reason_code for d in unit.done] == [0] * 5
        results.append((sub.payloads, [a for a in lab.actions if isinstance(a, Close)]))
    assert results[0] == results[1]  # the same messages to the subscriber, in the same order


def test_a_malformed_connection_in_a_batch_is_closed_alone() -> None:
    lab = Lab()
    sub = _subscriber(lab)
    good_a, bad, good_b = _units(lab, 3)
    reads = [
        (good_a.conn, _queue(good_a, 0, 2)),
        (bad.conn, b"\x30\xff\xff\xff\xff\x7f"),  # a remaining length of five bytes: malformed
        (bad.conn, _queue(bad, 0, 1)),  # what it sends after, in the same iteration, is not read
        (good_b.conn, _queue(good_b, 0, 2)),
    ]
    lab.apply(lab.broker.receive_batch(reads, lab.now))
    lab.pump()
    assert bad.closed is not None
    assert _mine(sub, bad) == []
    for good in (good_a, good_b):
        assert good.closed is None
        assert len(_mine(sub, good)) == 2 and [d.reason_code for d in good.done] == [0, 0]


def test_a_bug_while_handling_one_connection_closes_only_that_one(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = CertificateOnlyPolicy()
    real = policy.decide_publish

    def decide(peer: Peer, topic: str, size: int, qos: int, retain: bool, now: float) -> Decision:
        if peer.identity is not None and peer.identity.id == "TRK-1":
            raise RuntimeError("a bug")
        return real(peer, topic, size, qos, retain, now)

    monkeypatch.setattr(policy, "decide_publish", decide)
    lab = Lab(policy)
    sub = _subscriber(lab)
    units = _units(lab, 3)
    lab.apply(lab.broker.receive_batch([(u.conn, _queue(u, 0, 2)) for u in units], lab.now))
    lab.pump()
    assert units[1].closed == "internal_error"
    assert [len(_mine(sub, u)) for u in units] == [2, 0, 2]
    assert units[0].closed is None and units[2].closed is None
    assert lab.broker.metrics.internal_errors == 1


def test_reads_after_a_connection_closed_earlier_in_the_batch_are_ignored() -> None:
    lab = Lab()
    sub = _subscriber(lab)
    unit, other = _units(lab, 2)
    unit.client.disconnect()
    bye = unit.client.data_to_send()
    late = encode_publish(Publish(TOPIC.format(unit="TRK-0"), b"late", 0), unit.client.version)
    reads = [(unit.conn, bye), (unit.conn, late), (other.conn, _queue(other, 0, 1))]
    lab.apply(lab.broker.receive_batch(reads, lab.now))
    assert b"late" not in sub.payloads
    lab.pump()
    assert _mine(sub, other) == [b"TRK-1:0"]


def test_held_back_publishers_in_batches_lose_nothing_and_keep_their_order() -> None:
    limits = BrokerLimits(max_inflight=2, queue_high_water=4, receive_maximum=10, subscriber_stall_timeout=30)
    lab = Lab(limits=limits)
    sub = lab.connect("analytics", auto_ack=False)
    sub.subscribe("fleet/+/telemetry/#", qos=1)
    units = _units(lab, 3)
    lab.apply(lab.broker.receive_batch([(u.conn, _queue(u, 0, 8)) for u in units], lab.now))
    lab.pump_batched()
    assert len(sub.messages) == 2 and lab.broker.metrics.held == 18
    for seen in range(100):  # a slow reader: one acknowledgement per batch
        messages = sub.messages
        if seen == len(messages):
            break
        sub.client.ack(messages[seen])
        lab.pump_batched()
    assert len(sub.payloads) == 24
    for unit in units:
        name = unit.client.client_id
        assert _mine(sub, unit) == [f"{name}:{n}".encode() for n in range(8)]
        assert [d.reason_code for d in unit.done] == [0] * 8
    assert not any(link.closed for link in lab.links.values())


class _LoggedTransport(RecordingTransport):
    """Each write also noted in one log shared by every connection: the order the hub wrote in."""

    def __init__(self, name: int, log: list[int]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def write(self, data: bytes) -> None:
        super().write(data)
        self.log.append(self.name)


def _hub_with_units(count: int) -> tuple[ConnectionHub, list[int], list[tuple[int, Any, RecordingTransport]]]:
    # The hub's own counters say how many broker calls it made (the broker and the hub may be compiled:
    # no test subclasses them, gateway/app/compiled.py).
    hub = ConnectionHub(Broker(CertificateOnlyPolicy()))
    log: list[int] = []
    links = []
    for i in range(count):
        transport = _LoggedTransport(i, log)
        conn = hub.register(transport, unit_peer(f"TRK-{i}"))  # type: ignore[arg-type]
        client = MqttClient(f"TRK-{i}")
        client.connect()
        links.append((conn, client, transport))
    return hub, log, links


async def test_the_hub_gives_the_broker_one_call_per_loop_iteration() -> None:
    hub, log, links = _hub_with_units(5)
    for conn, client, _ in links:
        hub.received(conn, client.data_to_send())
    assert hub.counters.read_batches == 0  # nothing yet: the iteration's other reads may still come
    await asyncio.sleep(0)
    assert (hub.counters.read_batches, hub.counters.reads) == (1, 5)
    assert all(transport.writes for _, _, transport in links)  # CONNACKs written in that same call
    assert log == [0, 1, 2, 3, 4]  # handled, and answered, in arrival order


async def test_a_lost_connection_s_last_reads_go_before_its_loss() -> None:
    hub, _, links = _hub_with_units(2)
    for conn, client, _ in links:
        hub.received(conn, client.data_to_send())
    conn, client, transport = links[0]
    hub.lost(conn)  # in the same iteration as its CONNECT
    assert (hub.counters.read_batches, hub.counters.reads) == (1, 2)
    assert transport.writes  # its CONNECT was handled (CONNACK) before the loss
    await asyncio.sleep(0)
    assert hub.counters.read_batches == 1


def test_outside_a_loop_the_hub_hands_each_read_over_at_once() -> None:
    hub, _, links = _hub_with_units(2)
    for conn, client, _ in links:
        hub.received(conn, client.data_to_send())
    assert (hub.counters.read_batches, hub.counters.reads) == (2, 2)
    assert all(t.writes for _, _, t in links)  # each CONNACK written at once
