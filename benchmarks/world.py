"""The benchmark's fixed world: one fleet CA, its identities and their TLS contexts, and the sizes.

Both brokers trust the same CA and see the same certificates, so every case drives them with the
same clients. TLS contexts are built once per identity (about 2 ms each, mostly parsing the key) and
reused by every case and run; they are not part of any measured time.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from device_sim.load.client import ClientIdentity, client_context
from device_sim.load.identities import BulkIssuer, IssuedIdentity, unit_ids
from device_sim.load.swarm import identities_in, protocol_version
from gateway.mqtt.packets import ProtocolVersion


@dataclass(frozen=True)
class Scale:
    """How big each case is. `full()` is what docs/benchmarks.md reports; `quick()` is the smoke test."""

    throughput_seconds: float
    warmup_seconds: float
    qos0_window: int  # messages in flight publisher → subscriber (closed loop)
    fanin_units: int
    fanin_rates: tuple[float, ...]  # per unit, msg/s
    fanin_seconds: float
    fanout_subscribers: int
    fanout_messages: int
    broadcast_units: int
    broadcast_bursts: int
    storm_units: int
    memory_sessions: tuple[int, ...]
    contain_units: int
    settle_seconds: float = 1.0  # idle sessions: time for buffers to settle before reading RSS
    observe_seconds: float = 2.0  # Mosquitto containment: how long to watch for the session to go
    # QoS 1 fan-in under overload: units, msg/s per unit, seconds
    fanin_qos1: tuple[int, float, float] = (200, 100.0, 10.0)
    # the cross-node hop: a paced 1→1 stream, msg/s and seconds measured (after `warmup_seconds`)
    hop_rate: float = 5000.0
    hop_seconds: float = 10.0
    gen_procs: int = 1  # processes the fan-in cases' publishers are spread over (--gen-procs)
    # the generator check: msg/s per unit (x fanin_units), seconds per step, publishing processes
    gencheck_rates: tuple[float, ...] = (20.0, 50.0, 100.0, 150.0)
    gencheck_seconds: float = 5.0
    gencheck_procs: int = 2

    @staticmethod
    def full() -> Scale:
        return Scale(5.0, 1.0, 2000, 1000, (10.0, 20.0), 10.0, 1000, 20, 1000, 5, 1000, (1000, 10000), 5)

    @staticmethod
    def quick() -> Scale:
        scale = Scale(
            0.5, 0.2, 500, 20, (20.0,), 0.6, 20, 2, 20, 1, 20, (20,), 1, 0.2, 0.3, (20, 20.0, 0.6),
            gencheck_rates=(20.0,), gencheck_seconds=0.6,
        )  # fmt: skip
        return replace(scale, hop_rate=1000.0, hop_seconds=0.5)

    @property
    def units_needed(self) -> int:
        units = (self.fanin_units, self.fanin_qos1[0], self.broadcast_units, self.storm_units)
        return max(*units, *self.memory_sessions, 2)


@dataclass
class Lab:
    root: Path
    data: Path
    ca: Path
    units: list[ClientIdentity]
    operators: list[ClientIdentity]
    dispatch: ClientIdentity
    analytics: ClientIdentity
    protocol: str
    issuer: BulkIssuer
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    _fresh: int = 0

    @property
    def version(self) -> ProtocolVersion:
        return protocol_version(self.protocol)

    def context(self, identity: ClientIdentity) -> ssl.SSLContext:
        context = self._contexts.get(identity.ident)
        if context is None:
            context = self._contexts[identity.ident] = client_context(identity, self.ca)
        return context

    def contexts(self, identities: list[ClientIdentity]) -> list[ssl.SSLContext]:
        return [self.context(i) for i in identities]

    def fresh_units(self, count: int) -> list[IssuedIdentity]:
        """Units enrolled just now, never used before (the contain case revokes them)."""
        start = self._fresh + 1
        self._fresh += count
        return self.issuer.units(unit_ids(count, "CUT", start), self.root / "cut")

    def close(self) -> None:
        self.issuer.close()


def prepare_lab(root: Path, scale: Scale, protocol: str, echo: bool = True) -> Lab:
    """`fleetgate init` in ROOT/data (once), then the identities the cases need (reused if present)."""
    data = root / "data"
    if not (data / "fleetgate.db").exists():
        subprocess.run(
            [sys.executable, "-m", "gateway", "init", "--data", str(data),
             "--hostname", "localhost", "--hostname", "127.0.0.1", "--insecure-unencrypted-keys"],
            check=True, capture_output=True,
        )  # fmt: skip
    issuer = BulkIssuer(data)
    units_dir, ops_dir, svc_dir = root / "units", root / "operators", root / "services"
    have = identities_in(units_dir) if units_dir.exists() else {}
    wanted = unit_ids(scale.units_needed)
    missing = [u for u in wanted if u not in have]
    if missing:
        if echo:
            print(f"bench: issuing {len(missing)} unit certificates (one key each) ...", flush=True)
        issuer.units(missing, units_dir)
    ops = [f"OPS-{n:04d}" for n in range(1, scale.fanout_subscribers + 1)]
    have_ops = identities_in(ops_dir) if ops_dir.exists() else {}
    if [o for o in ops if o not in have_ops]:
        issuer.roles("operator", [o for o in ops if o not in have_ops], ops_dir, {"role": "ops"})
    if not (svc_dir / "dispatch.crt").exists():
        issuer.roles("service", ["dispatch", "analytics"], svc_dir)
    units = identities_in(units_dir)
    operators = identities_in(ops_dir)
    services = identities_in(svc_dir)
    cut = root / "cut"
    fresh = len(identities_in(cut)) if cut.exists() else 0
    return Lab(
        root=root,
        data=data,
        ca=data / "ca" / "root.crt",
        units=[units[u] for u in wanted],
        operators=[operators[o] for o in ops],
        dispatch=services["dispatch"],
        analytics=services["analytics"],
        protocol=protocol,
        issuer=issuer,
        _fresh=fresh,
    )
