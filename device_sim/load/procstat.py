"""CPU time and memory of a process from /proc (the broker under test, or ourselves).

Read straight from /proc/<pid>/stat and /proc/<pid>/status so it works for any broker we are given a
pid of (fleetgate, Mosquitto) without a dependency. Linux only, like the rest of the benchmark.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    at: float  # time.monotonic()
    cpu_seconds: float  # user + system
    rss_bytes: int


def sample(pid: int) -> ProcSample | None:
    """One reading of the process and its descendants (the workers and nats-server of `fleetgate
    serve --workers N`: their parent serves nothing), or None if the process is gone."""
    own = _sample_one(pid)
    if own is None:
        return None
    cpu, rss = own.cpu_seconds, own.rss_bytes
    for child in _descendants(pid):
        reading = _sample_one(child)
        if reading is not None:
            cpu, rss = cpu + reading.cpu_seconds, rss + reading.rss_bytes
    return ProcSample(own.at, cpu, rss)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as handle:
            children = [int(c) for c in handle.read().split()]
    except OSError:
        return found
    for child in children:
        found += [child, *_descendants(child)]
    return found


def _sample_one(pid: int) -> ProcSample | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/status", "rb") as handle:
            status = handle.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)
    rss = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    return ProcSample(time.monotonic(), cpu, rss)


def cpu_percent(before: ProcSample | None, after: ProcSample | None) -> float | None:
    """Average CPU use between two samples, in percent of one core."""
    if before is None or after is None or after.at <= before.at:
        return None
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / (after.at - before.at)


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of all CPUs busy over `seconds` (everyone's load: on a shared machine, the others')."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = ticks()
    time.sleep(seconds)
    busy1, total1 = ticks()
    return 100.0 * (busy1 - busy0) / max(1, total1 - total0)


def descendants(pid: int) -> list[int]:
    """The pids of every descendant of `pid` (children first), [] if it is gone."""
    return _descendants(pid)


def sample_own(pid: int) -> ProcSample | None:
    """One reading of this process alone (not its descendants), or None if it is gone."""
    return _sample_one(pid)
