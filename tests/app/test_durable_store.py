"""The durable lane's stores (gateway/app/backbone_durable.py) against a JetStream that does not
answer: a client's PUBACK waits as long as it takes, and it is never reported failed (which would
close the client's connection, and with it a unit's control channel), except for a message no retry
can store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.errors import MaxPayloadError

from gateway.app import backbone_durable
from gateway.app.backbone_durable import DurableLane, DurableSettings
from gateway.app.backbone_wire import BackboneCounters


class Ack:
    duplicate = False


class AwayJetStream:
    """Refuses every store until `back` is set (a majority of servers down), then stores."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.back = False
        self.attempts = 0

    async def publish(self, *args: Any, **kwargs: Any) -> Ack:
        self.attempts += 1
        if not self.back:
            raise self.error
        return Ack()


def _lane(js: AwayJetStream, settled: list[tuple[list[int], list[int]]]) -> DurableLane:
    lane = DurableLane(
        "node-a",
        b"k" * 32,
        "fleetgate",
        DurableSettings(store_timeout=1.0),
        BackboneCounters(),
        lambda confirmed, failed, duplicates: settled.append((list(confirmed), list(failed))),
        lambda messages, skip: None,
        lambda client_id, messages: None,
    )
    lane._js = js
    lane._ready.set()
    return lane


def test_a_store_jetstream_does_not_take_is_tried_until_it_does_never_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backbone_durable, "RETRY_S", 0.01)

    async def run() -> tuple[list[tuple[list[int], list[int]]], int, BackboneCounters]:
        js = AwayJetStream(TimeoutError("no PubAck"))
        settled: list[tuple[list[int], list[int]]] = []
        lane = _lane(js, settled)
        lane.publish("fleetgate.q.m.fleet.TRK-1.telemetry.gps", b"fix", {}, 7)
        await asyncio.sleep(1.5)  # past the 1 s store timeout: still waiting, nothing reported
        assert settled == []
        js.back = True
        for _ in range(100):
            await asyncio.sleep(0.01)
            if settled:
                break
        return settled, js.attempts, lane.counters

    settled, attempts, counters = asyncio.run(run())
    assert settled == [([7], [])]  # acknowledged once stored, never failed
    assert attempts > 10
    assert counters.dropped["store_waiting"] >= 1 and counters.dropped["not_stored"] == 0


def test_a_message_no_retry_can_store_is_reported_failed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_durable, "RETRY_S", 0.01)

    async def run() -> tuple[list[tuple[list[int], list[int]]], int]:
        js = AwayJetStream(MaxPayloadError())
        settled: list[tuple[list[int], list[int]]] = []
        lane = _lane(js, settled)
        lane.publish("fleetgate.q.m.fleet.TRK-1.telemetry.gps", b"x" * 10, {}, 9)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if settled:
                break
        return settled, js.attempts

    settled, attempts = asyncio.run(run())
    assert settled == [([], [9])] and attempts == 1
