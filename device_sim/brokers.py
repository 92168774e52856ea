"""The brokers a benchmark drives, behind one small interface: start on a free port, pid, stop.

Both are child processes of the benchmark, started fresh for every case and run (so one case's heap
or queues never flatter or burden the next) and stopped in a `finally`, Ctrl-C included.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from device_sim.mosquitto import MosquittoProcess, wait_listening, write_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker(Protocol):
    name: str
    port: int

    @property
    def pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class FleetgateBroker:
    """`fleetgate serve` on the bench's data directory (CA, registry, identities).

    `source`: run the gateway from another checkout (its `gateway` package first on PYTHONPATH) to
    measure a change before and after in the same run.
    """

    def __init__(
        self, data_dir: Path, workdir: Path, *, name: str = "fleetgate", source: Path | None = None
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log = workdir / f"{name}.log"
        self.port = 0
        self.source = source
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        import os

        self.port = free_port()
        args = [
            sys.executable, "-m", "gateway", "serve", "--data", str(self.data_dir),
            "--listen-mqtt", f"127.0.0.1:{self.port}", "--listen-https", f"127.0.0.1:{free_port()}",
            "--log-level", "warning",
        ]  # fmt: skip
        env = dict(os.environ)
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        wait_listening(self.proc, self.port, 30.0, self.log)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MosquittoBroker:
    """Mosquitto 2.x with the same CA, server certificate, CRL and grants (see mosquitto.py)."""

    def __init__(self, data_dir: Path, workdir: Path, acl: str) -> None:
        self.name = "mosquitto"
        self.data_dir = data_dir
        self.workdir = workdir / "mosquitto"
        self.acl = acl
        self.port = 0
        self.process: MosquittoProcess | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.port = free_port()
        conf = write_config(self.workdir, port=self.port, data_dir=self.data_dir, acl=self.acl)
        self.process = MosquittoProcess(conf, self.workdir / "mosquitto.log")
        self.process.start(self.port)

    def reload(self) -> None:
        assert self.process is not None
        self.process.reload()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()
