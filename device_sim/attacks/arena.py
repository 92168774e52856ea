"""The attack lab: what every scenario needs around a live gateway, and the result it reports.

A scenario is an attacker and a witness. The attacker is one or more units (freshly registered and
enrolled, so runs never interfere), or a certificate forged for the occasion. The witness is what a
fleet engineer can see without reaching into the gateway's memory: the answers on the wire (CONNACK,
SUBACK, PUBACK, DISCONNECT reasons, TLS alerts), what the dispatch service received, the mode
command the unit got, and the gateway's own records: its /metrics counters and its audit log.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_sim.fleet.dispatch import Dispatch
from device_sim.fleet.enroll import UnitFiles, enroll_fleet, fleetgate, register_units, run_fleetgate
from device_sim.fleet.paho_loop import V5, AsyncPaho, ConnectOutcome, tls_context
from device_sim.fleet.unit import MODE_DIAGNOSTIC, MODE_NORMAL

_METRIC = re.compile(r"^(fleetgate_[A-Za-z0-9_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$", re.M)


@dataclass(frozen=True)
class Target:
    data: Path  # the gateway's data directory (the simulator runs on the same machine)
    host: str = "localhost"
    port: int = 8883
    est_url: str = "https://localhost:8443"
    work: Path | None = None  # where attack identities go; default DATA/sim/attack

    @property
    def workdir(self) -> Path:
        # Apart from DATA/sim/units (`fleet-sim enroll`): a revoked attacker must not join the fleet.
        return self.work or self.data / "sim" / "attack"


@dataclass(frozen=True)
class ScenarioOptions:
    seed: int = 1
    flood_messages: int = 5000
    flood_seconds: float = 5.0
    storm_units: int = 50
    outage_seconds: float = 1.0
    watch_seconds: float = 5.0  # how long to wait for a detector or quarantine to respond
    unit_rate: float = 20.0  # the default policy's unit limit (messages/s) ...
    unit_burst: int = 100  # ... and burst: what a flood may get through


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    refused: bool  # the gateway refused, dropped or contained the attack
    what_gateway_did: str
    time_to_drop_ms: float | None = None  # attack start -> first refusal or cut connection
    time_to_contain_ms: float | None = None  # attack start -> quarantine (mode command) or revocation
    details: dict[str, Any] = field(default_factory=dict)
    attack: bool = True  # False for drills (reconnect storm) where `refused` would be the failure

    @property
    def held(self) -> bool:
        """Did the gateway do the right thing? Refuse an attack; not refuse a legitimate fleet."""
        return self.refused if self.attack else not self.refused

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "held": self.held}


def ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000.0, 1)


class Lab:
    def __init__(self, target: Target, options: ScenarioOptions) -> None:
        self.target = target
        self.options = options
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lab")
        self._dispatch_files: UnitFiles | None = None
        self._metrics_files: UnitFiles | None = None
        self.work = target.workdir
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- identities ----------------------------------------------------------------------

    def new_ids(self, label: str, count: int = 1) -> list[str]:
        # Fresh ids on every run: a data dir keeps every unit ever registered.
        tag = secrets.token_hex(2).upper()
        return [f"{label}-{tag}-{n:03d}" if count > 1 else f"{label}-{tag}" for n in range(1, count + 1)]

    async def units(self, label: str, count: int = 1) -> dict[str, UnitFiles]:
        """Register (fleet ops) and enroll over EST (the units) `count` fresh units."""
        tokens = register_units(self.target.data, self.new_ids(label, count))
        loop = asyncio.get_running_loop()
        root = self.target.data / "ca" / "root.crt"
        return await loop.run_in_executor(
            self.executor, enroll_fleet, self.target.est_url, root, tokens, self.work / "units"
        )

    async def unit(self, label: str) -> tuple[str, UnitFiles]:
        [(unit_id, files)] = (await self.units(label)).items()
        return unit_id, files

    def dispatch_files(self) -> UnitFiles:
        if self._dispatch_files is None:
            out = self.work / "services"
            cert, key = out / "dispatch.crt", out / "dispatch.key"
            if not (cert.exists() and key.exists()):
                fleetgate(self.target.data, "service", "add", "dispatch", "--out", str(out))
            self._dispatch_files = UnitFiles(cert, key, out / "ca.crt")
        return self._dispatch_files

    def metrics_files(self) -> UnitFiles:
        """An operator certificate with the `metrics` role: /metrics is not for strangers."""
        if self._metrics_files is None:
            out = self.work / "operators"
            cert, key = out / "arena-metrics.crt", out / "arena-metrics.key"
            if not (cert.exists() and key.exists()):
                fleetgate(
                    self.target.data,
                    "operator",
                    "add",
                    "arena-metrics",
                    "--role",
                    "metrics",
                    "--out",
                    str(out),
                )
            self._metrics_files = UnitFiles(cert, key, out / "ca.crt")
        return self._metrics_files

    async def dispatch(self) -> Dispatch:
        service = Dispatch(self.dispatch_files(), self.target.host, self.target.port, executor=self.executor)
        await service.start()
        return service

    async def client(
        self,
        unit_id: str,
        files: UnitFiles,
        *,
        client_id: str | None = None,
        version: Any = V5,
        subscribe: tuple[str, ...] = (),
    ) -> tuple[AsyncPaho, ConnectOutcome, list[int]]:
        """Connect as `files` with `client_id` (default: the unit's own id); subscribe if it worked."""
        context = tls_context(str(files.ca), str(files.cert), str(files.key))
        client = AsyncPaho(client_id or unit_id, context, version=version, executor=self.executor)
        outcome = await client.connect(self.target.host, self.target.port)
        codes: list[int] = []
        if outcome.accepted and subscribe:
            codes = await client.subscribe([(f, 1) for f in subscribe])
        return client, outcome, codes

    # --- the gateway's own records -------------------------------------------------------

    def audit_mark(self) -> int:
        records = self._audit()
        return int(records[-1]["seq"]) if records else 0

    def audit_since(self, mark: int, *who: str) -> Counter[str]:
        """Audit records after `mark` that name any of `who`, counted as 'action outcome reason'."""
        found: Counter[str] = Counter()
        for record in self._audit():
            if int(record.get("seq", 0)) <= mark:
                continue
            text = json.dumps(record)
            if any(w in text for w in who):
                found[" ".join(str(record.get(k, "")) for k in ("action", "outcome", "reason")).strip()] += 1
        return found

    def _audit(self) -> list[dict[str, Any]]:
        try:
            lines = run_fleetgate(self.target.data, "audit", "export").splitlines()
        except RuntimeError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    async def metrics(self) -> dict[str, float]:
        """The gateway's /metrics counters (empty if it has none or they cannot be read)."""
        url = self.target.est_url.rstrip("/") + "/metrics"
        context = ssl.create_default_context(cafile=str(self.target.data / "ca" / "root.crt"))
        try:
            files = self.metrics_files()  # in this thread: run_fleetgate borrows sys.stdout
        except RuntimeError:
            return {}
        context.load_cert_chain(str(files.cert), str(files.key))

        def fetch() -> str:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                return str(response.read().decode())

        try:
            text = await asyncio.get_running_loop().run_in_executor(self.executor, fetch)
        except OSError:
            return {}
        return {name: float(value) for name, value in _METRIC.findall(text)}

    @staticmethod
    def changed(before: dict[str, float], after: dict[str, float], *needles: str) -> dict[str, float]:
        """Counters that moved between two scrapes (optionally only those mentioning a needle)."""
        moved = {}
        for name, value in after.items():
            delta = value - before.get(name, 0.0)
            if delta > 0 and (not needles or any(n in name for n in needles)) and "seconds" not in name:
                moved[name.removeprefix("fleetgate_")] = round(delta, 3)
        return moved


_STAGES = {
    "handshakes_failed": "at the TLS handshake",
    "certificates_refused": "right after the TLS handshake, before any MQTT",
    "connects_refused": "at CONNECT",
}


def refusal_stage(moved: dict[str, float]) -> str | None:
    """'at the TLS handshake (certificate_verify_failed)' from the counters a refusal moved."""
    for key in moved:
        for family, stage in _STAGES.items():
            if key.startswith(family):
                reason = re.search(r'reason="([^"]+)"', key)
                return f"{stage} ({reason.group(1)})" if reason else stage
    return None


# --- what a unit heard from the gateway -----------------------------------------------------


@dataclass
class Heard:
    """The messages an attacking client received, with the time the first mode command arrived."""

    messages: list[tuple[float, str, bytes]] = field(default_factory=list)
    quarantined_at: float | None = None  # monotonic
    mode: str = MODE_NORMAL

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((time.monotonic(), topic, payload))
        if topic.endswith("/cmd/mode"):
            try:
                mode = json.loads(payload).get("mode", "")
            except (ValueError, AttributeError):
                return
            self.mode = str(mode)
            if mode == MODE_DIAGNOSTIC and self.quarantined_at is None:
                self.quarantined_at = time.monotonic()

    def on(self, prefix: str) -> int:
        return sum(1 for _, topic, _ in self.messages if topic.startswith(prefix))


async def watch(until: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll `until()` for up to `seconds`; True as soon as it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until():
            return True
        await asyncio.sleep(step)
    return bool(until())


def describe_code(code: int | None) -> str:
    return "none" if code is None else f"0x{code:02X} {REASONS.get(code, '')}".strip()


REASONS = {
    0x00: "success",
    0x02: "identifier rejected",
    0x80: "failure",
    0x85: "client identifier not valid",
    0x87: "not authorized",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
}
