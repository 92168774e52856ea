"""`fleetgate serve --workers N`: N gateway processes on one machine, one per core, as one gateway.

Theory of operation
- The parent serves nothing. It prepares what must be made once (the shared database's schemas, the
  backbone key, DATA/views.key, DATA/audit.key), holds the data dir's serving lock, reserves the
  listening ports (a bound, never listening SO_REUSEPORT socket per address: port 0 becomes one
  concrete port for every worker, and no other program takes the port while a worker restarts), and
  starts N workers: `fleetgate serve --as-worker i`, each a node of the cluster named `<node>-w<i>`
  (gateway/app/worker_role.py) whose listeners bind the same ports with SO_REUSEPORT, so the kernel
  spreads new connections over them.
- Messages cross between workers on NATS (gateway/app/backbone.py): `cluster.nats` if configured,
  else a nats-server the parent starts on loopback (gateway/app/local_nats.py).
- Supervision: a worker (or the local nats-server) that dies is restarted after a delay that doubles
  while it keeps dying young (0.5 s up to 30 s; back to 0.5 s once it lived 10 s), each restart
  logged with its count. A worker that fails with status 1 (a configuration or environment error,
  its one sentence already printed) at its first start stops the whole gateway with status 1:
  restarting it would only repeat the sentence.
- Stopping: SIGTERM or SIGINT to the parent sends SIGTERM to every worker (each stops as a single
  gateway does), then stops nats-server; the parent exits 0 (SIGTERM) or 130 (SIGINT). SIGHUP is
  passed on: to every worker on SQLite, to the first one on PostgreSQL (which tells the others).
- Workers and nats-server die with the parent however it ends (kill -9 included): each is started
  with PR_SET_PDEATHSIG = SIGTERM, and in a process group of its own, so a Ctrl-C at a terminal
  reaches the parent only and the stop happens in order.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from gateway.app.local_nats import LocalNats

log = logging.getLogger("fleetgate.workers")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
TICK_S = 0.1  # how often the parent looks at its children
STOP_TIMEOUT_S = 30.0  # a worker's graceful stop, then SIGKILL
FIRST_DELAY_S = 0.5
LONGEST_DELAY_S = 30.0
HEALTHY_AFTER_S = 10.0  # a child that lived this long died of something new: restart soon
EXIT_FAILED = 1  # gateway/cli/common.py: failed, and the error said why
EXIT_INTERRUPTED = 130


class RestartBackoff:
    """How long to wait before restarting a child that just died, after living `lived` seconds."""

    def __init__(
        self, first: float = FIRST_DELAY_S, longest: float = LONGEST_DELAY_S, healthy: float = HEALTHY_AFTER_S
    ) -> None:
        self.first, self.longest, self.healthy = first, longest, healthy
        self._next = first

    def delay(self, lived: float) -> float:
        chosen = self.first if lived >= self.healthy else self._next
        self._next = min(chosen * 2, self.longest)
        return chosen


def die_with_parent() -> Callable[[], None]:
    """A Popen preexec_fn: the child gets SIGTERM when this process ends (PR_SET_PDEATHSIG survives
    exec), and exits at once if this process already ended before the prctl."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not between fork and exec
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(EXIT_FAILED)

    return preexec


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket on host:port, held while the workers run.

    First a plain bind: it fails if anything listens there (another gateway, a single one or another
    `--workers`), which SO_REUSEPORT alone would let us share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port != 0:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    backoff: RestartBackoff = field(default_factory=RestartBackoff)

    def spawn(self) -> None:
        self.proc = self.start()
        self.started_at = time.monotonic()
        self.restart_at = None


