"""An attacker holding a unit's certificate: one connection at a time, back when the gateway cuts it.

It keeps what the scenarios measure across its connections: every PUBACK reason (and when the first
refusal came), every cut with its DISCONNECT reason, what the gateway sent it (a mode command means
quarantine), and after the attack one last reconnect to see what it was left with.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from device_sim.attacks.arena import Heard, Lab, describe_code, watch
from device_sim.fleet.enroll import UnitFiles
from device_sim.fleet.paho_loop import AsyncPaho, ConnectOutcome
from device_sim.fleet.unit import MODE_DIAGNOSTIC

RECONNECTS = 3  # how often a cut attacker comes back during one scenario


class Acks:
    """PUBACK reasons across an attacker's connections, with the time of the first refusal."""

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.codes: Counter[int] = Counter()
        self.first_refusal: float | None = None
        self.by_mid: dict[int, int] = {}

    def __call__(self, mid: int, code: int) -> None:
        if mid not in self.pending:
            return
        self.pending.discard(mid)
        self.codes[code] += 1
        self.by_mid[mid] = code
        if code >= 0x80 and self.first_refusal is None:
            self.first_refusal = time.monotonic()

    @property
    def refused(self) -> int:
        return sum(n for code, n in self.codes.items() if code >= 0x80)


class Attacker:
    """A unit's certificate in an attacker's hands: one connection at a time, back when cut."""

    def __init__(self, lab: Lab, unit_id: str, files: UnitFiles) -> None:
        self.lab, self.unit_id, self.files = lab, unit_id, files
        self.client: AsyncPaho | None = None
        self.acks = Acks()
        self.heard = Heard()
        self.cuts: list[tuple[float, int | None]] = []  # (when, DISCONNECT reason) the gateway cut us
        self.refused_connects: list[str] = []
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def first_cut(self) -> float | None:
        return self.cuts[0][0] if self.cuts else None

    async def connect(self) -> ConnectOutcome:
        client, outcome, _ = await self.lab.client(
            self.unit_id, self.files, subscribe=(f"fleet/{self.unit_id}/cmd/#",)
        )
        if not outcome.accepted:
            self.refused_connects.append(outcome.detail)
            return outcome
        self.connects += 1
        client.on_message = self.heard
        client.on_puback = self.acks

        def closed() -> None:
            if not client.closed_by_us:
                self.cuts.append((time.monotonic(), client.disconnect_code))

        client.on_close = closed
        self.client = client
        return outcome

    async def ensure(self) -> bool:
        """Connected, reconnecting if the gateway cut us (a bounded number of times)."""
        if self.connected:
            return True
        if self.connects > RECONNECTS or self.refused_connects:
            return False
        await asyncio.sleep(0.2)
        return (await self.connect()).accepted

    def publish(self, topic: str, payload: bytes) -> int | None:
        mid = self.client.publish(topic, payload, 1) if self.client is not None else None
        if mid is not None:
            self.acks.pending.add(mid)
        return mid

    async def settle(self, seconds: float = 2.0) -> None:
        await watch(lambda: not self.acks.pending or not self.connected, seconds)

    async def finish(self) -> tuple[str, bool]:
        """Leave, then come back once: (what the gateway left us with, quarantined?)."""
        if self.connected and self.client is not None:
            await self.client.disconnect()
        self.acks.pending.clear()
        outcome = await self.connect()
        if not outcome.accepted:  # a certificate that no longer connects: contained by revocation
            return f"its reconnect was refused ({outcome.detail})", False
        await watch(lambda: self.heard.mode == MODE_DIAGNOSTIC, 1.5)
        if self.client is not None:
            await self.client.disconnect()
        if self.heard.mode == MODE_DIAGNOSTIC:
            return "it comes back in diagnostic-only mode (quarantined)", True
        return "it comes back with full rights", False

    def cut_text(self, start: float) -> str:
        if not self.cuts:
            return ""
        at, code = self.cuts[0]
        more = f", {len(self.cuts)} cuts in all" if len(self.cuts) > 1 else ""
        return (
            f"disconnected ({describe_code(code)}) {(at - start) * 1000:.0f} ms after the attack began{more}"
        )
