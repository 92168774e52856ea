"""Listeners, the connection hub, timers and graceful shutdown.

The hub is the only place that maps broker connection ids to sockets. It applies the broker's
actions (Send, Close, and PauseReading/ResumeReading for a sender the broker holds back), runs one
ticker for every timer the broker has (keep-alive, will delay, session expiry), counts handshakes,
and cuts off clients that stop reading. Every task it starts
is owned by it and cancelled at shutdown. It also holds every listener's gate (admission.py): each
accepted socket of MQTT, HTTPS or the lab listener asks it first, and refusals are logged aggregated.

Read path: a connection's bytes (one data_received) are kept until the event loop has handed over
every read of the iteration; then one call_soon callback (`run_reads`) gives them all to the broker
in one `Broker.receive_batch` (one clock read, one commit, one list of actions) and writes the
results at once. Per connection the order of reads is kept; a connection lost runs what is pending
first, so its last bytes go before its loss.

Write path: Sends are collected per connection and written once per event-loop iteration (a
call_soon flush), so a subscriber fed by a thousand publishers whose packets arrived in the same
iteration gets one write, one TLS record batch and one syscall instead of a thousand. A Close first
flushes what is pending for its connection, so the order the broker asked for is kept. What arrives
as one batch already (the reads of an iteration; the cluster backbone's messages and store receipts,
`apply_now`) is written at once, not a turn of the loop later.

Shutdown runbook: stop accepting → tell sessions (5.0 DISCONNECT 0x8B) → drain writes (bounded)
→ close sockets → flush the store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.broker import Action, Broker, Close, PauseReading, ResumeReading, Send
from gateway.broker.histogram import Histogram
from gateway.edge.accept import AcceptLoop, NotLoopback, format_address, stream_server
from gateway.edge.admission import ConnectionGate, Slot, SourceAdmission
from gateway.edge.proxied import Balancers
from gateway.edge.refusal_log import RefusalLog
from gateway.edge.reports import HandshakeFailure
from gateway.edge.transport import MqttConnection, MtlsListener, PeerCheck
from gateway.policy.peer import Peer

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
    accept_failed: Counter[str] = field(default_factory=Counter)  # "listener errno"
    proxy_refused: Counter[str] = field(default_factory=Counter)  # balancers' sockets closed, by reason
    proxy_health_checks: int = 0  # a balancer's checks (LOCAL header, or no byte), answered by a close
    handshake_seconds: Histogram = field(default_factory=Histogram)  # completed TLS handshakes
    # One Broker.receive_batch call: decode, decide, route, encode and commit what every read of one
    # event-loop iteration carried.
    receive_seconds: Histogram = field(default_factory=Histogram)
    read_batches: int = 0  # receive_batch calls
    reads: int = 0  # connection reads they carried


# Without a plan from the runtime (tests): an MQTT gate with the configured defaults and a cap that
# only a test could reach.
DEFAULT_MQTT_CAP = 100_000


class ConnectionHub:
    def __init__(
        self,
        broker: Broker,
        *,
        handshake_timeout: float = 10.0,
        max_write_buffer: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        gates: dict[str, ConnectionGate] | None = None,
    ) -> None:
        self.broker = broker
        # One gate per listener ("mqtt", "https", "lab"), each with its own caps and rate buckets.
        self.gates = (
            gates
            if gates is not None
            else {"mqtt": ConnectionGate("mqtt", max_connections=DEFAULT_MQTT_CAP, rate=SourceAdmission())}
        )
        self.refusals = RefusalLog(log)  # admission refusals: aggregated, never one line per socket
        self.handshake_log = RefusalLog(log, level=logging.INFO)  # failed handshakes, likewise
        self.handshake_timeout = handshake_timeout
        self.max_write_buffer = max_write_buffer
        self.counters = HubCounters()
        self.failures: list[HandshakeFailure] = []  # drained by the gateway
        self._clock = clock
        self._transports: dict[int, asyncio.Transport] = {}
        self._pending: dict[int, list[bytes]] = {}  # conn → bytes to write at the end of this iteration
        self._reads: list[tuple[int, bytes]] = []  # (conn, bytes) read in this iteration, in order
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._wake = asyncio.Event()

    # --- called by transport protocols -------------------------------------------------------

    def admit(self, listener: str, address: str) -> Slot | None:
        """A slot for a new connection on `listener` from `address`, or None (the socket is closed)."""
        gate = self.gates[listener]
        if not self._accepting:
            return None
        now = time.monotonic()
        verdict = gate.admit(address, now)
        if isinstance(verdict, Slot):
            return verdict
        self.refusals.note(f"{listener} {verdict}", address, _refusal_detail(gate, verdict, address), now)
        return None

    def accept_failed(self, listener: str, exc: OSError) -> None:
        reason = f"accept_failed_{exc.errno}"
        self.counters.accept_failed[f"{listener} {exc.errno}"] += 1
        self.refusals.note(f"{listener} {reason}", "-", exc.strerror or str(exc), time.monotonic())
        if listener == "mqtt":  # reported like a failed handshake: the detectors and the audit see it
            self.failures.append(HandshakeFailure("listener", reason, self._clock()))

    def readmit(self, listener: str, slot: Slot, address: str) -> bool:
        """Whether a connection a balancer forwards for `address` (its PROXY header) may go on: the
        per-source limits are charged to `address` (admission.ConnectionGate.readmit)."""
        gate = self.gates[listener]
        now = time.monotonic()
        verdict = gate.readmit(slot, address, now)
        if verdict is None:
            return True
        self.refusals.note(f"{listener} {verdict}", address, _refusal_detail(gate, verdict, address), now)
        return False

    def proxy_refused(self, listener: str, address: str, reason: str, detail: str) -> None:
        """A balancer's socket closed for want of a valid PROXY v2 header (gateway/edge/proxied.py):
        counted, logged once per kind and interval; not audited (the balancer is ours, no client spoke)."""
        self.counters.proxy_refused[reason] += 1
        self.refusals.note(f"{listener} proxy_header_{reason}", address, detail, time.monotonic())

    def proxy_health_check(self, listener: str, address: str) -> None:
        self.counters.proxy_health_checks += 1

    def register(self, transport: asyncio.Transport, peer: Peer) -> int:
        conn = self.broker.open(peer, self._clock())
        self._transports[conn] = transport
        self._wake.set()  # the CONNECT timeout is a new deadline
        return conn

    def received(self, conn: int, data: bytes) -> None:
        """A connection's read: kept until the event loop has handed over every read of this
        iteration, then all of them go to the broker in one call (`run_reads`)."""
        reads = self._reads
        reads.append((conn, data))
        if len(reads) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside the event loop (a test): at once
                self.run_reads()
                return
            loop.call_soon(self.run_reads)

    def run_reads(self) -> None:
        """Every read since the last call, in one broker entry: one clock read, one commit, one list
        of actions, and one write per connection right after."""
        reads = self._reads
        if not reads:
            return
        self._reads = []
        started = time.perf_counter()
        actions = self.broker.receive_batch(reads, self._clock())
        self.counters.receive_seconds.observe(time.perf_counter() - started)
        self.counters.read_batches += 1
        self.counters.reads += len(reads)
        self._flush_scheduled = True  # written below, not on the next iteration
        try:
            self.apply(actions)
        finally:
            self.flush_writes()

    def lost(self, conn: int) -> None:
        if self._reads:
            self.run_reads()  # what it (or anyone) sent before the loss goes first
        self._transports.pop(conn, None)
        self.apply(self.broker.connection_lost(conn, self._clock()))

    def handshake_ok(self, seconds: float) -> None:
        self.counters.handshakes_ok += 1
        self.counters.handshake_seconds_total += seconds
        self.counters.handshake_seconds.observe(seconds)

    def handshake_failed(self, address: str, reason: str) -> None:
        self.counters.handshakes_failed[reason] += 1
        self.failures.append(HandshakeFailure(address, reason, self._clock()))
        self.handshake_log.note(f"mqtt TLS handshake {reason}", address, "failed", time.monotonic())

    def certificate_refused(self, address: str, reason: str) -> None:
        self.counters.certificates_refused[reason] += 1
        self.failures.append(HandshakeFailure(address, reason, self._clock()))
        self.handshake_log.note(f"mqtt client certificate {reason}", address, "refused", time.monotonic())

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
            elif type(action) is PauseReading:
                # The broker holds this sender back (its acknowledgements are withheld and it ignores
                # the Receive Maximum): the kernel's buffers and TCP's window then slow it down.
                transport = self._transports.get(conn)
                if transport is not None and not transport.is_closing():
                    transport.pause_reading()
            elif type(action) is ResumeReading:
                transport = self._transports.get(conn)
                if transport is not None and not transport.is_closing():
                    transport.resume_reading()

    def apply_now(self, actions: Iterable[Action]) -> None:
        """Apply a batch made outside a connection's read (the cluster backbone's messages, its store
        receipts) and write it at once, as run_reads does with the reads: it is one batch already,
        and the flush's own turn of the event loop would only add to every message's latency."""
        self._flush_scheduled = True
        try:
            self.apply(actions)
        finally:
            self.flush_writes()

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
        address = transport.get_extra_info("client_address") or format_address(
            transport.get_extra_info("peername")
        )
        log.info("cutting off %s: it stopped reading", address)
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
            now = time.monotonic()
            self.refusals.flush(now)
            self.handshake_log.flush(now)

    # --- shutdown -----------------------------------------------------------------------------

    async def shutdown(self, drain_timeout: float = 5.0) -> None:
        self._accepting = False
        self.run_reads()
        for gate in self.gates.values():
            gate.closed = True
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


def _refusal_detail(gate: ConnectionGate, reason: str, address: str) -> str:
    if reason == "listener_full":
        return f"the listener holds {gate.open} connections, its cap"
    if reason == "source_full":
        return f"this source holds {gate.held_by(address)} connections, the per-source cap"
    if reason == "rate_limited":
        rate = gate.rate
        per_second = rate.rate if rate is not None else 0
        return f"more than {per_second:g} new connections per second from this source"
    return "the gateway is shutting down"


async def start_mqtt_listener(
    hub: ConnectionHub,
    host: str,
    port: int,
    context: Any,
    peer_check: PeerCheck,
    balancers: Balancers | None = None,
    *,
    reuse_port: bool = False,
) -> tuple[MtlsListener, tuple[str, int]]:
    listener = MtlsListener(hub, context, peer_check, balancers)
    bound = await listener.start(host, port, reuse_port=reuse_port)
    return listener, bound


async def start_lab_listener(
    hub: ConnectionHub, host: str, port: int, *, reuse_port: bool = False
) -> tuple[AcceptLoop, tuple[str, int]]:
    """The anonymous plaintext listener, behind the same accept loop and admission as the others.

    Refuses to serve if the address it actually bound is not loopback (a host name such as
    `localhost` is resolved by the system, and could point anywhere)."""
    listener = AcceptLoop("lab", hub, stream_server(hub, lambda: MqttConnection(hub)))
    bound = await listener.start(host, port, reuse_port=reuse_port)
    if not _is_loopback(bound[0]):
        listener.close()
        raise NotLoopback(
            f"the lab listener bound {bound[0]}, which is not a loopback address; "
            "give --insecure-plaintext-listen 127.0.0.1:PORT or [::1]:PORT"
        )
    log.warning(LAB_WARNING, format_address(bound))
    hub.spawn(_keep_warning(format_address(bound)))
    return listener, bound


async def start_https_listener(
    hub: ConnectionHub,
    host: str,
    port: int,
    context: ssl.SSLContext,
    factory: Callable[[], asyncio.Protocol],
    *,
    reuse_port: bool = False,
) -> tuple[AcceptLoop, tuple[str, int]]:
    """EST and the admin API: our accept loop and admission in front of aiohttp's protocol, with the
    event loop's TLS bounded by the same handshake timeout as MQTT."""
    serve = stream_server(hub, factory, context=context, handshake_timeout=hub.handshake_timeout)
    listener = AcceptLoop("https", hub, serve)
    return listener, await listener.start(host, port, reuse_port=reuse_port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


async def _keep_warning(where: str) -> None:
    while True:
        await asyncio.sleep(60)
        log.warning(LAB_WARNING, where)
