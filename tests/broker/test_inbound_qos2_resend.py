"""A client's QoS 2 PUBLISH on a cluster node, exactly once across the death of that node (docs/cluster.md,
"QoS 2 exactly once across a node's death"): the broker's side, without sockets.

Before its store, the message's backbone id goes into the session's cluster record with its packet id
and a digest; the store waits for that record. A node that resumes the session from the record stores
the client's resend (DUP, same topic and payload) under the same id and routes it only if the store had
not had it; a PUBREL for a recorded id completes. The whole path over NATS and a kill -9 is in
tests/cluster/test_jetstream.py."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.broker.inbound import inbound_digest
from gateway.broker.message import Message
from gateway.broker.records import SessionRecord, identity_to_text, session_from_json, session_to_json
from gateway.broker.state import GroupKey
from gateway.mqtt.client import MqttClient
from gateway.mqtt.codec import PacketReader, encode
from gateway.mqtt.packets import Properties, Pubcomp, Publish, Pubrec, Pubrel
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.peer import Peer
from tests.broker.lab import T0, V5, Lab, Link, service_peer, unit_peer

KEEP = Properties(session_expiry_interval=3600)
TOPIC = "fleet/TRK-1/telemetry/door"


class Node:
    """A Lab wired as a cluster node: a JetStream backbone that takes receipts, backbone ids from a
    count, and a session-record hook; `log` keeps the order of records and stores."""

    def __init__(self, records: dict[str, SessionRecord] | None = None) -> None:
        self.lab = Lab()
        self.log: list[tuple[str, object]] = []
        self.stores: list[tuple[int | None, str | None, bytes]] = []  # (receipt, backbone id, payload)
        self._count = 0
        hooks = self.lab.broker.cluster
        hooks.session_recorded = lambda client_id, record: self.log.append(("record", record))
        hooks.session_elsewhere = ({} if records is None else records).get
        hooks.message_id = self._next_id
        self.lab.broker.forward_accepted(self._sink)

    def _next_id(self) -> str:
        self._count += 1
        return f"node-b:1:{self._count}"

    def _sink(
        self,
        message: Message,
        client_id: str,
        peer: Peer,
        receipt: int | None,
        served: Sequence[GroupKey],
        message_id: str | None,
    ) -> bool:
        self.stores.append((receipt, message_id, message.payload))
        self.log.append(("store", message_id))
        return receipt is not None

    def last_record(self) -> SessionRecord:
        record = [r for kind, r in self.log if kind == "record"][-1]
        assert isinstance(record, SessionRecord)
        return record

    def stored(self, receipts: list[int], duplicates: set[int] | None = None) -> None:
        self.lab.apply(self.lab.broker.stored(receipts, [], self.lab.now, duplicates or set()))
        self.lab.pump()


def _sent(link: Link) -> list[object]:
    reader = PacketReader(version=link.client.version)
    reader.feed(bytes(link.received))
    packets = []
    while (packet := reader.next_packet()) is not None:
        packets.append(packet)
    return packets


def _resumed_unit(node: Node) -> Link:
    client = MqttClient("TRK-1", auto_ack=False, clean_start=False, properties=KEEP)
    unit = node.lab.open(client, unit_peer("TRK-1"))
    client.connect()
    node.lab.pump()
    assert unit.connack.session_present
    return unit


def _record_naming(packet_id: int, message_id: str, payload: bytes) -> SessionRecord:
    owner = identity_to_text(unit_peer("TRK-1").identity)
    digest = inbound_digest(Publish(TOPIC, payload, qos=2, packet_id=packet_id))
    return SessionRecord("TRK-1", owner, 3600, T0, (), received=((packet_id, message_id, digest),))


def test_a_qos2_publish_of_a_persistent_session_is_recorded_before_its_store_and_dropped_at_pubrel() -> None:
    node = Node()
    unit = node.lab.connect("TRK-1", clean_start=False, properties=KEEP)
    node.log.clear()
    packet_id = unit.publish(TOPIC, b"open", qos=2)
    assert packet_id is not None
    digest = inbound_digest(Publish(TOPIC, b"open", qos=2, packet_id=packet_id))
    assert [kind for kind, _ in node.log] == ["record", "store"]  # the record first: the store waits on it
    assert node.last_record().received == ((packet_id, "node-b:1:1", digest),)
    assert node.stores == [(1, "node-b:1:1", b"open")]
    assert unit.done == []  # no PUBREC before the store said yes
    node.stored([1])  # PUBREC; the client's PUBREL and the PUBCOMP follow
    assert [(d.packet_id, d.reason_code) for d in unit.done] == [(packet_id, ReasonCode.SUCCESS)]
    assert node.last_record().received == ()  # released: the record names it no more


def test_a_clean_session_or_a_qos1_publish_is_not_recorded() -> None:
    node = Node()
    clean = node.lab.connect("TRK-1")
    kept = node.lab.connect("TRK-2", clean_start=False, properties=KEEP)
    node.log.clear()
    clean.publish("fleet/TRK-1/telemetry/door", b"a", qos=2)
    kept.publish("fleet/TRK-2/telemetry/door", b"b", qos=1)
    assert [kind for kind, _ in node.log] == ["store", "store"]
    assert [message_id for _, message_id, _ in node.stores] == [None, None]  # the backbone picks


def test_a_resend_after_the_node_died_is_stored_under_the_recorded_id_and_routed_only_if_new() -> None:
    for had_it in (True, False):
        node = Node({"TRK-1": _record_naming(7, "node-a:3:99", b"open")})
        dispatch = node.lab.connect("dispatch", peer=service_peer("dispatch"))
        dispatch.subscribe("fleet/+/telemetry/#", qos=2)
        unit = _resumed_unit(node)
        unit.send_raw(encode(Publish(TOPIC, b"open", qos=2, packet_id=7, dup=True), V5))
        assert node.stores == [(1, "node-a:3:99", b"open")]  # the id the dead node stored it under
        assert dispatch.payloads == []  # not routed before the store says whether it had it
        node.stored([1], {1} if had_it else set())
        # Had it: this node's subscribers got it from the store already, when the dead node stored it.
        assert dispatch.payloads == ([] if had_it else [b"open"])
        assert [p.packet_id for p in _sent(unit) if isinstance(p, Pubrec)] == [7]
        # the client's PUBREL (its MqttClient answers the PUBREC) completes
        assert [(p.packet_id, p.reason_code) for p in _sent(unit) if isinstance(p, Pubcomp)] == [(7, 0)]
        assert node.last_record().received == ()


def test_a_pubrel_for_a_recorded_id_completes_and_a_new_message_under_that_id_is_no_resend() -> None:
    node = Node({"TRK-1": _record_naming(7, "node-a:3:99", b"open")})
    unit = _resumed_unit(node)
    # The dead node had sent its PUBREC: the client goes on with PUBREL, and it completes.
    unit.send_raw(encode(Pubrel(7), V5))
    assert [(p.packet_id, p.reason_code) for p in _sent(unit) if isinstance(p, Pubcomp)] == [
        (7, ReasonCode.SUCCESS)
    ]
    node = Node({"TRK-1": _record_naming(7, "node-a:3:99", b"open")})
    unit = _resumed_unit(node)
    # Not a resend: no DUP, or another payload under the same packet id. Each is a new message.
    unit.send_raw(encode(Publish(TOPIC, b"open", qos=2, packet_id=7), V5))
    unit.send_raw(encode(Publish(TOPIC, b"shut", qos=2, packet_id=8, dup=True), V5))
    assert [message_id for _, message_id, _ in node.stores] == ["node-b:1:1", "node-b:1:2"]
    assert node.last_record().received[0][:2] == (7, "node-b:1:1")


def test_the_received_triples_survive_the_records_text_form_and_a_bad_one_is_refused() -> None:
    record = SessionRecord("TRK-1", None, 60, None, (), received=((1, "a", "d1"), (65535, "b", "d2")))
    assert session_from_json(session_to_json(record)) == record
    assert b"received" not in session_to_json(SessionRecord("TRK-1", None, 60, None))
    for bad in (b'[[0,"a","d"]]', b'[[1,"a"]]', b'[[1,2,"d"]]', b'[[1,"a",3]]'):
        text = session_to_json(record).replace(b'[[1,"a","d1"],[65535,"b","d2"]]', bad)
        assert bad in text
        try:
            session_from_json(text)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_a_session_this_node_kept_takes_the_received_ids_its_record_names() -> None:
    """The node kept the session (on disk across a restart, here in memory) but died between the
    record naming a PUBLISH and the confirmation of its store: the resend is stored under the recorded
    id all the same, and an id whose PUBREC the node has on record is not taken from the record."""
    records: dict[str, SessionRecord] = {}
    node = Node(records)
    unit = node.lab.connect("TRK-1", clean_start=False, properties=KEEP)
    unit.disconnect_cleanly()
    recorded = _record_naming(7, "node-a:3:99", b"open")
    other = (9, "node-a:3:98", inbound_digest(Publish(TOPIC, b"shut", qos=2, packet_id=9)))
    records["TRK-1"] = SessionRecord(
        recorded.client_id, recorded.identity, 3600, T0, (), received=(*recorded.received, other)
    )
    node.lab.broker._st.sessions["TRK-1"].inbound_qos2.add(9)  # its store was confirmed here
    unit = _resumed_unit(node)
    unit.send_raw(encode(Publish(TOPIC, b"open", qos=2, packet_id=7, dup=True), V5))
    unit.send_raw(encode(Publish(TOPIC, b"shut", qos=2, packet_id=9, dup=True), V5))
    assert node.stores == [(1, "node-a:3:99", b"open")]  # 9: acknowledged again, not stored again
