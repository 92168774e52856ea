"""What a load run is asked to do (LoadOptions) and what its publishing did (PublishResult): a leaf
that run.py, spread.py and spread_worker.py all import, so the parent's and the workers' sides of a
spread run need no import of each other."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device_sim.load import procstat
from device_sim.load.client import ClientIdentity


@dataclass(frozen=True)
class LoadOptions:
    host: str = "127.0.0.1"
    port: int = 8883
    ca: Path | None = None  # the fleet root (PEM); default: certs_dir/ca.crt
    certs_dir: Path | None = None  # <id>.crt + <id>.key per unit (the layout device_sim.fleet.enroll writes)
    identities: Mapping[str, ClientIdentity] | None = None  # or explicit credentials (units + subscriber)
    units: int = 100  # how many units (the first N ids, sorted, unless unit_ids says which)
    unit_ids: Sequence[str] | None = None
    rate_per_unit: float = 1.0  # messages per second per unit
    duration: float = 10.0  # seconds of publishing
    qos: int = 0  # 0 or 1
    payload_size: int = 100  # bytes, timestamp included (minimum 8)
    protocol: str = "5.0"  # "3.1.1" or "5.0"
    subscriber: str | None = "analytics"  # the measuring service; None: publish only
    subscriber_dir: Path | None = None  # where <subscriber>.crt/.key are, if not in certs_dir
    topic: str = "fleet/{unit}/telemetry/gps"
    subscribe_filter: str = "fleet/+/telemetry/#"
    connect_concurrency: int = 100
    window: int = 100  # QoS 1: unacknowledged publishes per unit before the generator skips one
    keep_alive: int = 60
    broker_pid: int | None = None  # sample this process's CPU and RSS (the broker under test)
    broker_label: str = "broker"
    progress: bool = True
    drain_timeout: float = 5.0  # seconds without a delivery that end the drain
    drain_limit: float | None = None  # seconds the drain may last at most (None: as long as it delivers)
    tick: float = 0.005  # scheduler period, seconds
    server_hostname: str | None = None  # TLS name to verify (default: host)
    # called with "publishing" when the clock starts (every unit connected) and "done" after the drain,
    # beside the broker's CPU samples: a caller meters more processes over the same window
    on_phase: Callable[[str], None] | None = None
    processes: int = 1  # publishing processes (units spread over them); the subscriber stays here


@dataclass
class PublishResult:
    """What one publishing process did (run.py's _publish, or a spread worker's, summed)."""

    offered: int
    sent: int
    drops: dict[str, int]
    start_ns: int
    max_lag_s: float
    broker_before: procstat.ProcSample | None
    broker_after: procstat.ProcSample | None
    generator_cpu: float | None  # % of one core, every generator process together
    subscriber_lost: bool  # the measuring subscriber's connection went away during the run
    cpu_by_process: list[float] = field(default_factory=list)  # % of a core each; [] for one process
    units_connected: int = 0  # set when the units were connected elsewhere (worker processes)
