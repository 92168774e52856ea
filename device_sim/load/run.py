"""Load runs: N units publishing at a fixed rate, one subscriber service measuring what arrives.

    report = await run_load(LoadOptions(port=8883, certs_dir=Path("fleet"), units=1000, rate_per_unit=10))
    report.print_table(); Path("run.json").write_text(report.to_json()); report.write_png(Path("run.png"))

Theory of operation. One process, one event loop (uvloop when `run_load_sync` is used), one lean
asyncio Protocol per unit (device_sim.load.client). Phases:
  1. the subscriber (a service identity, default `analytics` on `fleet/+/telemetry/#`) connects;
  2. the units connect, at most `connect_concurrency` handshakes at a time (time to CONNACK per unit);
  3. publishing: message k of the run is due at t0 + k/(N·R) and belongs to unit k mod N, so every unit
     publishes every 1/R s and the units' phases are spread evenly over that period — a steady stream,
     not N-sized bursts. A single scheduler task wakes every `tick` s and sends what is due; how late it
     woke is reported as generator lag, so an overloaded generator cannot pass for a slow broker;
  4. drain: wait until everything sent has arrived (or stopped arriving, or `drain_limit` is up: a
     broker far behind would otherwise keep the run going for as long as its backlog lasts), then
     close everyone; what has not arrived by then counts as lost.
Each payload starts with the send time (perf_counter_ns: CLOCK_MONOTONIC on Linux, one clock for every
process of the machine), so the subscriber measures end-to-end latency. Drops are counted by where
they happened: not sent because the unit was disconnected or its QoS 1 window was full (a broker
that holds publishers back fills it), refused by the broker (5.0 PUBACK >= 0x80), or sent and never
delivered. At QoS 1 the report also says how many PUBLISHes the broker acknowledged and how much of
that reached the subscriber: a broker may be slow, but what it acknowledged it must deliver
(`acknowledged_not_delivered`).

With `processes` > 1 the units are spread over that many worker processes (device_sim.load.spread),
each connecting and publishing its share on the same schedule, interleaved; the subscriber stays in
this process. Each process's CPU is reported (`generator_cpu_by_process`, this process first), and
the report warns when one of them is near a whole core (`generator_warnings`): a generator that is
itself saturated measures itself, not the broker.

Works against any MQTT broker with mTLS (fleetgate, Mosquitto): give it the port, the CA and the
certificates. With `broker_pid` it also samples the broker's CPU and RSS from /proc.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from device_sim.load import procstat
from device_sim.load.client import (
    ClientIdentity,
    LatencySink,
    LeanClient,
    PublishTemplate,
    client_context,
    open_client,
)
from device_sim.load.options import LoadOptions, PublishResult
from device_sim.load.report import LoadReport, interval_series, ns_to_ms, percentiles
from device_sim.load.swarm import (
    Crowd,
    close_all,
    connect_crowd,
    contexts,
    identities_in,
    keep_alive_loop,
    pick,
)
from device_sim.load.swarm import protocol_version as parse_protocol
from gateway.mqtt.packets import ProtocolVersion

__all__ = ["LoadOptions", "LoadReport", "run_load", "run_load_sync"]


@dataclass
class _Credentials:
    ca: Path
    units: list[ClientIdentity]
    subscriber: ClientIdentity | None


def _credentials(opts: LoadOptions) -> _Credentials:
    known: dict[str, ClientIdentity] = dict(opts.identities or {})
    dirs = [d for d in (opts.certs_dir, opts.subscriber_dir) if d is not None]
    known.update(identities_in(*dirs))
    ca = opts.ca or (opts.certs_dir / "ca.crt" if opts.certs_dir else None)
    if ca is None or not ca.exists():
        raise FileNotFoundError(f"no CA certificate at {ca}; pass ca= (the fleet root, PEM)")
    subscriber = None
    if opts.subscriber is not None:
        subscriber = pick(known, [opts.subscriber])[0]
    ids = (
        list(opts.unit_ids) if opts.unit_ids is not None else sorted(i for i in known if i != opts.subscriber)
    )
    if len(ids) < opts.units:
        raise LookupError(f"{opts.units} units asked for, but credentials for only {len(ids)} were found")
    return _Credentials(ca, pick(known, ids[: opts.units]), subscriber)


class _Progress:
    """A rich progress display, or nothing (bench runs and tests)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            if enabled
            else None
        )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, description: str, total: float) -> TaskID | None:
        return None if self.bar is None else self.bar.add_task(description, total=total, info="")

    def update(self, task: TaskID | None, completed: float, info: str = "") -> None:
        if self.bar is not None and task is not None:
            self.bar.update(task, completed=completed, info=info)


