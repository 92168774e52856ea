"""The BrokerStore contract, run against every implementation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.broker import BrokerStore, InMemoryStore
from gateway.broker.records import (
    DeliveryRecord,
    MessageRecord,
    SessionRecord,
    SubscriptionRecord,
    identity_from_text,
    identity_to_text,
    properties_from_json,
    properties_to_json,
)
from gateway.mqtt.packets import Properties, RetainHandling, Subscription
from gateway.stores.broker_store import SqliteBrokerStore
from pki.names import Identity
from pki.sqlite import open_database, schema_version

Factory = Callable[[], BrokerStore]


@pytest.fixture(params=["memory", "sqlite"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory giving the store as a restarted process would see it."""
    if request.param == "memory":
        store = InMemoryStore()
        return lambda: store
    return lambda: SqliteBrokerStore(open_database(tmp_path / "gateway.db"))


RICH = Properties(
    payload_format_indicator=1,
    message_expiry_interval=30,
    content_type="application/json",
    response_topic="r/1",
    correlation_data=b"\x00\xff",
    user_properties=(("a", "1"), ("a", "2")),
)


def test_round_trip_of_everything(reopen: Factory) -> None:
    store = reopen()
    store.save_retained(MessageRecord("fleet/1/state", b"on", 1, True, RICH, 123.5))
    subs = (
        SubscriptionRecord(Subscription("a/#", 2, True, True, RetainHandling.DO_NOT_SEND), 7),
        SubscriptionRecord(Subscription("$share/g/b", 1), None),
    )
    store.save_session(SessionRecord("TRK-1", "spiffe://fleet.local/unit/TRK-1", 600, 99.0, subs))
    store.save_message(5, MessageRecord("a/1", b"\x00payload", 2, False, RICH, None))
    store.save_delivery("TRK-1", 1, DeliveryRecord(5, 1, False, (7, 9), 42, False))
    store.save_delivery("TRK-1", 2, DeliveryRecord(5, 2, True, (), None, False))
    store.add_inbound_qos2("TRK-1", 17)
    assert store.pending
    store.commit()
    assert not store.pending

    store = reopen()
    state = store.load()
    assert state.retained == [MessageRecord("fleet/1/state", b"on", 1, True, RICH, 123.5)]
    assert state.sessions == [SessionRecord("TRK-1", "spiffe://fleet.local/unit/TRK-1", 600, 99.0, subs)]
    assert state.messages == {5: MessageRecord("a/1", b"\x00payload", 2, False, RICH, None)}
    # In flight: loaded. Queued: counted (deliveries, payload bytes), and paged in on demand.
    assert state.deliveries == {"TRK-1": [(1, DeliveryRecord(5, 1, False, (7, 9), 42, False))]}
    assert state.queued == {"TRK-1": (1, 8)}
    assert (state.max_message_id, state.last_seq) == (5, {"TRK-1": 2})
    assert state.inbound_qos2 == {"TRK-1": {17}}
    assert store.load_queued("TRK-1", 0, 10) == [
        (2, DeliveryRecord(5, 2, True, ()), MessageRecord("a/1", b"\x00payload", 2, False, RICH, None))
    ]
    assert store.load_queued("TRK-1", 2, 10) == [] and store.load_queued("TRK-2", 0, 10) == []


def test_queued_pages_in_seq_order_with_uncommitted_writes(reopen: Factory) -> None:
    store = reopen()
    for seq in range(1, 8):
        store.save_message(seq, MessageRecord("a/1", bytes([seq]), 1, False, Properties()))
        store.save_delivery("c", seq, DeliveryRecord(seq, 1, False, (), 40 + seq if seq == 4 else None))
    first = store.load_queued("c", 0, 3)  # before the commit: what an open transaction holds counts
    assert [seq for seq, _, _ in first] == [1, 2, 3]
    rest = store.load_queued("c", 3, 10)
    assert [seq for seq, _, _ in rest] == [5, 6, 7]  # 4 is in flight
    assert [m.payload for _, _, m in rest] == [b"\x05", b"\x06", b"\x07"]


def test_a_message_goes_with_its_last_delivery(reopen: Factory) -> None:
    store = reopen()
    store.save_session(SessionRecord("a", None, 10, None))
    store.save_session(SessionRecord("b", None, 10, None))
    store.save_message(1, MessageRecord("t", b"shared", 1, False, Properties()))
    store.save_message(2, MessageRecord("t", b"a only", 1, False, Properties()))
    store.save_delivery("a", 1, DeliveryRecord(1, 1, False))
    store.save_delivery("b", 1, DeliveryRecord(1, 1, False))
    store.save_delivery("a", 2, DeliveryRecord(2, 1, False))
    store.commit()
    store.delete_delivery("a", 1, 1)  # b still points at message 1
    store.commit()
    assert [m.payload for _, _, m in store.load_queued("b", 0, 10)] == [b"shared"]
    store.delete_session("a")  # message 2 was a's alone
    store.commit()
    state = reopen().load()
    assert state.queued == {"b": (1, 6)} and state.max_message_id == 1
    store = reopen()
    store.delete_delivery("b", 1, 1)
    store.commit()
    assert reopen().load().max_message_id == 0


def test_uncommitted_writes_are_lost(reopen: Factory) -> None:
    store = reopen()
    store.save_retained(MessageRecord("t", b"x", 0, True, Properties()))
    store.commit()
    store.delete_retained("t")
    store.save_session(SessionRecord("c", None, 10, None))
    store.rollback()
    state = reopen().load()
    assert [r.topic for r in state.retained] == ["t"] and state.sessions == []


def test_deletes(reopen: Factory) -> None:
    store = reopen()
    store.save_session(SessionRecord("c", None, 10, None))
    store.save_message(1, MessageRecord("t", b"x", 1, False, Properties()))
    store.save_delivery("c", 1, DeliveryRecord(1, 1, False))
    store.add_inbound_qos2("c", 3)
    store.add_inbound_qos2("c", 4)
    store.commit()
    store.remove_inbound_qos2("c", 3)
    store.delete_delivery("c", 1, 1)  # its message goes with it: no other delivery points at it
    store.commit()
    state = reopen().load()
    assert state.inbound_qos2 == {"c": {4}} and not state.deliveries and not state.messages
    store = reopen()
    store.delete_session("c")
    store.commit()
    state = reopen().load()
    assert not state.sessions and not state.inbound_qos2


def test_sqlite_sweeps_orphan_messages_and_records_its_schema(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "g.db")
    store = SqliteBrokerStore(conn)
    assert schema_version(conn, "broker") == 3
    store.save_message(1, MessageRecord("t", b"x", 1, False, Properties()))
    store.commit()
    assert store.load().messages == {}
    SqliteBrokerStore(conn)  # opening again migrates nothing


def test_text_forms() -> None:
    assert properties_from_json(properties_to_json(RICH)) == RICH
    assert properties_to_json(Properties()) is None and properties_from_json(None) == Properties()
    identity = Identity("unit", "TRK-1", "fleet.local")
    assert identity_from_text(identity_to_text(identity)) == identity
    assert identity_from_text(None) is None
    garbled = identity_from_text("not a uri")
    assert garbled is not None and garbled != identity  # owned by nobody, not by lab clients