class WorkerPool:
    """The parent's loop: start the workers, restart what dies, stop everything on a signal."""

    def __init__(
        self,
        commands: Sequence[tuple[str, list[str], dict[str, str]]],
        nats: LocalNats | None,
        hup_every_worker: bool,
    ) -> None:
        self._preexec = die_with_parent()
        self.workers = [Child(name, self._starter(argv, env)) for name, argv, env in commands]
        self.nats = nats
        self._hup_every_worker = hup_every_worker
        self._stop_signal: int | None = None
        self._hup = False
        self.total_restarts = 0

    def _starter(self, argv: list[str], env: dict[str, str]) -> Callable[[], subprocess.Popen[bytes]]:
        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=self._preexec,
                process_group=0,
            )

        return start

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        elif self._stop_signal is None:
            self._stop_signal = signum

    def run(self) -> int:
        """Until SIGTERM/SIGINT: 0 or 130 then; 1 if a worker cannot start at all."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        for worker in self.workers:
            worker.spawn()
            assert worker.proc is not None
            log.info("worker %s started (pid %d)", worker.name, worker.proc.pid)
        failed = False
        while self._stop_signal is None and not failed:
            failed = self._look_after_workers()
            self._look_after_nats()
            if self._hup:
                self._hup = False
                self._pass_on_hup()
            time.sleep(TICK_S)
        self._stop_all()
        if failed:
            return EXIT_FAILED
        return EXIT_INTERRUPTED if self._stop_signal == signal.SIGINT else 0

    def _look_after_workers(self) -> bool:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    worker.restarts += 1
                    self.total_restarts += 1
                    worker.spawn()
                    assert worker.proc is not None
                    log.warning(
                        "worker %s restarted (pid %d; restart %d of this worker, %d in all)",
                        worker.name,
                        worker.proc.pid,
                        worker.restarts,
                        self.total_restarts,
                    )
                continue
            assert worker.proc is not None
            code = worker.proc.poll()
            if code is None:
                continue
            lived = now - worker.started_at
            if code == EXIT_FAILED and worker.restarts == 0 and lived < HEALTHY_AFTER_S:
                log.error("worker %s could not start (its error is above); stopping the gateway", worker.name)
                return True
            delay = worker.backoff.delay(lived)
            worker.restart_at = now + delay
            log.warning(
                "worker %s (pid %d) %s after %.1f s; restarting it in %.1f s",
                worker.name,
                worker.proc.pid,
                describe_exit(code),
                lived,
                delay,
            )
        return False

    def _look_after_nats(self) -> None:
        nats = self.nats
        if nats is None:
            return
        code = nats.poll()
        if code is None:
            return
        log.warning("the local nats-server %s; restarting it on %s (see %s)", describe_exit(code), nats.url,
                    nats.log_path)  # fmt: skip
        delay = RestartBackoff().first
        for _ in range(6):
            if self._stop_signal is not None:
                return
            if nats.restart():
                log.info("the local nats-server is back on %s", nats.url)
                return
            time.sleep(delay)
            delay = min(delay * 2, LONGEST_DELAY_S)
        log.error("the local nats-server does not come back (see %s); still trying", nats.log_path)

    def _pass_on_hup(self) -> None:
        targets = self.workers if self._hup_every_worker else self.workers[:1]
        for worker in targets:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)

    def stop_quietly(self) -> None:
        """After `run`, whatever ended it (an exception included): nothing of ours left running."""
        self._stop_all()

    def _stop_all(self) -> None:
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        if live:
            log.info("stopping %d worker(s)", len(live))
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
        if self.nats is not None:
            self.nats.stop()
        for worker in self.workers:
            worker.restart_at = None


def endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_argv(
    index: int,
    data_root: Path,
    listen: dict[str, tuple[str, int]],
    options: Sequence[str],
) -> list[str]:
    """The command line of worker `index`: `fleetgate serve` on the parent's reserved ports."""
    import sys

    argv = [sys.executable, "-m", "gateway", "serve", "--data", str(data_root)]
    flags = {"mqtt": "--listen-mqtt", "https": "--listen-https", "lab": "--insecure-plaintext-listen"}
    for name, (host, port) in listen.items():
        argv += [flags[name], endpoint_text(host, port)]
    return [*argv, *options, "--as-worker", str(index)]
