"""A fleet on one machine (issues 17 and 18): N units at R msg/s each for S seconds against one target,
all connected first, then publishing telemetry to one `analytics` subscriber on `fleet/+/telemetry/#`.

    .venv/bin/python scripts/bench_fleet.py --target fleetgate-w2-haproxy --units 10000 --rate 1 \\
        --duration 300 --workdir /tmp/fgbench --json fleet-w2.json

Targets (each started fresh, stopped at the end, Ctrl-C included):
- `fleetgate`               one `fleetgate serve` process, clients connect to it directly;
- `fleetgate-w2`            `fleetgate serve --workers 2`, directly (the kernel spreads connections);
- `fleetgate-w2-haproxy`    `--workers 2` behind a throwaway HAProxy in TCP mode with PROXY v2, configured
                            from docs/cluster.md (tests/haproxy.py: the one implementation the suite uses),
                            the workers trusting its address (`listen.proxy_protocol_from`); where the
                            open-file limit cannot hold two descriptors per unit in one process, as many
                            HAProxy processes as it takes share the port (SO_REUSEPORT);
- `fleetgate-haproxy`       one process behind the same HAProxy;
- `mosquitto`               Mosquitto 2.x as scripts/bench configures it (no PROXY protocol: direct).

The gateway runs with scripts/bench's configuration (benchmarks/brokers.py: embedded defaults, the
bench's rate limits). Certificates: `fleetgate init` and one key and certificate per unit, issued once
into WORKDIR (the same layout as `scripts/bench --workdir`, so both share them) and reused by every
later run; issuing 10,000 takes a few minutes once (about 12 ms each on this machine).

Reported (printed, and all of it with --json): units connected (and per worker), sent, delivered, latency
p50/p95/p99/max, connect time, and CPU % (of one core) and RSS of each process over the publishing
window: the gateway (or each worker, the parent, the nats-server), HAProxy, Mosquitto, and the load
generator itself (this process; it is one process: its CPU says whether it kept up, with its lag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import resource
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.brokers import Broker, FleetgateBroker, MosquittoBroker  # noqa: E402
from benchmarks.mosquitto import acl_from_policy, load_policy  # noqa: E402
from benchmarks.nodes import ProcessMeter, connections_per_worker  # noqa: E402
from benchmarks.world import Scale, prepare_lab  # noqa: E402
from device_sim.load.run import LoadOptions, run_load  # noqa: E402

TARGETS = ("fleetgate", "fleetgate-w2", "fleetgate-w2-haproxy", "fleetgate-haproxy", "mosquitto")


def raise_fd_limits(connections: int) -> int:
    """Each unit is one socket here and one in the broker, and two in HAProxy (client and server
    side). The soft limit is raised to what this process needs (the hard limit too, where that is
    allowed: root with CAP_SYS_RESOURCE); a run that cannot fit stops with one sentence. Returns the
    open-file limit every child inherits."""
    needed = connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * needed:
        with contextlib.suppress(ValueError, OSError):  # enough for one HAProxy, where allowed
            resource.setrlimit(resource.RLIMIT_NOFILE, (2 * needed, 2 * needed))
            return 2 * needed
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"error: {connections} connections need {needed} open files per process but the hard limit "
            f"is {hard} and may not be raised here; raise it (limits.conf) or run fewer units"
        )
    limit = hard if hard != resource.RLIM_INFINITY else max(soft, 2 * needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return limit


def balancers_needed(connections: int, open_files: int) -> int:
    """HAProxy processes sharing one port (SO_REUSEPORT) so that each fits the open-file limit with
    two descriptors per connection, a quarter to spare for the kernel's uneven spread."""
    per_process = max(1, (open_files - 200) // 2)
    return max(1, math.ceil(connections * 1.25 / per_process)) if connections > per_process else 1


def make_target(name: str, lab_data: Path, root: Path) -> Broker:
    if name == "mosquitto":
        policy = load_policy(ROOT / "gateway" / "defaults" / "policy.yaml")
        return MosquittoBroker(lab_data, root, acl_from_policy(policy, operators=[]))
    workers = 2 if name.startswith("fleetgate-w2") else 1
    env = {"FLEETGATE_LISTEN_PROXY_PROTOCOL_FROM": BALANCER} if name.endswith("-haproxy") else {}
    return FleetgateBroker(lab_data, root, name=name, workers=workers, env=env)


BALANCER = "127.0.0.2"  # tests/haproxy.BALANCER_SOURCE: HAProxy's address towards the gateway


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root: Path = args.workdir
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    scale = replace(Scale.quick(), memory_sessions=(args.units,), fanout_subscribers=1)
    lab = prepare_lab(root, scale, args.protocol)
    issuing_s = round(time.monotonic() - started, 1)
    print(f"bench_fleet: CA and {args.units} unit certificates ready in {root} ({issuing_s} s)", flush=True)
    broker = make_target(args.target, lab.data, root)
    with ExitStack() as stack:
        broker.start()
        stack.callback(broker.stop)
        port, extra = broker.port, {}
        if args.target.endswith("-haproxy"):
            from tests.haproxy import BALANCER_SOURCE, Haproxy

            assert BALANCER_SOURCE == BALANCER
            count = balancers_needed(args.units + 10, args.open_files)
            maxconn = max(100, (args.open_files - 200) // 2)
            shared: int | None = None
            for i in range(count):  # one port: the kernel spreads the units over them
                balancer = stack.enter_context(
                    Haproxy.in_front_of(
                        root / f"haproxy-{i}", [("gw", broker.port)], maxconn=maxconn, port=shared
                    )
                )
                shared = balancer.port
                extra["haproxy" if count == 1 else f"haproxy_{i}"] = balancer.proc.pid
            assert shared is not None
            port = shared
            if count > 1:
                limit = args.open_files
                print(f"bench_fleet: {count} HAProxy processes share port {port} (open files {limit} each)")
        meter = ProcessMeter(broker.pid, extra=extra, always=True)
        spread: dict[str, int] = {}

        def on_phase(phase: str) -> None:
            if phase == "publishing":  # every unit connected: how they were spread over the workers
                spread.update(connections_per_worker(broker.pid, broker.port))
            meter.on_phase(phase)

        units = lab.units[: args.units]
        report = await run_load(
            LoadOptions(
                port=port, ca=lab.ca, identities={i.ident: i for i in (*units, lab.analytics)},
                unit_ids=[u.ident for u in units], units=args.units, rate_per_unit=args.rate,
                duration=args.duration, qos=args.qos, protocol=args.protocol, broker_pid=broker.pid,
                broker_label=args.target, progress=not args.no_progress, connect_concurrency=args.concurrency,
                keep_alive=args.keep_alive, on_phase=on_phase, drain_timeout=5.0, drain_limit=30.0,
            )
        )  # fmt: skip
    lab.close()
    data = report.to_dict()
    data.pop("series", None)
    return {
        "target": args.target,
        "units": args.units,
        "rate_per_unit": args.rate,
        "duration_s": args.duration,
        "qos": args.qos,
        "units_connected": report.units_connected,
        "connect_seconds": report.connect_seconds,
        "sent": report.sent,
        "delivered": report.delivered,
        "delivered_pct": round(100 * report.delivered / max(1, report.sent), 3),
        "latency_ms": report.latency_ms,
        "processes": meter.result,
        "connections_per_worker": spread,
        "generator_cpu_pct": report.generator_cpu_percent,
        "generator_max_lag_ms": report.generator_max_lag_ms,
        "certificates_ready_s": issuing_s,
        "report": data,
        "load_average": open("/proc/loadavg").read().split()[:3],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench_fleet.py", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=1.0, help="msg/s per unit (default 1)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of publishing (default 300)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--protocol", choices=("3.1.1", "5.0"), default="5.0")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight while connecting")
    parser.add_argument("--keep-alive", type=int, default=60)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/fgbench"),
        help="CA and certificates, kept and reused (the same layout as scripts/bench --workdir)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def summary(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    lines = [
        f"{result['target']}: {result['units_connected']:,}/{result['units']:,} units connected "
        f"in {result['connect_seconds']} s; {result['delivered']:,} of {result['sent']:,} delivered "
        f"({result['delivered_pct']} %); latency p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
        f"max {lat.get('max')} ms; generator CPU {result['generator_cpu_pct']} %, "
        f"lag {result['generator_max_lag_ms']} ms",
    ]
    if result["connections_per_worker"]:
        lines.append(
            "  connections: "
            + ", ".join(
                f"{k.removesuffix('_connections')} {v:,}" for k, v in result["connections_per_worker"].items()
            )
        )
    procs = result["processes"]
    for key in sorted(k for k in procs if k.endswith("_cpu_pct")):
        role = key.removesuffix("_cpu_pct")
        lines.append(f"  {role:<12} CPU {procs[key]:>5} %   RSS {procs.get(role + '_rss_mb')} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.open_files = raise_fd_limits(args.units + 10)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        result = asyncio.run(run(args))
    print(summary(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
