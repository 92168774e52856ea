"""The benchmark cases, each one `async (lab, broker, scale) -> metrics` against a live broker.

Every case uses the same topics under both brokers and stays inside fleetgate's default grants:
- throughput 1→1: `dispatch` publishes vehicle-control messages `fleet/TRK-00001/control/bench`
  to unit TRK-00001, subscribed to `fleet/TRK-00001/control/#` (a service: no per-unit rate limit);
- fan-in: units publish `fleet/<unit>/telemetry/gps`, service `analytics` subscribes
  `fleet/+/telemetry/#` (a load run, device_sim.load.run); at QoS 0 (`fanin`), and at QoS 1 offered
  beyond what a broker on this machine routes (`fanin_qos1`: is what was acknowledged delivered?);
- fan-out, true 1→N: `dispatch` publishes one message on `fleet/TRK-00001/cmd/notice`; N operator
  consoles subscribed to `fleet/+/cmd/#` each get a copy;
- dispatch broadcast: N units each subscribed to their own `fleet/<unit>/control/#`; `dispatch` sends
  one message per unit in one burst (N messages, N topics: what per-unit grants allow);
- connect storm, idle-session memory, time to contain: units connecting, idle, or being revoked;
- the generator check (`gencheck`): fan-in at rising rates, to show the load generator can take a
  broker (Mosquitto) to its limit with CPU to spare, before its numbers are used to compare.
The fan-in cases spread their publishers over `scale.gen_procs` processes (`--gen-procs`); every case
that reports generator CPU also reports a `generator_warning` when the generator was near its limit.
Metric names end in their unit; `*_per_s` are better higher, `*_ms` and `*_kb` better lower.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import nodes
from benchmarks.brokers import Broker, MosquittoBroker
from benchmarks.world import Lab, Scale
from device_sim.load import procstat
from device_sim.load.client import ClientIdentity, LatencySink, LeanClient, PublishTemplate, open_client
from device_sim.load.report import LoadReport, generator_warnings, percentiles
from device_sim.load.run import LoadOptions, run_load
from device_sim.load.swarm import close_all, connect_crowd
from gateway.mqtt.packets import Connack

Metrics = dict[str, Any]
Case = Callable[[Lab, Broker, Scale], Awaitable[Metrics]]


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


async def _client(
    lab: Lab, broker: Broker, identity: ClientIdentity, sink: LatencySink | None = None
) -> LeanClient:
    client, _ = await open_client(
        "127.0.0.1", broker.port, lab.context(identity), identity.ident, version=lab.version, sink=sink
    )
    return client


async def _subscribed(
    lab: Lab, broker: Broker, identity: ClientIdentity, topic_filter: str, qos: int, sink: LatencySink
) -> LeanClient:
    client = await _client(lab, broker, identity, sink)
    suback = await client.subscribe(topic_filter, qos)
    if suback.reason_codes[0] >= 0x80:
        raise PermissionError(f"{identity.ident} may not subscribe to {topic_filter}")
    return client


# --- 1. throughput 1→1 -----------------------------------------------------------------------------


async def _throughput(lab: Lab, broker: Broker, scale: Scale, qos: int, batched: bool = False) -> Metrics:
    """Closed loop: the publisher keeps `window` messages between itself and the subscriber.

    Each message is written on its own (one TLS record each, as client libraries do) unless `batched`:
    then a refill goes out as one write, many messages per record (QoS 0 only; see qos0_batched)."""
    unit = lab.units[0]
    sink = LatencySink()
    sub = await _subscribed(lab, broker, unit, f"fleet/{unit.ident}/control/#", qos, sink)
    # serve --workers N: the publisher on the subscriber's worker, as one stream is best served (the
    # kernel would otherwise put it on either, and a run would measure a hop or not by chance; the hop
    # case measures the difference)
    pids = nodes.workers(broker.pid)
    home = nodes.owner(pids, broker.port, _local_port(sub)) if pids else None
    pub, connack = await _placed_publisher(lab, broker, pids, home, same=True)
    template = PublishTemplate(f"fleet/{unit.ident}/control/bench", 100, qos, lab.version)
    window = scale.qos0_window if qos == 0 else 100
    receive_max = connack.properties.receive_maximum or 65535  # 5.0: the broker's in-flight cap for us
    batch_min = max(1, window // 8)  # refill in batches: one TLS record carries many messages

    def room() -> int:
        free = window - (pub.sent - sink.count)
        return min(free, receive_max - pub.inflight) if qos else free

    wake = asyncio.Event()

    def on_data() -> None:  # wake the publisher only when a batch fits: no wakeup per read
        if room() >= batch_min:
            wake.set()

    sub.on_data = pub.on_data = on_data
    marks: dict[str, tuple[float, int, procstat.ProcSample | None, float]] = {}
    loop = asyncio.get_running_loop()
    timed_out = False

    def on_timer() -> None:
        nonlocal timed_out
        timed_out = True
        wake.set()

    watchdog = loop.call_later(0, lambda: None)
    meter = nodes.ProcessMeter(broker.pid)  # serve --workers N: each worker's and nats-server's share
    per_process: dict[str, float] = {}
    try:
        started = time.perf_counter()
        warm_until = started + scale.warmup_seconds
        end = warm_until + scale.throughput_seconds
        while True:
            now = time.perf_counter()
            if "start" not in marks and now >= warm_until:
                meter.start()
                marks["start"] = (now, sink.count, procstat.sample(broker.pid), _own_cpu())
            if now >= end:
                marks["end"] = (now, sink.count, procstat.sample(broker.pid), _own_cpu())
                per_process = meter.stop()
                break
            if pub.transport is None or sub.transport is None:
                raise ConnectionError("a benchmark client was disconnected")
            free = room()
            # A partial batch goes out only when nothing arrived for a tick: a broker that holds back
            # what it has buffered until more input comes (seen with Mosquitto at QoS 1) would
            # otherwise wait for us while we wait for it.
            if free >= batch_min or (timed_out and free > 0):
                timed_out = False
                stamp = time.perf_counter_ns()
                # One write, hence one TLS record, per message, as an MQTT client library sends them:
                # a broker's cost per record is part of what is measured (see docs/benchmarks.md).
                if batched:
                    pub.write(template.burst(free, stamp), free, 0)
                    continue
                for _ in range(free):
                    pub.write(template.frame(pub.next_packet_id() if qos else 0, stamp), 1, qos)
                continue
            wake.clear()
            timed_out = False
            watchdog.cancel()
            watchdog = loop.call_later(min(_TICK, max(0.0, end - now)), on_timer)
            await wake.wait()
    finally:
        watchdog.cancel()
        await close_all([pub, sub])
    (t0, n0, b0, g0), (t1, n1, b1, g1) = marks["start"], marks["end"]
    lat = percentiles(sink.latencies[n0:n1])
    broker_cpu = procstat.cpu_percent(b0, b1) or 0.0
    generator_cpu = 100 * (g1 - g0) / (t1 - t0)
    # One connection each way, closed loop, in this one process: this case cannot be spread over
    # processes, so it says when its generator was near a core.
    return {
        "delivered_per_s": round((n1 - n0) / (t1 - t0)),
        "latency_p50_ms": _ms(lat.get("p50", 0)),
        "latency_p99_ms": _ms(lat.get("p99", 0)),
        "broker_cpu_pct": round(broker_cpu),
        "generator_cpu_pct": round(generator_cpu),
        "generator_warning": "; ".join(generator_warnings([generator_cpu], broker_cpu)),
        **per_process,
    }


_TICK = 0.005  # seconds without progress after which the throughput publisher sends a partial batch


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def qos0(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    return await _throughput(lab, broker, scale, 0)


async def qos1(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    return await _throughput(lab, broker, scale, 1)


async def qos0_batched(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """QoS 0 with each refill in one write (~100 messages per TLS record): the routing core's ceiling.
    Not offered at QoS 1: Mosquitto 2.0.11 then leaves part of a record unprocessed until more bytes
    arrive, and the closed loop stalls on it (a Mosquitto behaviour, not a measurement of it)."""
    return await _throughput(lab, broker, scale, 0, batched=True)


# --- 1b. the cross-node hop --------------------------------------------------------------------------


async def hop(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """The cost of a cross-node hop: the same paced 1→1 stream (`hop_rate` msg/s for `hop_seconds`, each
    message its own write, QoS 0 then QoS 1), publisher `dispatch` → unit TRK-00001 on its control
    topic, measured (a) with both clients on one node and (b) with the publisher on one worker of
    `serve --workers N` and the subscriber on another, the message crossing on NATS. Which worker took
    a connection is read from the sockets (benchmarks/nodes.py); the publisher reconnects until it
    lands where wanted. A single process (fleetgate, Mosquitto) has no hop: (a) only, and no
    `cross_node_*`/`hop_*` metrics (shown as "-"). `hop_p99_ms` = (b) p99 - (a) p99 (issue 17: < 2 ms at
    5k msg/s)."""
    pids = nodes.workers(broker.pid)
    out: Metrics = {}
    for qos in (0, 1):
        sink = LatencySink()
        unit = lab.units[0]
        sub = await _subscribed(lab, broker, unit, f"fleet/{unit.ident}/control/#", qos, sink)
        try:
            home = nodes.owner(pids, broker.port, _local_port(sub)) if pids else None
            placements = [("same_node", home)] if not pids else [("same_node", home), ("cross_node", home)]
            for label, _ in placements:
                pub, _ = await _placed_publisher(lab, broker, pids, home, same=label == "same_node")
                meter = nodes.ProcessMeter(broker.pid)
                meter.start()
                try:
                    result = await _paced(pub, sub, sink, lab, scale, qos, broker)
                finally:
                    await close_all([pub])
                for key, value in result.items():
                    out[f"qos{qos}_{label}_{key}"] = value
                if label == "cross_node":
                    out.update({f"qos{qos}_cross_node_{k}": v for k, v in meter.stop().items()})
            if pids:
                for p in ("p50", "p99"):
                    cross, same = out[f"qos{qos}_cross_node_{p}_ms"], out[f"qos{qos}_same_node_{p}_ms"]
                    out[f"qos{qos}_hop_{p}_ms"] = round(cross - same, 3)
        finally:
            await close_all([sub])
    return out


def _local_port(client: LeanClient) -> int:
    assert client.transport is not None
    return int(client.transport.get_extra_info("sockname")[1])


async def _placed_publisher(
    lab: Lab, broker: Broker, pids: dict[int, int], home: int | None, *, same: bool, attempts: int = 40
) -> tuple[LeanClient, Connack]:
    """`dispatch` connected to the subscriber's worker (`same`) or to another one; any node of a
    single process. The kernel spreads connections over the workers, so a few reconnects suffice."""
    for _ in range(attempts):
        pub, connack = await open_client(
            "127.0.0.1", broker.port, lab.context(lab.dispatch), lab.dispatch.ident, version=lab.version
        )
        if not pids:
            return pub, connack
        where = nodes.owner(pids, broker.port, _local_port(pub))
        if where is not None and (where == home) == same:
            return pub, connack
        await close_all([pub])
    raise RuntimeError(f"no connection landed {'on' if same else 'off'} worker {home} in {attempts} tries")


async def _paced(
    pub: LeanClient, sub: LeanClient, sink: LatencySink, lab: Lab, scale: Scale, qos: int, broker: Broker
) -> Metrics:
    """Open loop: `hop_rate` msg/s for warm-up + `hop_seconds`, each message its own write; the
    latency of what was sent after the warm-up, delivered within 3 s of the last send."""
    unit = lab.units[0]
    template = PublishTemplate(f"fleet/{unit.ident}/control/hop", 100, qos, lab.version)
    rate, window = scale.hop_rate, 100  # QoS 1: the brokers' in-flight limit
    sent = skipped = 0
    start_ns = time.perf_counter_ns()
    warm_ns = start_ns + int(scale.warmup_seconds * 1e9)
    end_ns = warm_ns + int(scale.hop_seconds * 1e9)
    first = sink.count
    counted_from: int | None = None
    sent_at_warm = 0
    before = procstat.sample(broker.pid)
    own = _own_cpu()
    while True:
        now = time.perf_counter_ns()
        if now >= end_ns:
            break
        if counted_from is None and now >= warm_ns:
            counted_from, sent_at_warm = sink.count, sent + skipped
            before, own = procstat.sample(broker.pid), _own_cpu()
        if pub.transport is None or sub.transport is None:
            raise ConnectionError("a benchmark client was disconnected")
        due = int((now - start_ns) * rate / 1e9) - sent - skipped
        for _ in range(due):
            if qos and pub.inflight >= window:
                skipped += 1
                continue
            pub.write(template.frame(pub.next_packet_id() if qos else 0, time.perf_counter_ns()), 1, qos)
            sent += 1
        await asyncio.sleep(0.001)  # 5 messages a tick at 5k msg/s, each stamped as it is written
    after, own_after = procstat.sample(broker.pid), _own_cpu()
    await _until_count(sink, first + sent, 3.0)
    measured = sink.latencies[(counted_from if counted_from is not None else first) :]
    lat = percentiles(measured)
    offered = sent + skipped - sent_at_warm
    return {
        "p50_ms": _ms(lat.get("p50", 0)),
        "p99_ms": _ms(lat.get("p99", 0)),
        "delivered_pct": round(100 * (sink.count - first) / max(1, sent), 2),
        "sent_per_s": round(offered / scale.hop_seconds),
        "held_back": skipped,
        "broker_cpu_pct": round(procstat.cpu_percent(before, after) or 0.0),
        # the generator shares the machine: on 2 cores, with 2 workers and a nats-server, say its share
        "generator_cpu_pct": round(100 * (own_after - own) / scale.hop_seconds),
    }


# --- 2. fan-in ---------------------------------------------------------------------------------------


async def fanin(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """Units publishing at each rate for `fanin_seconds`; delivered = arrived by `fanin_seconds` after the
    last publish (a broker far behind, amqtt at 10k msg/s and up, is not waited for; the rest counts as
    lost), `delivered_per_s` = delivered / `fanin_seconds`."""
    out: Metrics = {}
    for rate in scale.fanin_rates:
        offered = scale.fanin_units * rate
        meter = nodes.ProcessMeter(broker.pid)
        report = await run_load(
            LoadOptions(
                port=broker.port, ca=lab.ca,
                identities={i.ident: i for i in (*lab.units[: scale.fanin_units], lab.analytics)},
                unit_ids=[u.ident for u in lab.units[: scale.fanin_units]], units=scale.fanin_units,
                rate_per_unit=rate, duration=scale.fanin_seconds, protocol=lab.protocol,
                broker_pid=broker.pid, broker_label=broker.name, progress=False, drain_timeout=3.0,
                drain_limit=max(3.0, scale.fanin_seconds), on_phase=meter.on_phase,
                processes=scale.gen_procs,
            )
        )  # fmt: skip
        tag = f"{offered / 1000:g}k"
        lat = report.latency_ms
        out[f"{tag}_delivered_per_s"] = round(report.delivered_rate)
        out[f"{tag}_delivered_pct"] = round(100 * report.delivered / max(1, report.offered), 2)
        out[f"{tag}_latency_p50_ms"] = lat.get("p50", 0.0)
        out[f"{tag}_latency_p99_ms"] = lat.get("p99", 0.0)
        out[f"{tag}_broker_cpu_pct"] = report.broker_cpu_percent
        out[f"{tag}_generator_lag_ms"] = report.generator_max_lag_ms
        out.update({f"{tag}_{k}": v for k, v in meter.result.items()})  # serve --workers N: per process
        out.update(_generator_cpu(report, f"{tag}_"))
    return out


def _generator_cpu(report: LoadReport, prefix: str = "") -> Metrics:
    """The generator's CPU: all its processes together, the busiest one, and a warning if needed."""
    by_process = report.generator_cpu_by_process
    return {
        f"{prefix}generator_cpu_pct": report.generator_cpu_percent,
        f"{prefix}generator_cpu_max_pct": max(by_process) if by_process else None,
        f"{prefix}generator_procs": len(by_process),
        f"{prefix}generator_warning": "; ".join(report.generator_warnings),
    }


