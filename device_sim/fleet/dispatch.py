"""The dispatch service: watches the fleet's telemetry and presence, and sends control messages.

It is the simulator's witness. What it receives is what the gateway delivered (so a scenario can say
"0 of 5,000 flood messages reached dispatch"), and a control message it sends is answered by the
unit's ack on `fleet/{unit}/control/<name>/ack`, matched by id, which gives the round trip.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

from device_sim.fleet.enroll import UnitFiles
from device_sim.fleet.paho_loop import V5, AsyncPaho, ConnectOutcome, tls_context

T = TypeVar("T")
WATCH = ("fleet/+/telemetry/#", "fleet/+/control/+/ack", "fleet/+/state")
MAX_KEPT = 10_000  # messages kept per unit for inspection


@dataclass(frozen=True)
class ControlResult:
    unit: str
    control: str
    ident: str
    puback: int | None  # the gateway's PUBACK reason for dispatch's publish (None: never acknowledged)
    ack_ms: float | None  # round trip to the unit's ack; None if no ack came

    @property
    def delivered(self) -> bool:
        return self.ack_ms is not None


@dataclass
class Seen:
    """Everything dispatch received from one unit."""

    telemetry: Counter[str] = field(default_factory=Counter)  # by stream
    diag: int = 0
    first_at: float | None = None
    last_at: float | None = None
    state: bytes = b""
    offline_reports: int = 0  # states saying "online": false (a will), however soon the unit came back
    fixes: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.telemetry.values())


class Dispatch:
    def __init__(
        self,
        files: UnitFiles,
        host: str,
        port: int,
        *,
        name: str = "dispatch",
        executor: Executor | None = None,
    ) -> None:
        self.files = files
        self.host, self.port, self.name = host, port, name
        self.executor = executor
        self.client: AsyncPaho | None = None
        self.seen: dict[str, Seen] = {}
        self.subscribed: dict[str, int] = {}
        self.controls: list[ControlResult] = []
        self._acks: dict[str, asyncio.Future[float]] = {}
        self._pubacks: dict[int, asyncio.Future[int]] = {}
        self._counter = 0
        self.listeners: list[Callable[[str, bytes], None]] = []

    async def start(self, filters: tuple[str, ...] = WATCH) -> ConnectOutcome:
        context = tls_context(str(self.files.ca), str(self.files.cert), str(self.files.key))
        client = AsyncPaho(self.name, context, version=V5, executor=self.executor)
        client.on_message = self._on_message
        client.on_puback = self._on_puback
        outcome = await client.connect(self.host, self.port)
        if not outcome.accepted:
            raise ConnectionError(f"{self.name} could not connect: {outcome.detail}")
        codes = await client.subscribe([(f, 1) for f in filters])
        self.subscribed = dict(zip(filters, codes, strict=True))
        self.client = client
        return outcome

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
            self.client = None

    def unit(self, unit_id: str) -> Seen:
        return self.seen.setdefault(unit_id, Seen())

    @property
    def telemetry_total(self) -> int:
        return sum(s.total for s in self.seen.values())

    # --- receiving ---------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        levels = topic.split("/")
        if len(levels) < 3 or levels[0] != "fleet":
            return
        seen = self.unit(levels[1])
        now = time.time()
        if levels[2] == "telemetry" and len(levels) >= 4:
            seen.telemetry[levels[3]] += 1
            seen.first_at = seen.first_at or now
            seen.last_at = now
            if levels[3] == "gps" and len(seen.fixes) < MAX_KEPT:
                seen.fixes.append((now, payload))
        elif levels[2] == "diag":
            seen.diag += 1
        elif levels[2] == "state":
            seen.state = payload
            if _says_offline(payload):
                seen.offline_reports += 1
        elif levels[2] == "control" and levels[-1] == "ack":
            self._on_ack(payload, now)
        for listener in self.listeners:
            listener(topic, payload)

    def _on_ack(self, payload: bytes, now: float) -> None:
        try:
            ident = str(json.loads(payload).get("id"))
        except (ValueError, AttributeError):
            return
        future = self._acks.pop(ident, None)
        if future is not None and not future.done():
            future.set_result(now)

    def _on_puback(self, mid: int, code: int) -> None:
        future = self._pubacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(code)

    # --- sending -----------------------------------------------------------------------------

    async def send_control(
        self, unit: str, control: str, body: dict[str, object] | None = None, timeout: float = 5.0
    ) -> ControlResult:
        """Publish `fleet/{unit}/control/{control}` (QoS 1) and wait for the unit's ack."""
        self._counter += 1
        ident = f"{control}-{self._counter}"
        payload = json.dumps({"id": ident, "ts": round(time.time(), 3), **(body or {})}).encode()
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[float] = loop.create_future()
        self._acks[ident] = ack
        puback: asyncio.Future[int] = loop.create_future()
        sent_at = time.time()
        mid = self.client.publish(f"fleet/{unit}/control/{control}", payload, 1) if self.client else None
        code: int | None = None
        if mid is not None:
            self._pubacks[mid] = puback
            code = await _within(puback, timeout)
        acked_at = await _within(ack, timeout)
        self._acks.pop(ident, None)
        ack_ms = (acked_at - sent_at) * 1000.0 if acked_at is not None else None
        result = ControlResult(unit, control, ident, code, ack_ms)
        self.controls.append(result)
        return result

    async def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 5.0) -> int | None:
        """Any publish (e.g. a cmd); returns the PUBACK reason, or None if none came."""
        mid = self.client.publish(topic, payload, qos) if self.client else None
        if mid is None or qos == 0:
            return None if mid is None else 0
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pubacks[mid] = future
        return await _within(future, timeout)


async def _within(future: asyncio.Future[T], timeout: float) -> T | None:
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        return None


def _says_offline(payload: bytes) -> bool:
    try:
        state = json.loads(payload)
    except ValueError:
        return False
    return isinstance(state, dict) and state.get("online") is False
