"""A load run's publishers spread over worker processes, so one Python process is never the limit.

    report = await run_load(LoadOptions(..., processes=4))   # run.py calls run_spread

The parent (run.py's process) keeps the measuring subscriber. It starts K workers
(`python -m device_sim.load.spread_worker`), each given its share of the units (unit i goes to worker
i mod K) as one JSON line on stdin. Each worker connects its units and answers `ready` (with its
connect times), then waits; when every worker is ready the parent sends one start time
(perf_counter(): CLOCK_MONOTONIC, the same clock in every process of the machine), and every worker
publishes its units on the run's schedule from then, offset by its index, so the K streams interleave
into one even stream. A worker then waits for its PUBACKs (QoS 1), reports what it sent, its drops and
its own CPU over the publishing, closes its connections and exits. Latency is measured where it was
before: in the subscriber, from the send time in each payload.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from device_sim.load.client import ClientIdentity, LatencySink, LeanClient
from device_sim.load.options import LoadOptions, PublishResult
from device_sim.load.swarm import Crowd


@dataclass
class Spread:
    """What the workers did, in the shapes run.py's report is built from."""

    crowd: Crowd  # connect times and failures of every worker (no clients: they live in the workers)
    result: PublishResult
    acked: int
    refused: int


def _spec(
    options: LoadOptions, units: list[ClientIdentity], ca: Path, index: int, count: int
) -> dict[str, Any]:
    mine = units[index::count]
    # What a worker process needs (no identities, no callbacks: on_phase is the parent's).
    parent_only = ("identities", "unit_ids", "certs_dir", "subscriber_dir", "broker_pid", "on_phase")
    opts = {
        f.name: (str(v) if isinstance(v := getattr(options, f.name), Path) else v)
        for f in fields(options)
        if f.name not in parent_only
    }
    opts.update(
        ca=str(ca),
        units=len(mine),
        subscriber=None,
        progress=False,
        processes=1,
        broker_label=f"worker {index}",
    )
    total_rate = len(units) * options.rate_per_unit
    return {
        "options": opts,
        "identities": [[u.ident, str(u.cert), str(u.key)] for u in mine],
        "phase": index / total_rate if total_rate else 0.0,  # worker i's messages fall between the others'
    }


async def _line(stream: asyncio.StreamReader, what: str) -> dict[str, Any]:
    raw = await stream.readline()
    if not raw:
        raise ConnectionError(f"a load worker exited before {what}")
    message: dict[str, Any] = json.loads(raw)
    return message


async def run_spread(
    options: LoadOptions,
    units: list[ClientIdentity],
    ca: Path,
    subscriber: LeanClient | None,
    sink: LatencySink,
) -> Spread:
    from device_sim.load import procstat

    count = min(options.processes, max(1, len(units)))
    workers = []
    try:
        for index in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "device_sim.load.spread_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(_spec(options, units, ca, index, count)).encode() + b"\n")
            await proc.stdin.drain()
            workers.append(proc)
        crowd = Crowd()
        connected = 0
        for proc in workers:
            assert proc.stdout is not None
            ready = await _line(proc.stdout, "connecting")
            crowd.connack_ns += ready["connack_ns"]
            crowd.failures.update(Counter(ready["failures"]))
            crowd.started = min(crowd.started or ready["started"], ready["started"])
            crowd.finished = max(crowd.finished, ready["finished"])
            connected += ready["connected"]
        start = time.perf_counter() + 0.2  # time for the start line to reach every worker
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"start": start}).encode() + b"\n")
            await proc.stdin.drain()
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        pid = options.broker_pid
        broker_before = procstat.sample(pid) if pid else None
        cpu_before = os.times()
        reports = []
        for proc in workers:
            assert proc.stdout is not None
            reports.append(await _line(proc.stdout, "publishing"))
        sent = sum(r["sent"] for r in reports)
        refused = sum(r["refused"] for r in reports)
        if subscriber is not None:  # the deliveries: as run.py's drain, with the workers' counts
            await _drain_deliveries(sink, sent - refused, options.drain_timeout, options.drain_limit)
        cpu_after = os.times()
        elapsed = time.perf_counter() - start
        broker_after = procstat.sample(pid) if pid else None
        for proc in workers:
            await proc.wait()
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    own = 100.0 * ((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)) / elapsed
    by_process = [own] + [r["cpu_pct"] for r in reports]
    drops: Counter[str] = Counter()
    for r in reports:
        drops.update(r["drops"])
    result = PublishResult(
        offered=sum(r["offered"] for r in reports),
        sent=sent,
        drops=dict(drops),
        start_ns=int(start * 1e9),
        max_lag_s=max(r["max_lag_s"] for r in reports),
        broker_before=broker_before,
        broker_after=broker_after,
        generator_cpu=sum(by_process),
        subscriber_lost=subscriber is not None and subscriber.closed_at is not None,
        cpu_by_process=by_process,
        units_connected=connected,
    )
    return Spread(crowd, result, sum(r["acked"] for r in reports), refused)


async def _drain_deliveries(sink: LatencySink, expected: int, timeout: float, limit: float | None) -> None:
    last, idle_since = sink.count, time.monotonic()
    end = idle_since + (limit if limit is not None else float("inf"))
    while sink.count < expected and time.monotonic() - idle_since < timeout and time.monotonic() < end:
        await asyncio.sleep(0.02)
        if sink.count != last:
            last, idle_since = sink.count, time.monotonic()
