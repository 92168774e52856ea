"""The cluster's keyed streams' sender (gateway/app/cluster_stream.py): a store JetStream refuses is
tried again rather than dropped, only the latest message per subject is sent, and a `stored` callback
runs once the stream holds that message or a later one for its subject. The QoS 2 PUBREL that waits
for a session's record (docs/cluster.md) relies on all three, and on the wait being bounded
(cluster_session_records.py): a store that never answers must not hold a unit's in-flight window.
The whole path over a real NATS cluster is in tests/cluster/test_jetstream.py. JetStream here is a
stand-in that refuses on command."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway.app import cluster_stream
from gateway.app.cluster_session_records import ClusterSessionRecords
from gateway.app.cluster_stream import KeyedStream
from gateway.broker.records import SessionRecord


class Link:
    """What the sender asks of the cluster link: a signature."""

    def signed(self, subject: str, payload: bytes, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "Fg-Mac": "signed"}


class JetStream:
    def __init__(self) -> None:
        self.refusing = 0  # how many publishes to refuse next
        self.stored: list[tuple[str, bytes]] = []
        self.tried = 0

    async def publish(self, subject: str, payload: bytes, headers: dict[str, Any]) -> None:
        self.tried += 1
        await asyncio.sleep(0)
        if self.refusing:
            self.refusing -= 1
            raise TimeoutError("no PubAck")
        self.stored.append((subject, payload))


async def _sender(js: JetStream) -> tuple[KeyedStream, asyncio.Task[None]]:
    stream = KeyedStream(Link(), "TEST_SESSIONS", "t.s", "session records", lambda *a: True)  # type: ignore[arg-type]
    stream._js = js
    return stream, asyncio.get_running_loop().create_task(stream._send())


async def _until(check: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "not within the time"
        await asyncio.sleep(0.01)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_stream, "RETRY_S", 0.05)


@pytest.mark.usefixtures("quick_retries")
def test_a_refused_store_is_tried_again_and_its_callback_runs_once_it_is_stored() -> None:
    async def run() -> None:
        js = JetStream()
        js.refusing = 2
        stream, sender = await _sender(js)
        told: list[str] = []
        stream.put("t.s.TRK-1", b"record", {}, lambda: told.append("stored"))
        await _until(lambda: js.stored)
        assert js.stored == [("t.s.TRK-1", b"record")] and js.tried == 3  # refused twice, then stored
        assert told == ["stored"]
        sender.cancel()

    asyncio.run(run())


@pytest.mark.usefixtures("quick_retries")
def test_only_the_latest_message_per_subject_goes_and_earlier_callbacks_wait_for_it() -> None:
    async def run() -> None:
        js = JetStream()
        js.refusing = 1
        stream, sender = await _sender(js)
        told: list[str] = []
        stream.put("t.s.TRK-1", b"first", {}, lambda: told.append("first"))
        await _until(lambda: js.tried == 1)  # the first is refused; a newer one comes before the retry
        stream.put("t.s.TRK-1", b"second", {}, lambda: told.append("second"))
        stream.put("t.s.TRK-2", b"other", {})
        await _until(lambda: len(js.stored) == 2)
        assert sorted(js.stored) == [("t.s.TRK-1", b"second"), ("t.s.TRK-2", b"other")]  # "first" never
        assert told == ["first", "second"]  # the newer record says at least as much
        sender.cancel()

    asyncio.run(run())


def test_a_callback_that_fails_does_not_stop_the_sender() -> None:
    async def run() -> None:
        js = JetStream()
        stream, sender = await _sender(js)

        def broken() -> None:
            raise RuntimeError("a bug in a callback")

        stream.put("t.s.TRK-1", b"one", {}, broken)
        await _until(lambda: js.stored)
        stream.put("t.s.TRK-2", b"two", {})
        await _until(lambda: len(js.stored) == 2)
        assert not sender.done()
        sender.cancel()

    asyncio.run(run())


class Driver:
    """The broker's side of the session records: which PUBRELs it was told to send, and when."""

    def __init__(self) -> None:
        self.due: list[tuple[float, str, list[int]]] = []

    def releases_due(self, client_id: str, packet_ids: list[int]) -> None:
        self.due.append((asyncio.get_running_loop().time(), client_id, list(packet_ids)))


def _released(client_id: str, *packet_ids: int) -> SessionRecord:
    return SessionRecord(client_id, None, 600, None, (), released=tuple((p, f"id-{p}") for p in packet_ids))


def test_pubrels_wait_for_the_record_naming_them_and_go_as_soon_as_it_is_stored() -> None:
    async def run() -> None:
        driver = Driver()
        records = ClusterSessionRecords(Link(), driver, "t", release_wait=5.0)  # type: ignore[arg-type]
        js = JetStream()
        records._stream._js = js
        sender = asyncio.get_running_loop().create_task(records._stream._send())
        started = asyncio.get_running_loop().time()
        records.recorded("dispatch", _released("dispatch", 17))
        await _until(lambda: driver.due)
        assert [(c, p) for _, c, p in driver.due] == [("dispatch", [17])]
        assert driver.due[0][0] - started < 1.0  # the store answered: long before the wait's bound
        sender.cancel()

    asyncio.run(run())


def test_pubrels_go_anyway_when_the_record_is_not_stored_within_the_wait(caplog: Any) -> None:
    async def run() -> None:
        driver = Driver()
        records = ClusterSessionRecords(Link(), driver, "t", release_wait=0.1)  # type: ignore[arg-type]
        started = asyncio.get_running_loop().time()
        records.recorded("TRK-1", _released("TRK-1", 5, 6))  # JetStream never answers: no sender runs
        await _until(lambda: driver.due)
        assert [(c, p) for _, c, p in driver.due] == [("TRK-1", [5, 6])]
        assert driver.due[0][0] - started >= 0.1

    with caplog.at_level(logging.WARNING, logger="fleetgate.cluster"):
        asyncio.run(run())
    said = [r.getMessage() for r in caplog.records if "PUBRELs and stores go without it" in r.getMessage()]
    assert len(said) == 1 and "'TRK-1'" in said[0], said


def _received(client_id: str, *packet_ids: int) -> SessionRecord:
    return SessionRecord(
        client_id, None, 600, None, (), received=tuple((p, f"id-{p}", "digest") for p in packet_ids)
    )


def test_a_qos2_store_waits_for_the_record_naming_it_and_no_longer_than_the_bound() -> None:
    async def run() -> None:
        driver = Driver()
        records = ClusterSessionRecords(Link(), driver, "t", release_wait=0.2)  # type: ignore[arg-type]
        assert records.written("TRK-1").done()  # nothing waits for a store: no wait
        records.recorded("TRK-1", _received("TRK-1", 9))
        written = records.written("TRK-1")
        await asyncio.sleep(0.05)
        assert not written.done()  # JetStream has not stored the record yet: the store waits
        js = JetStream()
        records._stream._js = js
        sender = asyncio.get_running_loop().create_task(records._stream._send())
        await asyncio.wait_for(written, 1.0)
        assert js.stored and b'"received":[[9,"id-9","digest"]]' in js.stored[-1][1]
        assert driver.due == []  # a received message has no PUBREL to send
        sender.cancel()
        # A record JetStream never stores: the store goes on after the bound.
        records.recorded("TRK-2", _received("TRK-2", 4))
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(records.written("TRK-2"), 1.0)
        assert asyncio.get_running_loop().time() - started >= 0.1

    asyncio.run(run())