async def gencheck(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """Can the generator take this broker to its limit? Fan-in (QoS 0, `fanin_units` units) at rising
    offered rates (`gencheck_rates`, msg/s per unit, `gencheck_seconds` each), publishers spread over
    `gencheck_procs` processes. Per step: delivered msg/s, the broker's CPU, the generator's busiest
    process, how far it fell behind its schedule (`generator_lag_ms`: delivered msg/s are per
    scheduled second, so a generator far behind overstates them). It stops at the first step that
    reaches the broker's limit or warns about the generator. `broker_limit_reached`: a step had the
    broker at >= 90 % of a core (Mosquitto is one thread); `generator_headroom`: in that step no
    generator process was near a core and generator + broker did not fill the machine, i.e. the
    broker, not the generator, was the limit. On a machine with fewer cores than broker + generator
    need, the second cannot hold, and the check says so."""
    out: Metrics = {}
    reached = headroom = False
    best = 0
    for rate in scale.gencheck_rates:
        report = await run_load(
            LoadOptions(
                port=broker.port, ca=lab.ca,
                identities={i.ident: i for i in (*lab.units[: scale.fanin_units], lab.analytics)},
                unit_ids=[u.ident for u in lab.units[: scale.fanin_units]], units=scale.fanin_units,
                rate_per_unit=rate, duration=scale.gencheck_seconds, protocol=lab.protocol,
                broker_pid=broker.pid, broker_label=broker.name, progress=False, drain_timeout=2.0,
                drain_limit=max(2.0, scale.gencheck_seconds), processes=scale.gencheck_procs,
            )
        )  # fmt: skip
        tag = f"{scale.fanin_units * rate / 1000:g}k"
        broker_cpu = report.broker_cpu_percent or 0.0
        out[f"{tag}_delivered_per_s"] = round(report.delivered_rate)
        out[f"{tag}_broker_cpu_pct"] = report.broker_cpu_percent
        out[f"{tag}_generator_lag_ms"] = report.generator_max_lag_ms  # behind its schedule by at most
        out.update(_generator_cpu(report, f"{tag}_"))
        best = max(best, round(report.delivered_rate))
        if broker_cpu >= 90.0:
            reached, headroom = True, not report.generator_warnings
        if reached or report.generator_warnings:
            break  # past this step a higher rate measures the generator, not the broker
    out["max_delivered_per_s"] = best
    out["broker_limit_reached"] = reached
    out["generator_headroom"] = headroom
    return out


# --- 3. fan-out --------------------------------------------------------------------------------------


async def fanin_qos1(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """QoS 1 fan-in under overload: `fanin_qos1` = (units, msg/s each, seconds), 100-byte payloads,
    one QoS 1 subscriber on `fleet/+/telemetry/#`. A broker may be slower than the offer (then its
    units' QoS 1 windows fill and the generator skips sends: `held_back_pct`), but what it
    acknowledged it must deliver: `delivered_of_acked_pct` must be 100. The drain waits (bounded)
    for every PUBACK and every delivery. Mosquitto in the same run shows what the same generator
    offers and takes (`sent_per_s`, `delivered_per_s`, `generator_lag_ms`): a fleetgate figure below
    those is fleetgate's, not the generator's."""
    units, rate, seconds = scale.fanin_qos1
    meter = nodes.ProcessMeter(broker.pid)
    report = await run_load(
        LoadOptions(
            port=broker.port, ca=lab.ca,
            identities={i.ident: i for i in (*lab.units[:units], lab.analytics)},
            unit_ids=[u.ident for u in lab.units[:units]], units=units, rate_per_unit=rate, duration=seconds,
            qos=1, payload_size=100, protocol=lab.protocol, broker_pid=broker.pid, broker_label=broker.name,
            progress=False, drain_timeout=5.0, drain_limit=max(5.0, seconds), on_phase=meter.on_phase,
            processes=scale.gen_procs,
        )
    )  # fmt: skip
    lat = report.latency_ms
    drops = report.drops
    return {
        "offered_per_s": round(report.offered_rate),
        "sent_per_s": round(report.sent / seconds),
        "acked": report.acked,
        "delivered": report.delivered,
        "delivered_of_acked_pct": round(report.delivered_of_acked_pct, 3),
        "acked_not_delivered": drops.get("acknowledged_not_delivered", 0),
        "delivered_per_s": round(report.delivered_rate),
        "latency_p50_ms": lat.get("p50", 0.0),
        "latency_p99_ms": lat.get("p99", 0.0),
        "held_back_pct": round(100 * drops.get("not_sent_window_full", 0) / max(1, report.offered), 2),
        "refused": drops.get("refused_by_broker", 0),
        "units_connected": report.units_connected,
        "broker_cpu_pct": report.broker_cpu_percent,
        "generator_lag_ms": report.generator_max_lag_ms,
        **meter.result,
        **_generator_cpu(report),
    }


async def fanout(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """True 1→N: one dispatch message, N operator consoles on fleet/+/cmd/#; then a 50-message burst."""
    sink = LatencySink()
    operators = lab.operators[: scale.fanout_subscribers]
    n = len(operators)
    crowd = await connect_crowd(
        "127.0.0.1", broker.port, operators, lab.contexts(operators), concurrency=100, version=lab.version,
        sink=sink, subscribe=lambda _: "fleet/+/cmd/#",
    )  # fmt: skip
    pub = await _client(lab, broker, lab.dispatch)
    template = PublishTemplate(f"fleet/{lab.units[0].ident}/cmd/notice", 100, 0, lab.version)
    completions: list[float] = []
    try:
        if crowd.failures:
            raise ConnectionError(f"fan-out subscribers failed: {dict(crowd.failures)}")
        for _ in range(scale.fanout_messages):
            before = sink.count
            sent = time.perf_counter_ns()
            pub.send(template, sent)
            await _until_count(sink, before + n, 5.0)
            completions.append(time.perf_counter_ns() - sent)
            await asyncio.sleep(0.05)
        single = sink.count
        burst = 50
        before = sink.count
        started = time.perf_counter()
        pub.write(template.burst(burst, time.perf_counter_ns()), burst, 0)
        await _until_count(sink, before + burst * n, 20.0)
        burst_seconds = time.perf_counter() - started
    finally:
        await close_all([pub, *crowd.clients])
    lat = percentiles(sink.latencies[:single])
    return {
        "copy_latency_p50_ms": _ms(lat.get("p50", 0)),
        "copy_latency_p99_ms": _ms(lat.get("p99", 0)),
        "all_copies_ms": _ms(sorted(completions)[len(completions) // 2]) if completions else 0.0,
        "burst_copies_per_s": round((sink.count - before) / burst_seconds),
        "delivered_pct": round(100 * sink.count / max(1, n * (scale.fanout_messages + burst)), 2),
    }


async def broadcast(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """Dispatch broadcast: one control message to each of N units, N topics, one burst."""
    sink = LatencySink()
    units = lab.units[: scale.broadcast_units]
    crowd = await connect_crowd(
        "127.0.0.1", broker.port, units, lab.contexts(units), concurrency=100, version=lab.version, sink=sink,
        subscribe=lambda ident: f"fleet/{ident}/control/#",
    )  # fmt: skip
    pub = await _client(lab, broker, lab.dispatch)
    templates = [PublishTemplate(f"fleet/{u.ident}/control/broadcast", 100, 0, lab.version) for u in units]
    completions: list[float] = []
    try:
        if crowd.failures:
            raise ConnectionError(f"broadcast subscribers failed: {dict(crowd.failures)}")
        for _ in range(scale.broadcast_bursts):
            before = sink.count
            sent = time.perf_counter_ns()
            pub.write(b"".join(t.frame(0, sent) for t in templates), len(templates), 0)
            await _until_count(sink, before + len(units), 10.0)
            completions.append(time.perf_counter_ns() - sent)
            await asyncio.sleep(0.2)
    finally:
        await close_all([pub, *crowd.clients])
    lat = percentiles(sink.latencies)
    return {
        "latency_p50_ms": _ms(lat.get("p50", 0)),
        "latency_p99_ms": _ms(lat.get("p99", 0)),
        "all_delivered_ms": _ms(sorted(completions)[len(completions) // 2]) if completions else 0.0,
        "delivered_pct": round(100 * sink.count / max(1, len(units) * scale.broadcast_bursts), 2),
    }


async def _until_count(sink: LatencySink, count: int, timeout: float) -> bool:
    """Wait (bounded) until the sink has seen `count` messages; False on timeout."""
    deadline = time.monotonic() + timeout
    while sink.count < count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


# --- 4. connect storm --------------------------------------------------------------------------------


async def storm(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """N units connect at once (every handshake in flight together)."""
    units = lab.units[: scale.storm_units]
    contexts = lab.contexts(units)
    before = procstat.sample(broker.pid)
    crowd = await connect_crowd(
        "127.0.0.1", broker.port, units, contexts, concurrency=len(units), version=lab.version, timeout=60.0
    )
    after = procstat.sample(broker.pid)
    await close_all(crowd.clients)
    stats = percentiles(crowd.connack_ns)
    return {
        "handshakes_per_s": round(crowd.rate, 1),
        "connack_p50_ms": _ms(stats.get("p50", 0)),
        "connack_p99_ms": _ms(stats.get("p99", 0)),
        "failed": sum(crowd.failures.values()),
        "broker_cpu_pct": round(procstat.cpu_percent(before, after) or 0.0),
    }


# --- 5. memory per idle session ----------------------------------------------------------------------


async def memory(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    out: Metrics = {}
    for sessions in scale.memory_sessions:
        await asyncio.sleep(scale.settle_seconds / 2)
        before = procstat.sample(broker.pid)
        units = lab.units[:sessions]
        crowd = await connect_crowd(
            "127.0.0.1", broker.port, units, lab.contexts(units), concurrency=200, version=lab.version,
            subscribe=lambda ident: f"fleet/{ident}/control/#", timeout=60.0,
        )  # fmt: skip
        await asyncio.sleep(scale.settle_seconds)  # let buffers settle
        after = procstat.sample(broker.pid)
        await close_all(crowd.clients, wait=10.0)
        connected = len(crowd.clients)
        tag = f"{sessions / 1000:g}k"
        if before is None or after is None or not connected:
            raise RuntimeError("the broker went away while measuring memory")
        out[f"{tag}_kb_per_session"] = round((after.rss_bytes - before.rss_bytes) / connected / 1024, 1)
        out[f"{tag}_connected"] = connected
        out[f"{tag}_rss_mb"] = round(after.rss_bytes / 2**20, 1)
    return out


# --- 6. time to contain ------------------------------------------------------------------------------


async def contain(lab: Lab, broker: Broker, scale: Scale) -> Metrics:
    """Revoke connected units one at a time; time from the registry commit to the socket closing.

    Under Mosquitto the same revocation (registry + CRL file) is followed by what an operator can do:
    wait, SIGHUP (re-reads certificates and the CRL), then a restart; we record what each achieves.
    """
    fresh = lab.fresh_units(scale.contain_units + 1)
    identities = [ClientIdentity(u.ident, u.cert, u.key) for u in fresh]
    clients = [await _client(lab, broker, identity) for identity in identities]
    try:
        if isinstance(broker, MosquittoBroker):
            return await _contain_mosquitto(
                lab, broker, clients, fresh[0].serial, identities[0], scale.observe_seconds
            )
        samples = []
        jitter = random.Random()
        for client, unit in zip(clients[:-1], fresh[:-1], strict=True):
            # At a random moment: a gateway that polls would otherwise phase-lock with this loop and
            # always be measured at the same point of its polling period.
            await asyncio.sleep(jitter.uniform(0.0, 0.4))
            # Timed from the registry commit, which is what the gateway follows; the CRL files are
            # written afterwards, so that signing them does not block this loop while it watches.
            lab.issuer.revoke_in_registry(unit.serial)
            committed = time.perf_counter()
            await asyncio.wait([client.lost], timeout=5.0)
            samples.append(1000 * ((client.closed_at or float("inf")) - committed))
        lab.issuer.write_crl()
        cli_ms = await _contain_with_cli(lab, clients[-1], fresh[-1].serial)
    finally:
        await close_all(clients)
    stats = percentiles(samples)
    return {
        "contain_p50_ms": round(stats["p50"], 1),
        "contain_max_ms": round(stats["max"], 1),
        "contain_samples_ms": [round(t, 1) for t in samples],  # pooled over runs for the p99
        "cli_contain_ms": round(cli_ms, 1),
        "contained_pct": round(100 * sum(1 for t in samples if t < 5000) / len(samples), 1),
    }


async def _contain_with_cli(lab: Lab, client: LeanClient, serial: int) -> float:
    """`fleetgate cert revoke SERIAL --force` as an operator runs it: command start → socket closed."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "cert", "revoke", format(serial, "x"), "--force",
        "--data", str(lab.data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()
    await asyncio.wait([client.lost], timeout=5.0)
    return 1000 * ((client.closed_at or float("inf")) - started)


async def _contain_mosquitto(
    lab: Lab,
    broker: MosquittoBroker,
    clients: list[LeanClient],
    serial: int,
    revoked: ClientIdentity,
    observe: float,
) -> Metrics:
    target = clients[0]
    lab.issuer.revoke(serial)  # registry + CRL file (the crlfile Mosquitto was started with)
    await asyncio.wait([target.lost], timeout=observe)
    survives_crl = target.transport is not None
    broker.reload()
    await asyncio.wait([target.lost], timeout=observe)
    survives_sighup = target.transport is not None
    try:
        probe = await _client(lab, broker, revoked)
        probe.disconnect()
        reconnect_refused = False
    except (OSError, ConnectionError, TimeoutError):
        reconnect_refused = True
    started = time.perf_counter()
    broker.stop()
    broker.start()  # a restart: the only way to cut a live session; it cuts every session
    restart_ms = 1000 * (time.perf_counter() - started)
    await asyncio.sleep(0.2)  # let the event loop see the closed sockets
    return {
        "live_session_survives_crl_update": survives_crl,
        "live_session_survives_sighup": survives_sighup,
        "new_connection_refused_after_sighup": reconnect_refused,
        "restart_ms": round(restart_ms, 1),
        "sessions_cut_by_restart": sum(1 for c in clients if c.transport is None or c.lost.done()),
    }


CASES: dict[str, Case] = {
    "gencheck": gencheck,
    "qos0": qos0,
    "qos1": qos1,
    "qos0_batched": qos0_batched,
    "hop": hop,
    "fanin": fanin,
    "fanin_qos1": fanin_qos1,
    "fanout": fanout,
    "broadcast": broadcast,
    "storm": storm,
    "memory": memory,
    "contain": contain,
}
