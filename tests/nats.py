"""A throwaway nats-server (Debian's nats-server package) for the cluster's backbone tests: one server
on loopback, a port from this worker's band, no JetStream (the first slice uses core NATS).

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
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "nats.log"
        root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    skip_without_nats()
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()
