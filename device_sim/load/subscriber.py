"""The measuring subscriber in a process of its own, for load runs where it must not share an event loop
with the publishers.

At QoS 1 a broker sends a subscriber at most its in-flight window (100 here) before it must wait for
acknowledgements, so a fan-in of 20k msg/s needs the subscriber to read, parse and acknowledge a
window every 5 ms. Sharing one event loop with hundreds of publishing connections, it does not (each
loop iteration serves every publisher's socket first), and a broker then sees a slow subscriber that
is really a busy load generator: Mosquitto drops what overflows its queue, fleetgate holds the
publishers back. Here the subscriber has its own process and loop; it reports its live count through
shared memory (read by the publishing side to know when everything arrived) and its latencies at the
end. Send times and arrival times are both `time.perf_counter_ns()`, CLOCK_MONOTONIC on Linux: one
clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from device_sim.load.client import ClientIdentity, LatencySink, client_context, open_client
from device_sim.load.swarm import close_all, keep_alive_loop, protocol_version

__all__ = ["RemoteSubscriber", "SubscriberSpec"]


@dataclass(frozen=True)
class SubscriberSpec:
    host: str
    port: int
    ca: Path
    identity: ClientIdentity
    topic_filter: str
    qos: int
    protocol: str  # "3.1.1" or "5.0"
    keep_alive: int
    server_hostname: str | None


class RemoteSubscriber:
    """What run_load needs of a sink: `count` while the run goes on; `latencies`, `marks` and `lost`
    once `finish()` returned."""

    def __init__(self, spec: SubscriberSpec) -> None:
        ctx = multiprocessing.get_context("spawn")  # no copy of the publishers' loop and sockets
        self._count: Synchronized[int] = ctx.Value("q", 0)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_main, args=(spec, self._count, child), daemon=True)
        self.latencies: array[int] = array("q")
        self.marks: list[tuple[int, int]] = []
        self.lost = False

    @property
    def count(self) -> int:
        return int(self._count.value)

    async def start(self, timeout: float = 60.0) -> None:
        """Start the process; return once it is connected and subscribed."""
        self._proc.start()
        kind, detail = await self._receive(timeout)
        if kind == "refused":
            raise PermissionError(str(detail))
        if kind != "ready":
            raise ConnectionError(f"the subscriber process failed: {detail}")

    async def finish(self, timeout: float = 60.0) -> None:
        """Stop it (it disconnects) and collect what it measured."""
        if not self._proc.is_alive():
            self.lost = True
            return
        self._conn.send("stop")
        kind, detail = await self._receive(timeout)
        if kind == "done":
            raw, self.marks, self.lost = detail
            self.latencies.frombytes(raw)
        await asyncio.get_running_loop().run_in_executor(None, self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.kill()

    async def _receive(self, timeout: float) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self._conn.poll, timeout)
        if not ready:
            self._proc.kill()
            raise TimeoutError("the subscriber process did not answer")
        try:
            message: tuple[str, Any] = self._conn.recv()
        except EOFError:
            return "failed", f"it exited with {self._proc.exitcode}"
        return message


def _main(spec: SubscriberSpec, count: Synchronized[int], conn: Connection) -> None:
    try:
        import uvloop

        uvloop.run(_serve(spec, count, conn))
    except ImportError:  # pragma: no cover - a dependency on Linux
        asyncio.run(_serve(spec, count, conn))
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))


async def _serve(spec: SubscriberSpec, count: Synchronized[int], conn: Connection) -> None:
    sink = LatencySink()
    client, _ = await open_client(
        spec.host,
        spec.port,
        client_context(spec.identity, spec.ca),
        spec.identity.ident,
        version=protocol_version(spec.protocol),
        keep_alive=spec.keep_alive,
        sink=sink,
        server_hostname=spec.server_hostname,
    )
    suback = await client.subscribe(spec.topic_filter, spec.qos)
    if suback.reason_codes[0] >= 0x80:
        conn.send(("refused", f"{spec.identity.ident} may not subscribe to {spec.topic_filter}"))
        await close_all([client])
        return
    conn.send(("ready", None))
    pinger = asyncio.get_running_loop().create_task(keep_alive_loop([client], spec.keep_alive))
    while not conn.poll():
        count.value = sink.count
        await asyncio.sleep(0.02)
    conn.recv()
    count.value = sink.count
    pinger.cancel()
    conn.send(("done", (sink.latencies.tobytes(), sink.marks, client.closed_at is not None)))
    await close_all([client])
