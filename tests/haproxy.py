"""A throwaway HAProxy (Debian's) on loopback in front of fleetgate nodes, configured from the
HAProxy block of docs/cluster.md ("Behind a load balancer"), so the documented configuration is the
tested one: only the frontend's `bind` address, the servers' addresses (and, if asked, a `source`
address for the balancer's side) are changed; every other directive is the page's.

    gateways run with FLEETGATE_LISTEN_PROXY_PROTOCOL_FROM=127.0.0.2 (BALANCER_SOURCE)
    with Haproxy.in_front_of(tmp_path, [("node-a", gw_a.mqtt_port), ("node-b", gw_b.mqtt_port)]) as lb:
        clients connect to 127.0.0.1:lb.port (paho: Paho(lb.port, creds, ...))

HAProxy connects to the nodes from `source` (BALANCER_SOURCE by default), a loopback address of its
own, so that the gateways can trust it and nothing else (clients and tests connect from 127.0.0.1, or
bind 127.0.0.3 to be told apart from both).
"""

from __future__ import annotations

import re
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness import free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
SECTION = "## Behind a load balancer (HAProxy, PROXY v2)"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BALANCER_SOURCE = "127.0.0.2"  # HAProxy's address towards the gateways: their proxy_protocol_from


def _global(maxconn: int | None) -> str:
    """What the test adds: no daemon, no log target, no user switch (it runs as the test's user), and
    by default as many connections as the open-file limit allows HAProxy (two descriptors each)."""
    if maxconn is None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        maxconn = 20000 if hard == resource.RLIM_INFINITY else max(100, min(20000, (hard - 100) // 2))
    return f"global\n    maxconn {maxconn}\n    nbthread 1\n"


def documented_config() -> str:
    """The ```haproxy block of docs/cluster.md's load-balancer section."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    match = re.compile(r"```haproxy\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no ```haproxy block under {SECTION!r} in {DOC}"
    return match.group(1)


def render(
    frontend_port: int,
    servers: Sequence[tuple[str, int]],
    source: str | None = None,
    maxconn: int | None = None,
) -> str:
    """The documented configuration with loopback addresses: the frontend on 127.0.0.1:frontend_port,
    one `server` line per (name, port) with the options of the page's first server line."""
    lines: list[str] = []
    options: str | None = None
    for line in documented_config().splitlines():
        words = line.split()
        if words[:1] == ["bind"]:
            lines.append(re.sub(r"bind\s+\S+", f"bind 127.0.0.1:{frontend_port}", line, count=1))
        elif words[:1] == ["server"]:
            if options is None:
                options = " ".join(words[3:])
                indent = line[: len(line) - len(line.lstrip())]
                for name, port in servers:
                    extra = f" source {source}" if source else ""
                    lines.append(f"{indent}server {name} 127.0.0.1:{port} {options}{extra}")
        else:
            lines.append(line)
    assert options is not None, "the documented backend has no server line"
    return _global(maxconn) + "\n" + "\n".join(lines) + "\n"


@dataclass
class Haproxy:
    config: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    @contextmanager
    def in_front_of(
        cls,
        directory: Path,
        servers: Sequence[tuple[str, int]],
        *,
        source: str | None = BALANCER_SOURCE,
        maxconn: int | None = None,
        port: int | None = None,
    ) -> Iterator[Haproxy]:
        """HAProxy on 127.0.0.1 and a free port, balancing over `servers` (name, port on 127.0.0.1)
        with the documented options; stopped when the block ends. `maxconn`: HAProxy's global limit
        (default: what the open-file limit allows, at most 20,000). `port`: another HAProxy's, to
        share its listening port (HAProxy binds with SO_REUSEPORT: the kernel spreads connections)."""
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port() if port is None else port
        config = directory / "haproxy.cfg"
        config.write_text(render(port, servers, source, maxconn))
        checked = subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, f"haproxy -c refused {config}:\n{checked.stdout}{checked.stderr}"
        log = directory / "haproxy.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        balancer = cls(config, port, proc, log)
        try:
            balancer._wait_listening()
            yield balancer
        finally:
            balancer.stop()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"haproxy did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
