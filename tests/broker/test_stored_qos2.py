"""QoS 2 from the cluster's store to a persistent session, exactly once across a node's death
(docs/cluster.md, "QoS 2 exactly once across a node's death"): the broker's side, without sockets.

A stored message goes out under the packet id its place in the stream gives it (the same on every
node); its PUBREL waits until the session's cluster record names the release; a session resumed from
a record naming releases sends their PUBRELs and reports their messages as never to be delivered
again. The whole path over NATS, a kill -9 and paho is in tests/cluster/test_jetstream.py."""

from __future__ import annotations

from gateway.broker.core import StoredMessage
from gateway.broker.records import (
    SessionRecord,
    SubscriptionRecord,
    identity_to_text,
    session_from_json,
    session_to_json,
)
from gateway.mqtt.client import MqttClient
from gateway.mqtt.codec import PacketReader
from gateway.mqtt.packets import Properties, Pubrel, Subscription
from tests.broker.lab import T0, Lab, Link, unit_peer

KEEP = Properties(session_expiry_interval=3600)
TOPIC = "fleet/TRK-2/cmd/reboot"


def _lab(
    records: dict[str, SessionRecord] | None = None,
) -> tuple[Lab, list[SessionRecord | None], list[int]]:
    lab = Lab()
    told: list[SessionRecord | None] = []
    done: list[int] = []
    lab.broker.cluster.session_recorded = lambda client_id, record: told.append(record)
    lab.broker.cluster.session_elsewhere = (records or {}).get
    lab.broker.watch_deliveries(done.extend)
    lab.broker.deliver_durably({"TRK-2"})
    return lab, told, done


def _stored(payload: bytes, receipt: int, packet_id: int) -> StoredMessage:
    return (TOPIC, payload, 2, False, Properties(), "ops-1"), receipt, f"id-{receipt}", packet_id


def _subscriber(lab: Lab) -> Link:
    link = lab.connect("TRK-2", auto_ack=False, clean_start=False, properties=KEEP)
    link.subscribe("fleet/TRK-2/cmd/#", qos=2)
    return link


def _pubrels(link: Link) -> list[int]:
    reader = PacketReader(version=link.client.version)
    reader.feed(bytes(link.received))
    ids = []
    while (packet := reader.next_packet()) is not None:
        if isinstance(packet, Pubrel):
            ids.append(packet.packet_id)
    return ids


def test_a_stored_qos2_message_keeps_its_packet_id_and_its_pubrel_waits_for_the_record() -> None:
    lab, told, done = _lab()
    unit = _subscriber(lab)
    lab.apply(lab.broker.deliver_stored("TRK-2", [_stored(b"now", 7, 4242)], lab.now))
    assert [(m.payload, m.packet_id) for m in unit.messages] == [(b"now", 4242)]
    unit.client.ack(unit.messages[0])  # PUBREC
    lab.pump()
    assert _pubrels(unit) == []  # not before the cluster holds a record of the release
    record = told[-1]
    assert record is not None and record.released == ((4242, "id-7"),)
    assert done == []  # nor may the store forget the message yet
    assert lab.broker.released_ids("TRK-2") == {"id-7"}
    lab.apply(lab.broker.releases_due("TRK-2", [4242], lab.now))
    lab.pump()  # PUBREL out, the client's PUBCOMP in
    assert _pubrels(unit) == [4242]
    assert done == [7]
    record = told[-1]
    assert record is not None and record.released == ()  # completed: the record names it no more
    assert lab.broker.released_ids("TRK-2") == set()


def test_a_stored_qos2_message_waits_while_its_packet_id_is_in_flight_for_another() -> None:
    lab, _, _ = _lab()
    unit = _subscriber(lab)
    lab.apply(lab.broker.deliver_stored("TRK-2", [_stored(b"one", 1, 5), _stored(b"two", 65536, 5)], lab.now))
    assert unit.payloads == [b"one"]  # 65536 and 1 are 65535 apart in the stream: the same id
    unit.client.ack(unit.messages[0])
    lab.pump()
    lab.apply(lab.broker.releases_due("TRK-2", [5], lab.now))
    lab.pump()  # PUBREL, PUBCOMP: id 5 is free again
    assert [(m.payload, m.packet_id) for m in unit.messages] == [(b"one", 5), (b"two", 5)]


def test_a_session_resumed_from_a_record_naming_releases_sends_their_pubrel_and_skips_them() -> None:
    owner = identity_to_text(unit_peer("TRK-2").identity)
    subs = (SubscriptionRecord(Subscription("fleet/TRK-2/cmd/#", 2), None),)
    record = SessionRecord("TRK-2", owner, 3600, T0, subs, released=((17, "id-9"),))
    lab, told, _ = _lab({"TRK-2": record})
    client = MqttClient("TRK-2", auto_ack=False, clean_start=False, properties=KEEP)
    unit = lab.open(client, unit_peer("TRK-2"))
    client.connect()
    unit.flush_once()  # CONNECT in, CONNACK and PUBREL out; the client's PUBCOMP waits in its buffer
    assert unit.connack.session_present
    assert _pubrels(unit) == [17]  # the node that died had sent it, or was about to
    assert lab.broker.released_ids("TRK-2") == {"id-9"}  # the backbone acks its redelivery unread
    kept = told[-1]
    assert kept is not None and kept.released == ((17, "id-9"),)  # this node's record keeps it
    lab.pump()  # the PUBCOMP
    assert lab.broker.released_ids("TRK-2") == set()
    ended = told[-1]
    assert ended is not None and ended.released == ()


def test_the_released_pairs_survive_the_records_text_form_and_a_bad_pair_is_refused() -> None:
    record = SessionRecord("TRK-2", None, 60, None, (), released=((1, "a"), (65535, "b")))
    assert session_from_json(session_to_json(record)) == record
    bare = SessionRecord("TRK-2", None, 60, None)
    assert b"released" not in session_to_json(bare)  # records without releases are as before
    for bad in (b'[[0,"a"]]', b'[[70000,"a"]]', b'[["1","a"]]', b"[[1]]"):
        text = session_to_json(record).replace(b'[[1,"a"],[65535,"b"]]', bad)
        try:
            session_from_json(text)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"accepted {bad!r}")
