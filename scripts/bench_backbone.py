"""What the cluster's shared parts can carry on this machine (not a test): the numbers behind the
capacity model in docs/cluster.md.

    .venv/bin/python scripts/bench_backbone.py [--seconds 10] [--writers 1,2,4] [--skip-pg] [--skip-nats]

PostgreSQL (Debian's postgresql, a throwaway server on loopback with fsync and synchronous commit
on, as in production): audit records appended per second through the real `AuditLog` (hash chain,
one advisory lock for every writer: pki/postgres.py), with 1, 2 and 4 writer processes, each with its
own connection, as nodes would; one record per commit, and 50 per commit (`AuditLog.batch`, what a
node's event tick does in a burst). Every connect, disconnect, quarantine and enrollment of a unit is
one such append, so this is the rate a reconnect storm of the whole fleet is recorded at.

NATS (Debian's nats-server, three servers with routes and JetStream on loopback): messages per
second one publisher pushes through core NATS to a subscriber on another server (the QoS 0 path
between nodes), and through a JetStream stream with three replicas, one at a time (each publish waits
for its acknowledgement: latency p50/p99) and pipelined (up to 256 unacknowledged; the rate).
Payloads of 100 bytes with the headers a backbone message carries.

Everything runs on the same machine as whatever else runs there: read the numbers as this machine's,
and say how busy it was (the script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADERS = {
    "Fg-Node": "node-a",
    "Fg-Id": "node-a:0a1b2c3d:12345",
    "Fg-Client": '"TRK-000123"',
    "Fg-Qos": "1",
    "Fg-Retain": "0",
    "Fg-Time": "1796000000000",
    "Fg-Mac": "0" * 64,
}
PAYLOAD = b"x" * 100
SUBJECT = "fleetgate.m.fleet.TRK-000123.telemetry.gps"


def _append_for(url: str, seconds: float, start: float, batch: int, out: multiprocessing.Queue[int]) -> None:
    from gateway.stores.audit_log import AuditLog
    from pki.sqlite import open_store

    conn = open_store(url)
    audit = AuditLog(conn, node=f"bench-{os.getpid()}")
    while time.time() < start:
        time.sleep(0.001)
    n = 0
    end = start + seconds
    while time.time() < end:
        with audit.batch():  # what the gateway's event tick does: its records in one commit
            for _ in range(batch):
                audit.append(
                    actor="unit:TRK-000123",
                    action="mqtt.connect",
                    subject="TRK-000123",
                    outcome="allowed",
                    details={"source": "10.1.2.3"},
                    now=datetime.now(UTC),
                )
        n += batch
    conn.close()
    out.put(n)


def bench_postgres(seconds: float, writers: list[int]) -> list[str]:
    from tests.pg import PgCluster, available

    if not available():
        return ["PostgreSQL: binaries not found (apt-get install postgresql); skipped"]
    lines = []
    with tempfile.TemporaryDirectory(prefix="fg-bench-pg-") as root:
        os.chmod(root, 0o755)
        cluster = PgCluster(Path(root))
        cluster.start(durable=True)
        try:
            for w, batch in [(w, 1) for w in writers] + [(w, 50) for w in writers]:
                url = cluster.new_database()
                from gateway.stores.audit_log import AuditLog
                from pki.sqlite import open_store

                AuditLog(open_store(url))  # the schema, before the clock starts
                out: multiprocessing.Queue[int] = multiprocessing.Queue()
                start = time.time() + 1.0
                procs = [
                    multiprocessing.Process(target=_append_for, args=(url, seconds, start, batch, out))
                    for _ in range(w)
                ]
                for p in procs:
                    p.start()
                total = sum(out.get() for _ in procs)
                for p in procs:
                    p.join()
                verified = AuditLog(open_store(url)).verify()
                lines.append(
                    f"PostgreSQL audit appends, {w} writer(s), {batch} per commit: {total / seconds:,.0f}/s "
                    f"(chain {'intact' if verified.ok else 'BROKEN'}, {total:,} records)"
                )
        finally:
            cluster.stop()
    return lines


async def _nats_rates(urls: list[str], seconds: float) -> list[str]:
    import nats

    pub = await nats.connect(urls[0])
    sub = await nats.connect(urls[1])
    lines = []

    got = 0

    async def count(msg: object) -> None:
        nonlocal got
        got += 1

    await sub.subscribe("fleetgate.m.>", cb=count)
    await sub.flush()
    await asyncio.sleep(0.5)  # interest crosses the route
    sent = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            await pub.publish(SUBJECT, PAYLOAD, headers=HEADERS)
        sent += 100
        await asyncio.sleep(0)
    await pub.flush()
    await asyncio.sleep(1.0)
    lines.append(
        f"core NATS, one publisher -> subscriber on another server: {sent / seconds:,.0f} msg/s sent, "
        f"{got:,} of {sent:,} received"
    )

    js = pub.jetstream()
    await js.add_stream(name="BENCH", subjects=["fleetgate.m.>"], num_replicas=3)
    lat = []
    end = time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await js.publish(SUBJECT, PAYLOAD, headers=HEADERS)
        lat.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(lat, n=100)
    lines.append(
        f"JetStream R3, one publish at a time: {len(lat) / (seconds / 2):,.0f} msg/s, "
        f"ack p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms"
    )

    window = 256
    acked = 0
    pending: set[asyncio.Future[object]] = set()
    end = time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        while len(pending) < window:
            pending.add(asyncio.ensure_future(js.publish(SUBJECT, PAYLOAD, headers=HEADERS)))
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        acked += sum(1 for d in done if d.exception() is None)
    await asyncio.gather(*pending, return_exceptions=True)
    lines.append(
        f"JetStream R3, up to {window} unacknowledged: {acked / (seconds / 2):,.0f} msg/s acknowledged"
    )
    await sub.close()
    await pub.close()
    return lines


def bench_nats(seconds: float) -> list[str]:
    from tests.harness import free_port
    from tests.nats import NATS_SERVER, NatsServer, wait_for_jetstream

    if not Path(NATS_SERVER).exists():
        return ["NATS: nats-server not found (apt-get install nats-server); skipped"]
    with tempfile.TemporaryDirectory(prefix="fg-bench-nats-") as root:
        routes = [free_port() for _ in range(3)]
        servers = [
            NatsServer(Path(root), cluster=(own, routes), jetstream=True, name=f"nats-{i}")
            for i, own in enumerate(routes)
        ]
        try:
            wait_for_jetstream(servers)
            return asyncio.run(_nats_rates([s.url for s in servers], seconds))
        finally:
            for s in servers:
                s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--writers", default="1,2,4")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-nats", action="store_true")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    lines: list[str] = []
    if not args.skip_pg:
        lines += bench_postgres(args.seconds, [int(w) for w in args.writers.split(",")])
    if not args.skip_nats:
        lines += bench_nats(args.seconds)
    for line in lines:
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
