"""Throwaway nats-servers (Debian's nats-server package) for the cluster's backbone tests: three
servers clustered with routes on loopback (the production shape; each fleetgate node may connect to
a different one), ports from this worker's band, no JetStream (the first slice uses core NATS).

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
        self, root: Path, *, port: int | None = None, cluster: tuple[int, list[int]] | None = None
    ) -> None:
        """`cluster`: this server's route port and every server's route port (its own included)."""
        self.port = port or free_port()
        self.log = root / f"nats-{self.port}.log"
        root.mkdir(parents=True, exist_ok=True)
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log)]
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
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

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
    skip_without_nats()
    root = tmp_path_factory.mktemp("nats")
    routes = [free_port() for _ in range(3)]
    servers: list[NatsServer] = []
    try:
        for own in routes:
            servers.append(NatsServer(root, cluster=(own, routes)))
        yield servers
    finally:
        for server in servers:
            server.stop()
