"""Listeners, the connection hub, timers and graceful shutdown.

The hub is the only place that maps broker connection ids to sockets. It applies the broker's
actions (Send, Close), runs one ticker for every timer the broker has (keep-alive, will delay,
session expiry), counts handshakes, and cuts off clients that stop reading. Every task it starts
is owned by it and cancelled at shutdown.

Write path: Sends are collected per connection and written once per event-loop iteration (a
call_soon flush), so a subscriber fed by a thousand publishers whose packets arrived in the same
iteration gets one write, one TLS record batch and one syscall instead of a thousand. A Close first
flushes what is pending for its connection, so the order the broker asked for is kept.

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
from gateway.edge.admission import SourceAdmission
from gateway.edge.reports import HandshakeFailure
from gateway.edge.transport import MqttConnection, MtlsListener, PeerCheck, format_address
from gateway.policy.access import Peer

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


class ConnectionHub:
    def __init__(
        self,
        broker: Broker,
        *,
        handshake_timeout: float = 10.0,
        max_write_buffer: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        admission: SourceAdmission | None = None,
    ) -> None:
        self.broker = broker
        self.admission = admission if admission is not None else SourceAdmission()
        self.handshake_timeout = handshake_timeout
        self.max_write_buffer = max_write_buffer
        self.counters = HubCounters()
        self.failures: list[HandshakeFailure] = []  # drained by the gateway
        self._clock = clock
        self._transports: dict[int, asyncio.Transport] = {}
        self._pending: dict[int, list[bytes]] = {}  # conn → bytes to write at the end of this iteration
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._wake = asyncio.Event()

    # --- called by transport protocols -------------------------------------------------------

    def admit_tcp(self, address: str) -> bool:
        if not self._accepting:
            return False
        if self.admission.admit(address, time.monotonic()):
            return True
        refused = self.admission.counters.refused
        if refused & (refused - 1) == 0:  # 1st, 2nd, 4th, 8th… refusal: a flood cannot flood the log
            log.warning("connection rate limit: refusing connections from %s (%d refused)", address, refused)
        return False

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
        pending = self._pending
        for action in actions:
            conn = action.conn
            if type(action) is Send:
                chunks = pending.get(conn)
                if chunks is not None:
                    chunks.append(action.data)
                elif conn in self._transports:
                    pending[conn] = [action.data]
                    if not self._flush_scheduled:
                        self._schedule_flush()
            elif type(action) is Close:
                self._write(conn, pending.pop(conn, None))
                transport = self._transports.get(conn)
                if transport is not None:
                    transport.close()  # flushes what was written, then connection_lost → broker

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # applied outside the event loop (a test, a shutdown path): write now
            self.flush_writes()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush_writes)

    def flush_writes(self) -> None:
        """Write everything pending, one write per connection."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for conn, chunks in pending.items():
            self._write(conn, chunks)

    def _write(self, conn: int, chunks: list[bytes] | None) -> None:
        transport = self._transports.get(conn)
        if not chunks or transport is None or transport.is_closing():
            return
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if transport.get_write_buffer_size() > self.max_write_buffer:
            self._cut_slow_consumer(conn, transport)

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
        self.flush_writes()
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
