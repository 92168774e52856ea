"""Which process of a broker serves a connection, and each process's own CPU and memory.

`fleetgate serve --workers N` is a parent (serves nothing), N workers (`serve --as-worker i`, each a node
of the cluster) and, with no `cluster.nats`, a nats-server, all sharing one listening port through
SO_REUSEPORT. The kernel picks the worker per connection; nothing on the wire says which. The socket
does: the server side of a loopback connection is the /proc/net/tcp row whose local port is the broker's
and whose remote port is the client's, and its inode is among the open files of exactly one worker.
Linux only, like device_sim/load/procstat.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from device_sim.load import procstat


@dataclass(frozen=True)
class Process:
    pid: int
    role: str  # "parent", "worker 0", "nats-server", or the broker's own name for a single process


def processes(pid: int) -> list[Process]:
    """The broker process and its descendants, each named by what it is."""
    found = [Process(pid, "parent")]
    for child in procstat.descendants(pid):
        found.append(Process(child, _role(child)))
    if len(found) == 1:
        return [Process(pid, "broker")]
    return found


def workers(pid: int) -> dict[int, int]:
    """worker index -> pid of `serve --workers N`'s workers ({} for a single process)."""
    out = {}
    for proc in processes(pid):
        if proc.role.startswith("worker "):
            out[int(proc.role.removeprefix("worker "))] = proc.pid
    return out


def _role(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return "gone"
    if b"--as-worker" in argv:
        return f"worker {argv[argv.index(b'--as-worker') + 1].decode()}"
    name = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else "?"
    return name


def server_socket_inode(broker_port: int, client_port: int) -> int | None:
    """The inode of the broker's end of the loopback connection from client_port (IPv4 or IPv6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local == broker_port and remote == client_port:
                return int(fields[9])
    return None


def owner(pids: dict[int, int], broker_port: int, client_port: int) -> int | None:
    """The index of the worker (of `pids`, index -> pid) holding the connection from client_port."""
    inode = server_socket_inode(broker_port, client_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for index, pid in pids.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return index
            except OSError:
                continue
    return None


class ProcessMeter:
    """CPU and RSS of each process of a broker (each worker, nats-server, the parent) between `start`
    and `stop`: where `procstat.sample` adds them up, this says which one was busy."""

    def __init__(self, pid: int, extra: dict[str, int] | None = None, always: bool = False) -> None:
        """`extra`: more processes to meter, role -> pid (HAProxy); `always`: report a single process
        too (as "broker"), not only the processes of `--workers N`."""
        self.pid = pid
        self.extra = dict(extra or {})
        self.always = always
        self._before: dict[int, procstat.ProcSample | None] = {}
        self._roles: dict[int, str] = {}
        self.result: dict[str, float] = {}

    def on_phase(self, phase: str) -> None:
        """LoadOptions.on_phase: metered over the load run's own window (publishing to drained)."""
        if phase == "publishing":
            self.start()
        else:
            self.result = self.stop()

    def start(self) -> None:
        self._roles = {p.pid: p.role for p in processes(self.pid)}
        self._roles.update({pid: role for role, pid in self.extra.items()})
        self._before = {pid: procstat.sample_own(pid) for pid in self._roles}

    def stop(self) -> dict[str, float]:
        """{"<role>_cpu_pct": .., "<role>_rss_mb": ..} per process, roles as `processes` names them
        ("worker_0", "nats-server", "parent"); {} for a single process (the broker's totals say it)."""
        if len(self._roles) <= 1 and not self.always:
            return {}
        out: dict[str, float] = {}
        for pid, role in self._roles.items():
            end = procstat.sample_own(pid)
            key = role.replace(" ", "_")
            out[f"{key}_cpu_pct"] = round(procstat.cpu_percent(self._before.get(pid), end) or 0.0)
            out[f"{key}_rss_mb"] = round((end.rss_bytes if end else 0) / 2**20, 1)
        return out


def backbone_ready(pid: int) -> bool:
    """Every worker of `serve --workers N` (broker pid `pid`) holds an established connection to the
    NATS server it was given (FLEETGATE_CLUSTER_NATS in its environment). A worker reports in the nodes
    table once it listens, while its backbone still connects in the background: a message crossing
    before then would be lost to the measurement, not to the gateway's steady state."""
    pids = workers(pid)
    if not pids:
        return False
    for worker in pids.values():
        port = _nats_port(worker)
        if port is None or not _connected_to(worker, port):
            return False
    return True


def _nats_port(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            env = handle.read().split(b"\0")
    except OSError:
        return None
    for entry in env:
        if entry.startswith(b"FLEETGATE_CLUSTER_NATS="):
            first = entry.split(b"=", 1)[1].decode().split(",")[0].strip()
            try:
                return int(first.rsplit(":", 1)[1].strip("/"))
            except (IndexError, ValueError):
                return None
    return None


_ESTABLISHED = "01"


def _connected_to(pid: int, port: int) -> bool:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == _ESTABLISHED and int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def connections_per_worker(pid: int, port: int) -> dict[str, int]:
    """{"worker_0_connections": n, ...}: established connections on the broker's `port` held by each
    worker of `serve --workers N` ({} for a single process): how the kernel (or HAProxy) spread them."""
    pids = workers(pid)
    if not pids:
        return {}
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == _ESTABLISHED and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    out = {}
    for index, worker in sorted(pids.items()):
        count = 0
        try:
            fds = os.listdir(f"/proc/{worker}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                count += os.readlink(f"/proc/{worker}/fd/{fd}") in inodes
            except OSError:
                continue
        out[f"worker_{index}_connections"] = count
    return out