def ensure_fd_limit(needed: int) -> None:
    """Raise this process's soft open-files limit to fit `needed` sockets, or say why it cannot."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OSError(
            f"{needed} connections need {needed} open files but the hard limit is {hard}; "
            "raise it (ulimit -Hn, /etc/security/limits.conf) or run fewer units"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def run_load(options: LoadOptions) -> LoadReport:
    """One load run against the broker at options.host:port; see the module docstring."""
    if options.qos not in (0, 1):
        raise ValueError("load runs use QoS 0 or 1")
    ensure_fd_limit(options.units + 256)  # one socket per unit, plus files, the subscriber and slack
    creds = _credentials(options)
    version = parse_protocol(options.protocol)
    sink = LatencySink()
    ssl_contexts = contexts(creds.units, creds.ca)
    subscriber: LeanClient | None = None
    clients: list[LeanClient] = []
    with _Progress(options.progress) as progress:
        try:
            if creds.subscriber is not None:
                subscriber, _ = await open_client(
                    options.host,
                    options.port,
                    client_context(creds.subscriber, creds.ca),
                    creds.subscriber.ident,
                    version=version,
                    keep_alive=options.keep_alive,
                    sink=sink,
                    server_hostname=options.server_hostname,
                )
                suback = await subscriber.subscribe(options.subscribe_filter, options.qos)
                if suback.reason_codes[0] >= 0x80:
                    raise PermissionError(
                        f"{creds.subscriber.ident} may not subscribe to {options.subscribe_filter}"
                        f" (SUBACK 0x{suback.reason_codes[0]:02x})"
                    )
            if options.processes > 1:
                from device_sim.load.spread import run_spread

                spread = await run_spread(options, creds.units, creds.ca, subscriber, sink)
                return _report(options, spread.crowd, spread.result, sink, spread.acked, spread.refused)
            connecting = progress.task("connecting", len(creds.units))
            crowd = await connect_crowd(
                options.host,
                options.port,
                creds.units,
                ssl_contexts,
                concurrency=options.connect_concurrency,
                version=version,
                keep_alive=options.keep_alive,
                on_progress=lambda done, total: progress.update(connecting, done, f"{done}/{total}"),
            )
            clients = crowd.clients
            by_ident = {c.ident: c for c in clients}
            units = [by_ident.get(i.ident) for i in creds.units]
            result = await _publish(options, version, units, subscriber, sink, progress)
        finally:
            await close_all([*clients, *([subscriber] if subscriber else [])])
    refused = sum(c.refused for c in clients)
    acked = sum(c.acked - c.refused for c in clients) if options.qos else 0
    return _report(options, crowd, result, sink, acked, refused)


def _report(
    options: LoadOptions, crowd: Crowd, result: PublishResult, sink: LatencySink, acked: int, refused: int
) -> LoadReport:
    lat = sink.latencies
    result_drops = result.drops
    delivered = min(sink.count, result.sent)
    result_drops["refused_by_broker"] = refused
    lost = max(0, result.sent - refused - delivered)
    if result.subscriber_lost and lost:
        result_drops["subscriber_disconnected"] = lost  # not the broker's loss: nobody was listening
    else:
        result_drops["lost_in_broker"] = lost
    if options.qos:
        result_drops["acknowledged_not_delivered"] = max(0, acked - delivered)
    return LoadReport(
        broker=options.broker_label,
        units_requested=options.units,
        units_connected=len(crowd.clients) or result.units_connected,
        connect_seconds=round(crowd.seconds, 3),
        connack_ms=ns_to_ms(percentiles(crowd.connack_ns)),
        connect_failures=dict(crowd.failures),
        duration_s=options.duration,
        qos=options.qos,
        payload_size=options.payload_size,
        protocol=options.protocol,
        offered=result.offered,
        sent=result.sent,
        delivered=delivered,
        latency_ms=ns_to_ms(percentiles(lat)),
        drops=result_drops,
        broker_cpu_percent=_round(procstat.cpu_percent(result.broker_before, result.broker_after)),
        broker_rss_mb={
            k: round(s.rss_bytes / 2**20, 1)
            for k, s in (("start", result.broker_before), ("end", result.broker_after))
            if s is not None
        },
        generator_cpu_percent=_round(result.generator_cpu),
        generator_max_lag_ms=round(result.max_lag_s * 1000, 1),
        series=interval_series(lat, sink.marks, result.start_ns),
        acked=acked,
        generator_cpu_by_process=[round(c, 1) for c in result.cpu_by_process]
        if result.cpu_by_process
        else ([round(result.generator_cpu, 1)] if result.generator_cpu is not None else []),
    )


async def _publish(
    opts: LoadOptions,
    version: ProtocolVersion,
    units: Sequence[LeanClient | None],
    subscriber: LeanClient | None,
    sink: LatencySink,
    progress: _Progress,
    *,
    start_at: float | None = None,
    deliveries: bool = True,
) -> PublishResult:
    """Publish on the schedule from `start_at` (a perf_counter() time; default now), then drain.
    `deliveries`: wait for the subscriber's deliveries too (False in a worker: it has none)."""
    n = len(units)
    templates = [
        PublishTemplate(opts.topic.format(unit=c.ident), opts.payload_size, opts.qos, version)
        if c is not None
        else None
        for c in units
    ]
    total_rate = n * opts.rate_per_unit
    drops = {"not_sent_disconnected": 0, "not_sent_window_full": 0}
    pid = opts.broker_pid
    listeners = [c for c in (*units, subscriber) if c is not None]
    silent = [subscriber] if subscriber is not None else []
    pinger = asyncio.get_running_loop().create_task(keep_alive_loop(listeners, opts.keep_alive, silent))
    publishing = progress.task("publishing", opts.duration)
    # Every connection made so far lives until the run ends: frozen, the cycle collector no longer
    # walks them. With 5,000 units this process's full collections took 37-184 ms, and one during
    # the publishing held back every delivery it was to stamp: counted as the broker's latency.
    # Against Mosquitto (90 s, docs/benchmarks.md): p99 8.0 -> 4.5 ms, max 27 -> 8.6 ms.
    gc.collect()
    gc.freeze()
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    broker_before = procstat.sample(pid) if pid else None
    if opts.on_phase is not None:
        opts.on_phase("publishing")
    cpu_before = os.times()
    start = time.perf_counter() if start_at is None else start_at
    start_ns = int(start * 1e9)
    k = 0
    offered_total = int(total_rate * opts.duration)
    max_lag = 0.0
    next_report = start
    window = opts.window
    try:
        while k < offered_total and n:
            now = time.perf_counter()
            due = min(offered_total, int((now - start) * total_rate) + 1)
            if due > k:
                max_lag = max(max_lag, now - (start + k / total_rate))
                stamp = time.perf_counter_ns()
                while k < due:
                    i = k % n
                    client, template = units[i], templates[i]
                    k += 1
                    if client is None or template is None or client.transport is None:
                        drops["not_sent_disconnected"] += 1
                    elif opts.qos and client.inflight >= window:
                        drops["not_sent_window_full"] += 1
                    else:
                        client.send(template, stamp)
            if now >= next_report:
                next_report = now + 0.5
                rate = sink.count / max(1e-9, now - start)
                progress.update(
                    publishing, now - start, f"{k:,} sent, {sink.count:,} delivered ({rate:,.0f}/s)"
                )
            await asyncio.sleep(opts.tick)
        sent = sum(u.sent for u in units if u is not None)
        await _drain(sink, units, sent, opts.drain_timeout, opts.drain_limit, deliveries)
    finally:
        pinger.cancel()
        gc.unfreeze()  # collected as usual again: a caller may run more loads in this process
    cpu_after = os.times()
    if opts.on_phase is not None:
        opts.on_phase("done")
    elapsed = time.perf_counter() - start
    progress.update(publishing, opts.duration, f"{sent:,} sent, {sink.count:,} delivered")
    used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return PublishResult(
        offered=offered_total,
        sent=sent,
        drops=drops,
        start_ns=start_ns,
        max_lag_s=max_lag,
        broker_before=broker_before,
        broker_after=procstat.sample(pid) if pid else None,
        generator_cpu=100.0 * used / elapsed if elapsed > 0 else None,
        subscriber_lost=subscriber is not None and subscriber.closed_at is not None,
    )


async def _drain(
    sink: LatencySink,
    units: Sequence[LeanClient | None],
    sent: int,
    timeout: float,
    limit: float | None,
    deliveries: bool = True,
) -> None:
    """Wait until everything sent arrived (or was refused; not asked if not `deliveries`) and was
    acknowledged (QoS 1), nothing arrived for `timeout` seconds, or `limit` seconds have passed."""
    last, idle_since = sink.count if deliveries else 0, time.monotonic()
    end = idle_since + (limit if limit is not None else float("inf"))
    while time.monotonic() - idle_since < timeout and time.monotonic() < end:
        live = [u for u in units if u is not None]
        acked = not any(u.inflight for u in live if u.transport is not None)
        if acked and (not deliveries or sink.count + sum(u.refused for u in live) >= sent):
            return
        await asyncio.sleep(0.02)
        progress = sink.count if deliveries else sum(u.acked for u in live)
        if progress != last:
            last, idle_since = progress, time.monotonic()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_load_sync(options: LoadOptions) -> LoadReport:
    """run_load on a fresh uvloop event loop (asyncio's own if uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux
        return asyncio.run(run_load(options))
    return uvloop.run(run_load(options))
