"""What a load run measured: percentiles, the report value, a terminal table, JSON and a chart."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from device_sim.load.chart import BLUE, ORANGE, RED, Panel, Series, build_chart, save_chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PERCENTILES = (50, 95, 99)


def percentiles(values: Sequence[float], points: Sequence[int] = PERCENTILES) -> dict[str, float]:
    """Nearest-rank percentiles plus max, e.g. {"p50": .., "p95": .., "p99": .., "max": ..}; {} if empty."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p}": float(ordered[min(n - 1, max(0, -(-p * n // 100) - 1))]) for p in points}
    out["max"] = float(ordered[-1])
    return out


def ns_to_ms(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 1e6, 3) for k, v in stats.items()}


@dataclass
class IntervalStats:
    """One slice of the run (about 1 s): what arrived in it and how late."""

    t: float  # seconds since the measurement started (end of the slice)
    delivered_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class LoadReport:
    broker: str
    units_requested: int
    units_connected: int
    connect_seconds: float
    connack_ms: dict[str, float]
    connect_failures: dict[str, int]
    duration_s: float
    qos: int
    payload_size: int
    protocol: str
    offered: int  # messages the schedule asked for
    sent: int  # messages written to sockets
    delivered: int  # messages the subscriber received
    latency_ms: dict[str, float]
    drops: dict[str, int]
    broker_cpu_percent: float | None = None
    broker_rss_mb: dict[str, float] = field(default_factory=dict)
    generator_cpu_percent: float | None = None
    generator_max_lag_ms: float = 0.0
    series: list[IntervalStats] = field(default_factory=list)
    acked: int = 0  # QoS 1: messages the broker acknowledged as accepted (PUBACK < 0x80)
    # % of one core per generator process (the subscriber's process first); the total is above
    generator_cpu_by_process: list[float] = field(default_factory=list)

    @property
    def generator_warnings(self) -> list[str]:
        """What says this run may have measured the generator rather than the broker."""
        return generator_warnings(
            self.generator_cpu_by_process, self.broker_cpu_percent, self.generator_max_lag_ms, self.duration_s
        )

    @property
    def delivered_of_acked_pct(self) -> float:
        """QoS 1: how much of what the broker acknowledged reached the subscriber (100 unless it lost some).
        Counted, not matched: a message delivered after its PUBACK was lost on the way back would count
        once in `delivered` and never in `acked`; the drain waits for every PUBACK, so that cannot hide
        a loss at the end of a run."""
        return 100.0 * min(self.delivered, self.acked) / self.acked if self.acked else 100.0

    # --- derived ----------------------------------------------------------------------------------

    @property
    def connect_rate(self) -> float:
        return self.units_connected / self.connect_seconds if self.connect_seconds > 0 else 0.0

    @property
    def offered_rate(self) -> float:
        return self.offered / self.duration_s if self.duration_s else 0.0

    @property
    def delivered_rate(self) -> float:
        return self.delivered / self.duration_s if self.duration_s else 0.0

    # --- output -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["connect_rate"] = round(self.connect_rate, 1)
        data["offered_rate"] = round(self.offered_rate, 1)
        data["delivered_rate"] = round(self.delivered_rate, 1)
        if self.qos:
            data["delivered_of_acked_pct"] = round(self.delivered_of_acked_pct, 3)
        data["generator_warnings"] = self.generator_warnings
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def rows(self) -> list[tuple[str, str]]:
        lat = self.latency_ms
        connack = self.connack_ms
        rss = self.broker_rss_mb
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.connect_failures.items())) or "none"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items()) if v) or "none"
        return [
            ("broker", self.broker),
            ("units connected", f"{self.units_connected} / {self.units_requested}"),
            ("connect rate", f"{self.connect_rate:,.0f} /s over {self.connect_seconds:.1f} s"),
            ("time to CONNACK", _stats(connack, "ms")),
            ("connect failures", failures),
            ("messages", f"QoS {self.qos}, {self.payload_size} B payload, MQTT {self.protocol}"),
            ("offered", f"{self.offered:,} ({self.offered_rate:,.0f} msg/s over {self.duration_s:.1f} s)"),
            ("delivered", f"{self.delivered:,} ({self.delivered_rate:,.0f} msg/s)"),
            *(
                [("acknowledged", f"{self.acked:,} ({self.delivered_of_acked_pct:.2f} % of them delivered)")]
                if self.qos
                else []
            ),
            ("latency", _stats(lat, "ms")),
            ("drops", drops),
            ("broker CPU", "n/a" if self.broker_cpu_percent is None else f"{self.broker_cpu_percent:.0f} %"),
            ("broker RSS", " → ".join(f"{rss[k]:.1f} MB" for k in ("start", "end") if k in rss) or "n/a"),
            (
                "generator CPU",
                "n/a" if self.generator_cpu_percent is None else f"{self.generator_cpu_percent:.0f} %",
            ),
            *(
                [
                    (
                        "generator CPU by process",
                        " / ".join(f"{c:.0f} %" for c in self.generator_cpu_by_process),
                    )
                ]
                if len(self.generator_cpu_by_process) > 1
                else []
            ),
            ("generator max lag", f"{self.generator_max_lag_ms:.1f} ms"),
            *(("WARNING", w) for w in self.generator_warnings),
        ]

    def print_table(self, console: Console | None = None) -> None:
        table = Table(title="load run", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in self.rows():
            table.add_row(key, value)
        (console or Console()).print(table)

    def chart(self) -> Figure:
        """Throughput and latency over time (matplotlib; see chart.py)."""
        rate = [(s.t, s.delivered_per_s) for s in self.series]
        offered = [(0.0, self.offered_rate), (self.duration_s, self.offered_rate)] if self.series else []
        return build_chart(
            [
                Panel(
                    "Throughput: messages delivered to the subscriber",
                    "msg/s",
                    [Series("delivered", rate, BLUE), Series("offered", offered, ORANGE)],
                ),
                Panel(
                    "Latency, publish to delivery",
                    "ms",
                    [
                        Series("p50", [(s.t, s.p50_ms) for s in self.series], BLUE),
                        Series("p99", [(s.t, s.p99_ms) for s in self.series], RED),
                    ],
                ),
            ],
            title=f"Load run: {self.units_connected} units on {self.broker}, "
            f"MQTT {self.protocol}, QoS {self.qos}",
            x_range=(0.0, max([self.duration_s, *(s.t for s in self.series)])),
        )

    def write_png(self, path: Path) -> None:
        """The chart as PNG (or SVG when `path` ends in .svg)."""
        save_chart(self.chart(), path)


NEAR_A_CORE = 85.0  # % of one core: a single-threaded generator process this busy is (near) its limit


def generator_warnings(
    by_process: Sequence[float], broker_cpu: float | None, lag_ms: float = 0.0, duration_s: float = 0.0
) -> list[str]:
    """Warnings for a run whose generator may be the bottleneck: a process near a whole core (each is
    one thread), the machine's cores all busy (generator and broker share them), or the schedule not
    kept (behind by more than a tenth of the run and 100 ms: less was offered than asked, whether the
    generator was saturated or starved of CPU by other work on the machine)."""
    out = []
    busy = [i for i, cpu in enumerate(by_process) if cpu >= NEAR_A_CORE]
    if busy:
        worst = max(by_process)
        out.append(
            f"load generator process(es) {', '.join(map(str, busy))} used up to {worst:.0f} % of a core: "
            "the generator may be what limits this run (more processes: --gen-procs)"
        )
    cores = os.cpu_count() or 1
    total = sum(by_process) + (broker_cpu or 0.0)
    if by_process and total >= 0.9 * 100 * cores:
        out.append(
            f"generator and broker together used {total:.0f} % of this machine's {cores} cores: "
            "they compete for CPU, so neither number is a limit of its own"
        )
    if lag_ms > max(100.0, 100.0 * duration_s):  # 100 * s = a tenth of the run, in ms
        out.append(
            f"the generator fell {lag_ms / 1000:.1f} s behind its {duration_s:g} s schedule: it offered less "
            "than asked, and rates per scheduled second overstate what was delivered"
        )
    return out


def _stats(values: dict[str, float], unit: str) -> str:
    if not values:
        return "n/a"
    return "  ".join(f"{k} {v:,.1f}" for k, v in values.items()) + f" {unit}"


def interval_series(
    latencies: Sequence[int], marks: Sequence[tuple[int, int]], start_ns: int, step_s: float = 1.0
) -> list[IntervalStats]:
    """Cut (arrival ns, count so far) marks into slices of about `step_s` with a rate and percentiles."""
    out: list[IntervalStats] = []
    prev_t, prev_n = start_ns, None
    for t, n in marks:
        if t < start_ns:
            prev_n = n
            continue
        if prev_n is None:
            prev_n = n
            prev_t = t
            continue
        if (t - prev_t) / 1e9 < step_s:
            continue
        chunk = latencies[prev_n:n]
        stats = percentiles(chunk, (50, 99)) if len(chunk) else {"p50": 0.0, "p99": 0.0}
        out.append(
            IntervalStats(
                t=round((t - start_ns) / 1e9, 3),
                delivered_per_s=round((n - prev_n) / ((t - prev_t) / 1e9), 1),
                p50_ms=round(stats["p50"] / 1e6, 3),
                p99_ms=round(stats["p99"] / 1e6, 3),
            )
        )
        prev_t, prev_n = t, n
    return out
