"""The local nats-server of `fleetgate serve --workers N` when no cluster NATS is configured.

The parent process (gateway/app/workers.py) starts Debian's `nats-server` on loopback, on a free port,
with JetStream and its store in DATA/nats/jetstream, and points every worker at it
(FLEETGATE_CLUSTER_NATS). It dies with the parent (PR_SET_PDEATHSIG) and is restarted, on the same
port and store, if it dies on its own. Its log is DATA/nats/nats-server.log.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

NATS_SERVER_ENV = "FLEETGATE_NATS_SERVER"  # where the binary is, when not on PATH or in /usr/sbin
DEBIAN_PLACES = "/usr/sbin:/usr/local/sbin:/sbin"  # Debian installs it in /usr/sbin
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
NATS_DIR = "nats"


class NatsServerMissing(RuntimeError):
    """No nats-server binary; the message names the package."""


def find_nats_server(env: dict[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    named = environ.get(NATS_SERVER_ENV, "").strip()
    if named:
        if os.path.isfile(named) and os.access(named, os.X_OK):
            return named
        raise NatsServerMissing(
            f"{NATS_SERVER_ENV} names {named}, which is not an executable nats-server; install the "
            "Debian package nats-server (apt-get install nats-server) or set cluster.nats to a NATS cluster"
        )
    found = shutil.which("nats-server", path=f"{environ.get('PATH', '')}:{DEBIAN_PLACES}")
    if found is None:
        raise NatsServerMissing(
            "fleetgate serve --workers needs nats-server to carry messages between its workers and it "
            "is not installed; install the Debian package nats-server (apt-get install nats-server) or "
            "set cluster.nats to a NATS cluster"
        )
    return found


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalNats:
    """One nats-server on 127.0.0.1, with JetStream, supervised by the caller (`poll`, `restart`)."""

    def __init__(self, binary: str, data_root: Path, preexec: Callable[[], None]) -> None:
        self.binary = binary
        self.dir = data_root / NATS_DIR
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.log_path = self.dir / "nats-server.log"
        self._preexec = preexec
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> None:
        """Start on a free port (another one if a process took it meanwhile); RuntimeError if it
        will not start."""
        for _ in range(attempts):
            self.port = free_loopback_port()
            if self._start_on_port():
                return
        raise RuntimeError(f"nats-server did not start; see {self.log_path}")

    def restart(self) -> bool:
        """After it died: the same port (the workers' URL) and store."""
        return self._start_on_port()

    def _start_on_port(self) -> bool:
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-n", "fleetgate-local"]
        args += ["-js", "-sd", str(self.dir / "jetstream"), "-l", str(self.log_path)]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=self._preexec,
            process_group=0,  # Ctrl-C at a terminal goes to the parent, which stops it in order
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        self.kill()
        return False

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
