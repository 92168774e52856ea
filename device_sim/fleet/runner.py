"""The fleet runner: N enrolled units driving their routes over real mTLS MQTT, in one event loop.

Theory of operation. Each unit is a `SimUnit`: a pure `UnitBehaviour` (what to say) plus one task
that owns its connection (`AsyncPaho`, paho-mqtt on the shared loop). The task's life is a loop:

    wait for coverage → renew the certificate if 2/3 of its life is over → connect → subscribe to
    cmd/# and control/# → announce presence → publish what the behaviour says is due, answer what
    arrives → (connection lost) → jittered exponential backoff → again

A unit that lost a working session starts its backoff from the bottom; one that keeps being
refused backs off further each time (capped), so a fleet refused by its gateway does not hammer it.
`Fleet.outage()` takes coverage away from every unit at once and gives it back at once: the cellular
outage of the reconnect-storm scenario. Every loop is bounded by `stop` and by time.

Counters live per unit (`UnitStats`) and are summed by `Fleet.totals()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

from device_sim.fleet.enroll import Issuers, UnitFiles, certificate_window, renew_one
from device_sim.fleet.paho_loop import V5, V311, AsyncPaho, ConnectOutcome, tls_context, version_name
from device_sim.fleet.unit import Outgoing, UnitBehaviour, UnitProfile, backoff_delay, renewal_due
from pki.est_client import EstClientError, EstServer, bootstrap

log = logging.getLogger("fleet_sim")

PROTOCOLS = ("3.1.1", "5.0", "mixed")
MAX_SAMPLES = 1000  # connect-time samples kept per unit
MIN_RENEWAL_INTERVAL = 10.0  # seconds between two renewals of one unit, whatever the certificates say


@dataclass(frozen=True)
class FleetConfig:
    host: str = "localhost"
    port: int = 8883
    est_url: str | None = None  # for renewals; None: units never renew
    protocol: str = "mixed"  # "3.1.1", "5.0" or "mixed" (alternating by unit)
    seed: int = 1
    profile: UnitProfile = field(default_factory=UnitProfile)
    keepalive: int = 60
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    renew_fraction: float = 2 / 3
    connect_workers: int = 16  # concurrent TCP+TLS handshakes
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")


@dataclass
class UnitStats:
    sent: int = 0  # PUBLISH packets handed to the connection
    acked: int = 0  # QoS >= 1 acknowledged with success
    refused: int = 0  # QoS >= 1 acknowledged with a failure reason (5.0: >= 0x80)
    refused_reasons: Counter[int] = field(default_factory=Counter)
    unacked: int = 0  # QoS >= 1 still unacknowledged when the connection went
    unsent: int = 0  # due while not connected: not sent at all
    received: int = 0  # messages from the gateway (cmd, control)
    acks_sent: int = 0  # cmd and control acks published
    connects: int = 0
    connect_failures: int = 0
    last_failure: str = ""
    sessions_lost: int = 0
    subscribe_refused: int = 0
    renewals: int = 0
    mode_rejected: int = 0  # mode commands ignored: not signed by the gateway, another unit's, replayed
    connect_ms: list[float] = field(default_factory=list)
    first_refused_at: float | None = None  # monotonic time of the first refusing PUBACK

    def add(self, other: UnitStats) -> None:
        for item in fields(self):
            value = getattr(other, item.name)
            if isinstance(value, int):
                setattr(self, item.name, getattr(self, item.name) + value)
        self.refused_reasons.update(other.refused_reasons)
        self.connect_ms.extend(other.connect_ms)
        self.last_failure = other.last_failure or self.last_failure


class SimUnit:
    """One truck's telematics unit: behaviour + credentials + a connection task."""

    def __init__(self, fleet: Fleet, unit_id: str, files: UnitFiles, version: str) -> None:
        self.fleet = fleet
        self.unit_id = unit_id
        self.files = files
        self.version = V5 if version == "5.0" else V311
        cfg = fleet.config
        self.behaviour = UnitBehaviour(unit_id, cfg.seed, time.time(), cfg.profile)
        self.stats = UnitStats()
        self.client: AsyncPaho | None = None
        self.mode_changes: list[tuple[float, str]] = []  # (when, new mode), as the unit saw them
        self.messages: list[tuple[float, str, bytes]] = []  # what arrived (bounded)
        self._rng = random.Random(f"backoff:{cfg.seed}:{unit_id}")
        self._pending: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._context: ssl.SSLContext | None = None
        self._window: tuple[float, float] | None = None  # the certificate's validity, read once
        self._subscribed = False
        self._next_renewal_allowed = 0.0
        self._renewal_requested = False

    @property
    def protocol(self) -> str:
        return version_name(self.version)

    @property
    def online(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def in_flight(self) -> int:
        """QoS >= 1 publishes not yet acknowledged on the current connection."""
        return len(self._pending)

    @property
    def ready(self) -> bool:
        """Connected and subscribed: a control message sent now reaches the unit."""
        return self.online and self._subscribed

    # --- I/O helpers ---------------------------------------------------------------------

    def publish(self, message: Outgoing) -> int | None:
        client = self.client
        mid = client.publish(message.topic, message.payload, message.qos, message.retain) if client else None
        if mid is None:
            self.stats.unsent += 1
            return None
        self.stats.sent += 1
        if message.qos:
            self._pending[mid] = time.monotonic()
        return mid

    def _on_puback(self, mid: int, code: int) -> None:
        if self._pending.pop(mid, None) is None:
            return  # QoS 0 "published" callbacks, or a session that is gone
        if code >= 0x80:
            self.stats.refused += 1
            self.stats.refused_reasons[code] += 1
            self.stats.first_refused_at = self.stats.first_refused_at or time.monotonic()
        else:
            self.stats.acked += 1

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        now = time.time()
        self.stats.received += 1
        if len(self.messages) < MAX_SAMPLES:
            self.messages.append((now, topic, payload))
        before, rejected = self.behaviour.mode, self.behaviour.mode_rejections.total()
        for message in self.behaviour.on_message(topic, payload, now):
            if self.publish(message) is not None and message.topic.endswith("/ack"):
                self.stats.acks_sent += 1
        if self.behaviour.mode_rejections.total() != rejected:
            self.stats.mode_rejected += 1
            log.warning("%s: ignored a mode command not from the gateway (%s)", self.unit_id, topic)
        if self.behaviour.mode != before:
            self.mode_changes.append((now, self.behaviour.mode))
            self._wake.set()  # the schedule changed: re-plan the next wake-up

    def wake(self) -> None:
        self._wake.set()

    async def _nap(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until something (stop, connection loss, a mode change) wakes us.

        A wake-up that came while we were busy is kept, so the nap then ends at once.
        """
        if self.fleet.stopping:
            return
        handle = asyncio.get_running_loop().call_later(max(0.0, seconds), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            handle.cancel()
            self._wake.clear()

    # --- the unit's life -----------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        fleet = self.fleet
        while not fleet.stopping:
            await fleet.coverage.wait()
            if fleet.stopping:
                break
            worked = await self._session()
            if fleet.stopping:
                break
            attempt = 0 if worked else attempt + 1
            delay = backoff_delay(attempt, self._rng, fleet.config.backoff_base, fleet.config.backoff_cap)
            self._wake.clear()  # the session that rang it is over; the backoff must not be cut short
            await self._nap(delay)

    async def _session(self) -> bool:
        await self._renew_if_due()
        outcome = await self.connect()
        if not outcome.accepted or self.client is None:
            return False
        client = self.client
        self._subscribed = False
        try:
            codes = await client.subscribe([(f, 1) for f in self.behaviour.subscriptions()])
            self.stats.subscribe_refused += sum(1 for c in codes if c >= 0x80)
            self._subscribed = True
        except (ConnectionError, TimeoutError):
            self._forget(client)
            return True
        for message in self.behaviour.on_connect(time.time()):
            self.publish(message)
        while client.connected and not self.fleet.stopping:
            for message in self.behaviour.step(time.time()):
                self.publish(message)
            if self._renewal_due():
                break  # renew, then reconnect with the new certificate
            await self._nap(self.behaviour.next_due() - time.time())
        if client.connected:
            await client.disconnect()
        else:
            self.stats.sessions_lost += 1
        self._forget(client)
        return True

    async def connect(self) -> ConnectOutcome:
        """One connection attempt with this unit's certificate and will."""
        fleet = self.fleet
        if self._context is None:
            self._context = tls_context(str(self.files.ca), str(self.files.cert), str(self.files.key))
        client = AsyncPaho(
            self.unit_id,
            self._context,
            version=self.version,
            will=_will(self.behaviour.will()),
            keepalive=fleet.config.keepalive,
            executor=fleet.executor,
            user_properties=self.behaviour.posture_properties(),
        )
        client.on_message = self._on_message
        client.on_puback = self._on_puback
        self.client = client
        outcome = await client.connect(fleet.config.host, fleet.config.port, fleet.config.connect_timeout)
        if outcome.accepted:
            # Mode commands are checked against the certificate the gateway showed in this handshake.
            self.behaviour.gateway_certificate = client.server_certificate()
            # Only a live session's loss should cut a nap short; a refused attempt must back off.
            client.on_close = self._wake.set
            self.stats.connects += 1
            if len(self.stats.connect_ms) < MAX_SAMPLES:
                self.stats.connect_ms.append(outcome.elapsed_ms)
        else:
            self.stats.connect_failures += 1
            self.stats.last_failure = outcome.detail
            self.client = None
        return outcome

    def _forget(self, client: AsyncPaho) -> None:
        self.stats.unacked += len(self._pending)
        self._pending.clear()
        if self.client is client:
            self.client = None

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (out of coverage, power cut): the will fires."""
        if self.client is not None:
            self.client.abort()

    # --- certificate renewal -------------------------------------------------------------

    def renew_soon(self) -> None:
        """Renew at the next step as if 2/3 of the certificate's life had passed (a test, or an
        operator's renewal campaign): leave politely, renew over EST, connect with the new one."""
        self._renewal_requested = True
        self.wake()

    def _renewal_due(self) -> bool:
        if self._renewal_requested and self.fleet.est is not None:
            return True
        if self.fleet.est is None or time.time() < self._next_renewal_allowed:
            return False
        if self._window is None:
            self._window = certificate_window(self.files)
        not_before, not_after = self._window
        return renewal_due(not_before, not_after, time.time(), self.fleet.config.renew_fraction)

    async def _renew_if_due(self) -> None:
        if self._renewal_due():
            await self.renew()

    async def renew(self) -> bool:
        """Re-enroll over EST (mTLS with the current certificate); the next connection uses the new one."""
        est = self.fleet.est
        if est is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.fleet.executor, self.fleet.renew_files, self.unit_id, self.files)
        except (EstClientError, OSError) as exc:
            self.stats.last_failure = f"renewal refused: {exc}"
            return False
        self.stats.renewals += 1
        self._renewal_requested = False
        self._context, self._window = None, None
        # A certificate so short-lived that it is due again at once must not become a renewal loop.
        self._next_renewal_allowed = time.time() + MIN_RENEWAL_INTERVAL
        return True


def _will(message: Outgoing) -> tuple[str, bytes, int, bool]:
    return message.topic, message.payload, message.qos, message.retain


def protocol_for(index: int, protocol: str) -> str:
    if protocol == "mixed":
        return "3.1.1" if index % 2 == 0 else "5.0"
    return protocol


class Fleet:
    """Run units until stopped: `async with Fleet(config, identities) as fleet: ...`."""

    def __init__(self, config: FleetConfig, identities: Mapping[str, UnitFiles]) -> None:
        self.config = config
        self.identities = dict(identities)
        self.executor = ThreadPoolExecutor(max_workers=config.connect_workers, thread_name_prefix="fleet")
        self.coverage = asyncio.Event()
        self.coverage.set()
        self.stopping = False
        self.est: EstServer | None = None
        self._issuers: Issuers | None = None
        self.units: dict[str, SimUnit] = {
            unit: SimUnit(self, unit, files, protocol_for(i, config.protocol))
            for i, (unit, files) in enumerate(sorted(self.identities.items()))
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, only: Iterable[str] | None = None) -> None:
        if self.config.est_url and self.est is None:
            first = next(iter(self.identities.values()), None)
            if first is not None:
                self.est = bootstrap(self.config.est_url, ca_file=first.ca)
                self._issuers = Issuers(self.est)
        for unit_id in only if only is not None else self.units:
            if unit_id not in self._tasks:
                self._tasks[unit_id] = asyncio.create_task(self.units[unit_id].run(), name=unit_id)

    def renew_files(self, unit_id: str, files: UnitFiles) -> None:
        assert self.est is not None and self._issuers is not None
        renew_one(self.est, self._issuers, unit_id, files)

    async def stop(self, timeout: float = 10.0) -> None:
        """Disconnect every unit politely (no wills), then cancel what is left."""
        self.stopping = True
        self.coverage.set()
        for unit in self.units.values():
            unit.wake()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("unit %s failed: %r", task.get_name(), task.exception())
        self._tasks.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- observation ---------------------------------------------------------------------

    @property
    def online(self) -> int:
        return sum(1 for unit in self.units.values() if unit.online)

    @property
    def ready(self) -> int:
        return sum(1 for unit in self.units.values() if unit.ready)

    async def wait_online(self, count: int | None = None, timeout: float = 30.0) -> int:
        """Wait until `count` units (default: all) are connected and subscribed; returns how many are."""
        want = len(self.units) if count is None else count
        deadline = time.monotonic() + timeout
        while self.ready < want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.ready

    def totals(self) -> UnitStats:
        total = UnitStats()
        for unit in self.units.values():
            total.add(unit.stats)
        return total

    def by_protocol(self) -> Counter[str]:
        return Counter(unit.protocol for unit in self.units.values())

    # --- disturbances --------------------------------------------------------------------

    async def outage(self, seconds: float) -> None:
        """Every unit loses coverage at once (no DISCONNECT, wills fire) and gets it back at once."""
        self.coverage.clear()
        for unit in self.units.values():
            unit.drop()
        await asyncio.sleep(seconds)
        self.coverage.set()
        for unit in self.units.values():
            unit.wake()
