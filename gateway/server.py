"""Listeners, the connection hub, timers and graceful shutdown.

The hub is the only place that maps broker connection ids to sockets. It applies the broker's
actions (Send, Close), runs one ticker for every timer the broker has (keep-alive, will delay,
session expiry), counts handshakes, and cuts off clients that stop reading. Every task it starts
is owned by it and cancelled at shutdown.

Shutdown runbook: stop accepting → tell sessions (5.0 DISCONNECT 0x8B) → drain writes (bounded)
→ close sockets → flush the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.broker import Action, Broker, Close, Send
from gateway.policy.access import Peer
from gateway.transport import MqttConnection, MtlsListener, PeerCheck, format_address

log = logging.getLogger("fleetgate.server")

LAB_WARNING = (
    "INSECURE plaintext listener on %s: clients are anonymous lab clients without certificates; "
    "use it only for local protocol testing"
)


@dataclass
class HubCounters:
    handshakes_ok: int = 0
    handshakes_failed: Counter[str] = field(default_factory=Counter)
    certificates_refused: Counter[str] = field(default_factory=Counter)
    slow_consumers_cut: int = 0
    handshake_seconds_total: float = 0.0


@dataclass(frozen=True)
class HandshakeFailure:
    """Reported to the gateway (audit, detectors) for every failed or refused TLS admission."""

    address: str
    reason: str
    at: float


class ConnectionHub:
    def __init__(
        self,
        broker: Broker,
        *,
        handshake_timeout: float = 10.0,
        max_write_buffer: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.handshake_timeout = handshake_timeout
        self.max_write_buffer = max_write_buffer
        self.counters = HubCounters()
        self.failures: list[HandshakeFailure] = []  # drained by the gateway
        self._clock = clock
        self._transports: dict[int, asyncio.Transport] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._wake = asyncio.Event()

    # --- called by transport protocols -------------------------------------------------------

    def admit_tcp(self, address: str) -> bool:
        return self._accepting

    def register(self, protocol: MqttConnection, transport: asyncio.Transport, peer: Peer) -> int:
        conn = self.broker.open(peer, self._clock())
        self._transports[conn] = transport
        self._wake.set()  # the CONNECT timeout is a new deadline
        return conn

    def received(self, conn: int, data: bytes) -> None:
        self.apply(self.broker.receive(conn, data, self._clock()))

    def lost(self, conn: int) -> None:
        self._transports.pop(conn, None)
        self.apply(self.broker.connection_lost(conn, self._clock()))

    def handshake_ok(self, seconds: float) -> None:
        self.counters.handshakes_ok += 1
        self.counters.handshake_seconds_total += seconds

    def handshake_failed(self, address: str, reason: str) -> None:
        self.counters.handshakes_failed[reason] += 1
        self.failures.append(HandshakeFailure(address, reason, self._clock()))
        log.info("TLS handshake from %s failed: %s", address, reason)

    def certificate_refused(self, address: str, reason: str) -> None:
        self.counters.certificates_refused[reason] += 1
        self.failures.append(HandshakeFailure(address, reason, self._clock()))
        log.info("client certificate from %s refused: %s", address, reason)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- actions ------------------------------------------------------------------------------

    def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            transport = self._transports.get(action.conn)
            if transport is None:
                continue
            if isinstance(action, Send):
                if transport.is_closing():
                    continue
                transport.write(action.data)
                if transport.get_write_buffer_size() > self.max_write_buffer:
                    self._cut_slow_consumer(action.conn, transport)
            elif isinstance(action, Close):
                transport.close()  # flushes what was written, then connection_lost → broker

    def _cut_slow_consumer(self, conn: int, transport: asyncio.Transport) -> None:
        # A client that stops reading must not make the gateway buffer without bound.
        self.counters.slow_consumers_cut += 1
        log.info("cutting off %s: it stopped reading", format_address(transport.get_extra_info("peername")))
        transport.abort()

    def run_ticker(self) -> None:
        self.spawn(self._ticker())

    async def _ticker(self) -> None:
        while True:
            deadline = self.broker.next_deadline()
            delay = 1.0 if deadline is None else min(1.0, max(0.0, deadline - self._clock()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self.apply(self.broker.tick(self._clock()))

    # --- shutdown -----------------------------------------------------------------------------

    async def shutdown(self, drain_timeout: float = 5.0) -> None:
        self._accepting = False
        self.apply(self.broker.shutdown(self._clock()))
        deadline = time.monotonic() + drain_timeout
        while self._transports and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for transport in list(self._transports.values()):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.broker.flush_store()

    @property
    def connection_count(self) -> int:
        return len(self._transports)


async def start_mqtt_listener(
    hub: ConnectionHub, host: str, port: int, context: Any, peer_check: PeerCheck
) -> tuple[MtlsListener, tuple[str, int]]:
    listener = MtlsListener(hub, context, peer_check)
    bound = await listener.start(host, port)
    return listener, bound


async def start_lab_listener(hub: ConnectionHub, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MqttConnection(hub), host, port, reuse_address=True)
    log.warning(LAB_WARNING, f"{host}:{port}")
    hub.spawn(_keep_warning(f"{host}:{port}"))
    return server


async def _keep_warning(where: str) -> None:
    while True:
        await asyncio.sleep(60)
        log.warning(LAB_WARNING, where)
