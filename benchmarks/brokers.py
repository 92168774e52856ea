"""The brokers a benchmark drives, behind one small interface: start on a free port, pid, stop.

All are child processes of the benchmark, started fresh for every case and run (so one case's heap
or queues never flatter or burden the next) and stopped in a `finally`, Ctrl-C included.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from benchmarks.mosquitto import MosquittoProcess, stop_process, wait_listening, write_config


def _checkout_env() -> dict[str, str]:
    """This process's environment with the checkout on PYTHONPATH: benchmarks/ is not installed, and a
    child started with `-m benchmarks.…` (and amqtt loading its auth plugin by dotted name) must find it
    whatever the working directory."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


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


# The bench's units publish 10-20 msg/s each, 8-16x a normal unit (GPS 1/s, engine 1/5 s): at the
# earlier default thresholds (10/30 msg/s) the publish_rate detector called that a flood and throttled
# them, and the gateway would have been measured fighting a flood rather than routing. The defaults
# (35/60) now sit above the unit role's permitted rate; the override is kept so runs stay comparable.
# The QoS 1 fan-in case (`fanin_qos1`) has its units publish 100 msg/s each: the unit role's rate
# limit (20/s, burst 100) would refuse 80 % of that (PUBACK 0x87) and the case would measure the rate
# limiter, so the bench grants units 200/s (burst 1,000) and moves the detector's bar above what that
# permits (lint_policy: (1,000 + 200 x 10 s) / 10 s = 300/s). The other cases publish 10-20 msg/s per
# unit, within both the default and the raised limits, so they are measured as before.
# Only these limits and thresholds are raised; every other setting is the embedded default.
BENCH_PUBLISH_RATE = {"min_per_second": 400, "ceiling_per_second": 800}
BENCH_UNIT_LIMITS = {"messages_per_second": 200, "burst": 1000}


def bench_gateway_config(workdir: Path) -> Path:
    """gateway.yaml + policy.yaml for the bench: the embedded defaults, BENCH_PUBLISH_RATE and
    BENCH_UNIT_LIMITS applied."""
    from importlib import resources

    import yaml

    policy = yaml.safe_load(resources.files("gateway").joinpath("defaults/policy.yaml").read_text("utf-8"))
    policy["detectors"]["publish_rate"].update(BENCH_PUBLISH_RATE)
    policy["roles"]["unit"]["limits"].update(BENCH_UNIT_LIMITS)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bench-policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    config = workdir / "bench-gateway.yaml"
    config.write_text("policy_file: bench-policy.yaml\n")
    return config


class _ChildProcess:
    """A broker run as a child process of the bench: its pid, and a stop that always reaps it."""

    proc: subprocess.Popen[bytes] | None
    stop_timeout: float

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, self.stop_timeout)


class FleetgateBroker(_ChildProcess):
    """`fleetgate serve` on the bench's data directory (CA, registry, identities), with the embedded
    configuration but for the publish_rate detector's thresholds (`bench_gateway_config`).

    `source`: run the gateway from another checkout (its `gateway` package first on PYTHONPATH) to
    measure a change before and after in the same run.
    """

    def __init__(
        self,
        data_dir: Path,
        workdir: Path,
        *,
        name: str = "fleetgate",
        source: Path | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = dict(env or {})  # more settings for the gateway (FLEETGATE_…)
        self.workers = workers  # `serve --workers N` (docs/cluster.md); 1: the single process
        self.data_dir = data_dir
        self.workdir = workdir
        self.log = workdir / f"{name}.log"
        self.port = 0
        self.source = source
        self.proc = None
        self.stop_timeout = 20.0

    def start(self) -> None:
        import os

        self.port = free_port()
        args = [
            sys.executable, "-m", "gateway", "serve", "--data", str(self.data_dir),
            "--listen-mqtt", f"127.0.0.1:{self.port}", "--listen-https", f"127.0.0.1:{free_port()}",
            "--log-level", "warning", "--config", str(bench_gateway_config(self.workdir)),
        ]  # fmt: skip
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        env = {**os.environ, **self.env}
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: run in the
        # other checkout, or its `gateway` would be shadowed by ours (every path given is absolute).
        cwd = str(self.source) if self.source is not None else None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=cwd)
        wait_listening(self.proc, self.port, 30.0, self.log)
        if self.workers > 1:
            self._wait_for_workers(30.0)

    def _wait_for_workers(self, timeout: float) -> None:
        """The port answers once one worker listens: wait until every worker reports in the nodes
        table (`fleetgate cluster status`) with this run's port, and holds its connection to the local
        nats-server (benchmarks/nodes.py: backbone_ready), before any clock starts."""
        import time
        from datetime import UTC, datetime

        from benchmarks.nodes import backbone_ready
        from gateway.stores.cluster_nodes import ClusterNodes
        from pki.sqlite import open_store

        deadline = time.monotonic() + timeout
        mine = f"mqtt=127.0.0.1:{self.port}"
        while time.monotonic() < deadline:
            conn = open_store(str(self.data_dir / "fleetgate.db"))
            try:
                rows = ClusterNodes(conn).nodes(datetime.now(UTC))
            finally:
                conn.close()
            reported = sum(1 for row in rows if row.up and mine in row.listeners.split()) >= self.workers
            if reported and (self.env.get("FLEETGATE_CLUSTER_NATS") or backbone_ready(self.pid)):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.workers} workers did not all report and reach NATS within {timeout} s; see {self.log}"
        )


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


class AmqttBroker(_ChildProcess):
    """amqtt's broker (pure-Python asyncio, MQTT 3.1.1 only), run by benchmarks/amqtt_runner.py on uvloop.

    Same CA bundle, server certificate, CRL and client-certificate requirement as Mosquitto, the
    certificate's CN as identity, and the policy's grants as per-identity ACLs (`acl`, from
    amqtt_runner.topic_acls); what differs is listed in amqtt_runner's docstring.
    """

    def __init__(self, data_dir: Path, workdir: Path, acl: dict[str, dict[str, list[str]]]) -> None:
        self.name = "amqtt"
        self.data_dir = data_dir
        self.workdir = workdir / "amqtt"
        self.log = self.workdir / "amqtt.log"
        self.acl = acl
        self.port = 0
        self.proc = None
        self.stop_timeout = 10.0  # its shutdown is capped at 5 s (amqtt_runner)

    def start(self) -> None:
        from benchmarks.amqtt_runner import write_config  # imports amqtt: only when it is benchmarked

        self.port = free_port()
        conf = write_config(self.workdir, port=self.port, data_dir=self.data_dir, acl=self.acl)
        with self.log.open("ab") as log:
            args = [sys.executable, "-m", "benchmarks.amqtt_runner", "--config", str(conf)]
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=_checkout_env())
        wait_listening(self.proc, self.port, 30.0, self.log)
