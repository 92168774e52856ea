"""The process's open-file budget, shared out between the listeners so none can starve another.

Every connection holds a file descriptor, and MQTT, HTTPS and the lab listener share one process and
one descriptor table. Before this plan, idle sockets on the HTTPS port (which strangers must reach to
enroll) could take every descriptor, and then MQTT's accept() failed with EMFILE for the whole fleet.

So at start the soft RLIMIT_NOFILE is raised to the hard limit (the most an unprivileged process may
take; systemd's LimitNOFILE sets both), RESERVED_FDS are kept for everything that is not a client
connection (SQLite's database, WAL and shared-memory files per connection, the log, the listening
sockets, the event loop's own descriptors, files read on demand: keys, the CRL, TOTP secrets), and
the rest is the connection budget. HTTPS gets at most a quarter of it and the lab listener at most a
sixteenth, whatever their configured caps say; MQTT gets everything else (or `limits.max_connections`
if that is lower). The caps are enforced by each listener's gate (gateway/edge/admission.py) before a
socket is used for anything, so the sum of connections can never exceed the budget.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from gateway.config import LimitsConfig

RESERVED_FDS = 64
HTTPS_SHARE = 4  # HTTPS may hold at most 1/HTTPS_SHARE of the connection budget
LAB_SHARE = 16
MIN_MQTT_CONNECTIONS = 16
# An "unlimited" hard limit is not a number setrlimit takes for RLIMIT_NOFILE on Linux (fs.nr_open caps it).
UNLIMITED_TARGET = 1 << 20


class FdBudgetError(RuntimeError):
    """The open-file limit is too low to serve; the message says what to raise."""


@dataclass(frozen=True)
class OpenFiles:
    before: int  # the soft limit the process started with
    soft: int  # the soft limit now
    hard: int

    @property
    def raised(self) -> bool:
        return self.soft > self.before


@dataclass(frozen=True)
class ConnectionPlan:
    open_files: int
    mqtt: int
    https: int
    lab: int  # 0 when the lab listener is off

    def describe(self) -> str:
        lab = f", lab {self.lab}" if self.lab else ""
        return f"connection caps: mqtt {self.mqtt}, https {self.https}{lab} (of {self.open_files} open files)"


def raise_open_file_limit() -> OpenFiles:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as far as the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else UNLIMITED_TARGET
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep what we have; the plan below is made from the limit in force
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFiles(before=_finite(soft), soft=_finite(now), hard=_finite(hard))


def _finite(limit: int) -> int:
    return UNLIMITED_TARGET if limit == resource.RLIM_INFINITY else int(limit)


def plan_connections(open_files: int, limits: LimitsConfig, *, lab: bool) -> ConnectionPlan:
    """How many connections each listener may hold at once, from the open-file limit in force."""
    budget = open_files - RESERVED_FDS
    https = max(1, min(limits.https_max_connections, budget // HTTPS_SHARE))
    lab_cap = max(1, min(limits.lab_max_connections, budget // LAB_SHARE)) if lab else 0
    mqtt = budget - https - lab_cap
    if limits.max_connections:
        mqtt = min(mqtt, limits.max_connections)
    if mqtt < MIN_MQTT_CONNECTIONS:
        raise FdBudgetError(
            f"the open-file limit ({open_files}) leaves room for only {max(mqtt, 0)} MQTT connections; "
            "raise it (systemd: LimitNOFILE=65536; a shell: ulimit -n 65536)"
        )
    return ConnectionPlan(open_files=open_files, mqtt=mqtt, https=https, lab=lab_cap)
