"""Longer fuzz + crash soak outside CI: `scripts/soak --minutes 30` (or `python -m tests.hardening.soak`).

One real gateway (a subprocess on loopback, a fresh data directory) is attacked in rounds until the
time is up. Each round: live mTLS fuzzing (device_sim.attacks.fuzz) from enrolled units while a bystander
publishes at a steady rate; every `--kill-every` rounds a kill -9 cycle: units publish QoS 1/2 to an
offline persistent-session subscriber, the gateway is SIGKILLed mid-run and restarted, and the
subscriber must receive every acknowledged message; `fleetgate audit verify` must pass.

It reports (and writes as JSON with `--json FILE`): inputs tried, crashes (the gateway exiting when we
did not kill it; must be 0), internal errors from /metrics (must be 0), the bystander's sent/received,
acknowledged vs delivered per kill, and the gateway's RSS sampled every round (memory over time).
Exit status 1 if anything that must be 0 is not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sim.attacks.fuzz import FuzzStats, run_fuzz
from tests.hardening.common import AckLog, Bystander, Collector, internal_errors, rss_kib, v5_client
from tests.harness import Credentials, GatewayProcess


@dataclass
class SoakReport:
    minutes: float
    rounds: int = 0
    inputs: int = 0
    connections: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    disconnect_reasons: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    internal_errors: float = 0.0
    bystander_sent: int = 0
    bystander_missing: int = 0
    kills: list[dict[str, int]] = field(default_factory=list)
    audit_verify_failures: int = 0
    rss_kib: list[tuple[float, int]] = field(default_factory=list)

    def ok(self) -> bool:
        lost = sum(k["lost"] for k in self.kills)
        failures = (
            self.crashes,
            self.internal_errors,
            self.bystander_missing,
            lost,
            self.audit_verify_failures,
        )
        return not any(failures)

    def as_dict(self) -> dict[str, Any]:
        rss = [r for _, r in self.rss_kib]
        return {
            "minutes": self.minutes,
            "rounds": self.rounds,
            "inputs": self.inputs,
            "connections": self.connections,
            "outcomes": dict(self.outcomes),
            "disconnect_reasons": dict(self.disconnect_reasons),
            "crashes": self.crashes,
            "internal_errors": self.internal_errors,
            "bystander_sent": self.bystander_sent,
            "bystander_missing": self.bystander_missing,
            "kills": self.kills,
            "acknowledged_total": sum(k["acknowledged"] for k in self.kills),
            "lost_total": sum(k["lost"] for k in self.kills),
            "audit_verify_failures": self.audit_verify_failures,
            "rss_kib_min": min(rss, default=0),
            "rss_kib_max": max(rss, default=0),
            "rss_kib_over_time": self.rss_kib,
            "ok": self.ok(),
        }


def _fold(report: SoakReport, stats: FuzzStats) -> None:
    report.inputs += stats.inputs
    report.connections += stats.connections
    report.outcomes.update(stats.outcomes)
    report.disconnect_reasons.update({f"0x{k:02X}": v for k, v in stats.disconnect_reasons.items()})


def _alive(gw: GatewayProcess) -> bool:
    return gw.proc is not None and gw.proc.poll() is None


def fuzz_round(
    gw: GatewayProcess,
    units: list[Credentials],
    sub: Credentials,
    by: Credentials,
    seconds: float,
    seed: int,
    report: SoakReport,
) -> None:
    bystander = Bystander(gw, by, sub, rate=5)  # well under the publish_rate detector (35/s)
    bystander.start()
    contexts = [(u.ident, gw.client_context(u)) for u in units]
    stats = asyncio.run(
        run_fuzz("127.0.0.1", gw.mqtt_port, contexts, inputs=10**9, seconds=seconds, seed=seed)
    )
    seen = bystander.stop()
    _fold(report, stats)
    report.bystander_sent += int(seen["sent"])
    report.bystander_missing += int(seen["missing"])


def kill_cycle(gw: GatewayProcess, units: list[Credentials], sub: Credentials, report: SoakReport) -> None:
    """QoS 1/2 to an offline persistent subscriber, kill -9 mid-run, restart, check delivery."""
    first, props = v5_client(sub, clean=False, expiry=3600)
    first.connect("localhost", gw.mqtt_port, clean_start=False, properties=props)
    first.loop_start()
    first.subscribe("fleet/+/telemetry/engine", qos=2)
    time.sleep(0.5)
    first.disconnect()
    first.loop_stop()
    clients: list[tuple[Any, AckLog, Credentials]] = []
    for unit in units:
        client, unit_props = v5_client(unit)
        acks = AckLog()
        client.on_publish = acks.on_publish
        client.connect("localhost", gw.mqtt_port, properties=unit_props)
        client.loop_start()
        clients.append((client, acks, unit))
    stop = threading.Event()

    def publish() -> None:
        seq = 0
        while not stop.is_set() and seq < 5000:
            for client, acks, unit in clients:
                payload = f"{unit.ident}:{report.rounds}:{seq}:q{1 + seq % 2}"
                info = client.publish(f"fleet/{unit.ident}/telemetry/engine", payload, qos=1 + seq % 2)
                with acks.lock:
                    acks.sent[info.mid] = (payload, 1 + seq % 2)
            seq += 1
            stop.wait(1 / 9)  # under the unit rate (20/s) and the publish_rate detector (35/s)

    runner = threading.Thread(target=publish, daemon=True)
    runner.start()
    time.sleep(2.0)
    gw.stop(signal.SIGKILL)
    stop.set()
    runner.join(5)
    acknowledged: dict[str, int] = {}
    for client, acks, _ in clients:
        client.loop_stop()
        acknowledged.update(acks.acknowledged())
    gw.start()
    collector = Collector()
    again, props = v5_client(sub, clean=False, expiry=3600)
    again.on_message = collector.on_message
    again.connect("localhost", gw.mqtt_port, clean_start=False, properties=props)
    again.loop_start()
    collector.wait_quiet(2.0, 60)
    again.disconnect()
    again.loop_stop()
    received = Counter(collector.payloads())
    report.kills.append(
        {
            "acknowledged": len(acknowledged),
            "delivered": sum(1 for p in acknowledged if p in received),
            "lost": sum(1 for p in acknowledged if p not in received),
            "qos2_duplicates": sum(1 for p, n in received.items() if n > 1 and p.endswith(":q2")),
        }
    )
    if gw.cli("audit", "verify").code != 0:
        report.audit_verify_failures += 1


def soak(minutes: float, kill_every: int, round_seconds: float, seed: int, root: Path) -> SoakReport:
    report = SoakReport(minutes)
    gw = GatewayProcess(root)
    gw.init()
    gw.start()
    deadline = time.monotonic() + minutes * 60
    started = time.monotonic()
    try:
        units = [gw.enroll_unit(f"TRK-SOAK{i}") for i in range(4)]
        load_units = [gw.enroll_unit(f"TRK-LOAD{i}") for i in range(4)]
        by = gw.enroll_unit("TRK-SOAK-BY")
        sub = gw.issue("service", "dispatch")
        while time.monotonic() < deadline:
            report.rounds += 1
            fuzz_round(
                gw,
                units,
                sub,
                by,
                min(round_seconds, max(1.0, deadline - time.monotonic())),
                seed + report.rounds,
                report,
            )
            if not _alive(gw):
                report.crashes += 1
                print(f"gateway exited: see {gw.log_path}", file=sys.stderr)
                gw.proc = None
                gw.start()
            report.internal_errors = max(report.internal_errors, internal_errors(gw))
            report.rss_kib.append((round(time.monotonic() - started, 1), rss_kib(gw)))
            if kill_every and report.rounds % kill_every == 0 and time.monotonic() < deadline:
                kill_cycle(gw, load_units, sub, report)
            print(
                f"round {report.rounds}: {report.inputs} inputs, {report.crashes} crashes, "
                f"{len(report.kills)} kills ({sum(k['lost'] for k in report.kills)} lost), "
                f"RSS {report.rss_kib[-1][1]} KiB",
                flush=True,
            )
    finally:
        gw.stop(signal.SIGTERM)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--kill-every", type=int, default=3, help="a kill -9 cycle every N rounds (0: never)")
    parser.add_argument("--round-seconds", type=float, default=30.0, help="fuzzing per round (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="fuzzing seed (a run replays with the same seed)")
    parser.add_argument("--data", type=Path, help="work directory (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    root = args.data or Path(tempfile.mkdtemp(prefix="fleetgate-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    report = soak(args.minutes, args.kill_every, args.round_seconds, args.seed, root)
    result = report.as_dict()
    summary = {k: v for k, v in result.items() if k != "rss_kib_over_time"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
