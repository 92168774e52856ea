"""Throwaway nats-servers (Debian's nats-server package) for the cluster's backbone tests: three
servers clustered with routes on loopback (the production shape; each fleetgate node may connect to
a different one), ports from this worker's band. `nats_js_cluster` adds JetStream (each server its
own store directory and server name, so streams can have three replicas).

Outside CI a machine without the binary skips these tests with that reason; `.ci/run` installs the
package, so CI never skips them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port

NATS_SERVER = (
    os.environ.get("FLEETGATE_NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"
)


def skip_without_nats() -> None:
    if not Path(NATS_SERVER).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{NATS_SERVER} missing; .ci/run installs the nats-server package")
        pytest.skip(f"nats-server not found at {NATS_SERVER} (apt-get install nats-server)")


class NatsServer:
    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        cluster: tuple[int, list[int]] | None = None,
        jetstream: bool = False,
        name: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        """`cluster`: this server's route port and every server's route port (its own included).
        `jetstream`: with a store under `root` (kept across a restart of the same `name`). `extra`:
        more nats-server flags (TLS: `--tls --tlscert … --tlsverify …`)."""
        self.extra = extra
        self.root = root
        self.port = port or free_port()
        self.name = name or f"n{self.port}"
        self.cluster = cluster
        self.jetstream = jetstream
        self.log = root / f"nats-{self.name}.log"
        root.mkdir(parents=True, exist_ok=True)
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log), "-n", self.name]
        args += self.extra
        cluster = self.cluster
        if self.jetstream:
            args += ["-js", "-sd", str(self.root / f"js-{self.name}")]
        if cluster is not None:
            own, routes = cluster
            others = ",".join(f"nats://127.0.0.1:{p}" for p in routes if p != own)
            args += [
                "--cluster_name",
                "fleetgate-test",
                "--cluster",
                f"nats://127.0.0.1:{own}",
                "--routes",
                others,
            ]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return proc
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"nats-server did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no goodbye to the routes, JetStream's store as the crash left it."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start again on the same ports, name and store (after `kill` or `stop`)."""
        self.proc = self._start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NatsServer]]:
    """Three servers with routes between them; the fixture returns once each accepts clients (a
    subscription's interest then reaches the others within milliseconds)."""
    yield from _three_servers(tmp_path_factory, jetstream=False)


@pytest.fixture(scope="module")
def nats_js_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NatsServer]]:
    """Three servers with routes and JetStream, returned once the JetStream meta group has a leader
    (a stream with three replicas can then be created)."""
    yield from _three_servers(tmp_path_factory, jetstream=True)


def _three_servers(
    tmp_path_factory: pytest.TempPathFactory, *, jetstream: bool
) -> Iterator[list[NatsServer]]:
    skip_without_nats()
    root = tmp_path_factory.mktemp("nats")
    routes = [free_port() for _ in range(3)]
    servers: list[NatsServer] = []
    try:
        for i, own in enumerate(routes):
            servers.append(NatsServer(root, cluster=(own, routes), jetstream=jetstream, name=f"nats-{i}"))
        if jetstream:
            wait_for_jetstream(servers)
        yield servers
    finally:
        for server in servers:
            server.stop()


def wait_for_jetstream(servers: list[NatsServer], timeout: float = 20.0) -> None:
    """Until JetStream answers account info through every server (the meta leader is elected)."""
    import asyncio

    import nats

    async def ready(url: str) -> bool:
        try:
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    pending = [s.url for s in servers]
    while pending:
        pending = [url for url in pending if not asyncio.run(ready(url))]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"JetStream not ready on {pending} after {timeout:.0f} s")
        if pending:
            time.sleep(0.2)
