"""The cluster's keyed streams' sender (gateway/app/cluster_stream.py): a store JetStream refuses is
tried again rather than dropped, only the latest message per subject is sent, and a `stored` callback
runs once the stream holds that message or a later one for its subject. The QoS 2 PUBREL that waits
for a session's record (docs/cluster.md) relies on all three; the whole path over a real NATS cluster
is in tests/cluster/test_jetstream.py. JetStream here is a stand-in that refuses on command."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.app import cluster_stream
from gateway.app.cluster_stream import KeyedStream


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


def test_a_refused_store_is_tried_again_and_its_callback_runs_once_it_is_stored(monkeypatch: Any) -> None:
    monkeypatch.setattr(cluster_stream, "RETRY_S", 0.05)

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


def test_only_the_latest_message_per_subject_goes_and_earlier_callbacks_wait_for_it(monkeypatch: Any) -> None:
    monkeypatch.setattr(cluster_stream, "RETRY_S", 0.05)

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


def test_a_callback_that_fails_does_not_stop_the_sender(monkeypatch: Any) -> None:
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
