"""Many lean clients at once: TLS contexts, bounded-concurrency connects, keep-alive, teardown.

Shared by load runs and every benchmark case that needs a crowd (connect storm, idle sessions,
fan-out, time to contain). Time to CONNACK is measured per client from the TCP connect to the CONNACK,
TLS handshake included; contexts are built beforehand so their cost (reading key files) is not in it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device_sim.load.client import ClientIdentity, LatencySink, LeanClient, client_context, open_client
from gateway.mqtt.packets import ProtocolVersion

PROTOCOLS = {"3.1.1": ProtocolVersion.MQTT_3_1_1, "5.0": ProtocolVersion.MQTT_5, "5": ProtocolVersion.MQTT_5}


def protocol_version(name: str) -> ProtocolVersion:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"protocol {name!r} is not 3.1.1 or 5.0") from None


def identities_in(*directories: Path) -> dict[str, ClientIdentity]:
    """Every <id>.crt with a matching <id>.key in the directories (ca.crt is the trust anchor, skipped)."""
    found: dict[str, ClientIdentity] = {}
    for directory in directories:
        for cert in sorted(directory.glob("*.crt")):
            key = cert.with_suffix(".key")
            if cert.name != "ca.crt" and key.exists():
                found[cert.stem] = ClientIdentity(cert.stem, cert, key)
    return found


@dataclass
class Crowd:
    """Connected clients and how connecting went."""

    clients: list[LeanClient] = field(default_factory=list)
    connack_ns: list[int] = field(default_factory=list)  # per successful client
    failures: Counter[str] = field(default_factory=Counter)
    started: float = 0.0  # perf_counter() of the first connect attempt
    finished: float = 0.0  # perf_counter() of the last CONNACK

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def rate(self) -> float:
        return len(self.clients) / self.seconds if self.seconds > 0 else 0.0


def contexts(identities: Sequence[ClientIdentity], ca: Path) -> list[ssl.SSLContext]:
    return [client_context(identity, ca) for identity in identities]


async def connect_crowd(
    host: str,
    port: int,
    identities: Sequence[ClientIdentity],
    ssl_contexts: Sequence[ssl.SSLContext],
    *,
    concurrency: int,
    version: ProtocolVersion,
    keep_alive: int = 60,
    sink: LatencySink | None = None,
    subscribe: Callable[[str], str] | None = None,
    subscribe_qos: int = 0,
    timeout: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Crowd:
    """Connect every identity (at most `concurrency` handshakes in flight); optionally subscribe each
    to `subscribe(ident)` (after its CONNACK, outside the time to CONNACK)."""
    crowd = Crowd()
    gate = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(identity: ClientIdentity, context: ssl.SSLContext) -> None:
        nonlocal done
        async with gate:
            started = time.perf_counter_ns()
            try:
                client, _ = await open_client(
                    host,
                    port,
                    context,
                    identity.ident,
                    version=version,
                    keep_alive=keep_alive,
                    sink=sink,
                    timeout=timeout,
                )
            except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
                crowd.failures[_reason(exc)] += 1
                return
            finally:
                done += 1
                if on_progress is not None:
                    on_progress(done, len(identities))
            crowd.connack_ns.append(time.perf_counter_ns() - started)
            crowd.finished = time.perf_counter()
            crowd.clients.append(client)
        if subscribe is not None:
            try:
                suback = await asyncio.wait_for(
                    client.subscribe(subscribe(identity.ident), subscribe_qos), timeout
                )
            except (ConnectionError, TimeoutError):
                crowd.failures["subscribe_failed"] += 1
                return
            if suback.reason_codes[0] >= 0x80:
                crowd.failures[f"subscribe_refused_0x{suback.reason_codes[0]:02x}"] += 1

    crowd.started = time.perf_counter()
    await asyncio.gather(*(one(i, c) for i, c in zip(identities, ssl_contexts, strict=True)))
    return crowd


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) and "CONNACK" in str(exc):
        return "connack_" + str(exc).rsplit("0x", 1)[-1]
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return f"tls_{exc.reason or 'error'}".lower()
    return type(exc).__name__.lower()


async def keep_alive_loop(
    clients: Sequence[LeanClient], keep_alive: float, silent: Sequence[LeanClient] = ()
) -> None:
    """PINGREQ for clients that wrote nothing for half their keep-alive: a subscriber that only listens
    (QoS 0) or an idle unit would otherwise be cut by the server after 1.5 keep-alives. `silent`:
    clients that may have written nothing for longer already (the subscriber, while thousands of
    units connected), pinged at once: pinged only after a whole keep-alive, such a subscriber was cut
    by the server 60 s into a 10,000-unit run whose units took 30 s to connect."""
    for client in silent:
        if client.connected:
            client.ping()
    last = {id(c): c.writes for c in clients}
    while True:
        await asyncio.sleep(keep_alive / 2)
        for client in clients:
            if client.connected and client.writes == last[id(client)]:
                client.ping()
            last[id(client)] = client.writes


async def close_all(clients: Sequence[LeanClient], wait: float = 2.0) -> None:
    """DISCONNECT and close every client; wait (bounded) until the sockets are gone."""
    for client in clients:
        client.disconnect()
    pending = [c.lost for c in clients if not c.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=wait)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


def pick(identities: Mapping[str, ClientIdentity], ids: Sequence[str]) -> list[ClientIdentity]:
    missing = [i for i in ids if i not in identities]
    if missing:
        raise LookupError(
            f"no certificate and key for {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
        )
    return [identities[i] for i in ids]
