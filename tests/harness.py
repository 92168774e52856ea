"""A real gateway in a subprocess, for tests that go through sockets, TLS and the CLI.

GatewayProcess runs `fleetgate init` once and `fleetgate serve` on free loopback ports, and gives
tests what a fleet engineer would have: the CLI (`run_cli`), enrolled units (real EST, keys made
client-side), role identities, and the ports. Nothing here reaches into the gateway's memory.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from gateway.cli.device import device_csr
from pki.est_client import bootstrap, simpleenroll
from pki.keys import generate_private_key, write_private_key, write_public_file

FLEETGATE = [sys.executable, "-m", "gateway"]
INSECURE_KEYS = ("--insecure-unencrypted-keys",)  # `fleetgate init` for a throwaway test CA


# Ports for the gateways the tests start: below the kernel's ephemeral range (32768 and up on Linux,
# where clients' own outgoing ports come from), in a band of its own per pytest-xdist worker, so two
# workers never hand out the same port and no client can be sitting on one between pick and bind.
# Each test process starts at a random place in its band: two suites run at once from two checkouts
# (the same band for the same worker name) would otherwise pick the same ports in the same order.
_PORT_BAND = 1500
_PORT_BASE = 18000
_next_port = itertools.count(random.randrange(_PORT_BAND))


def _port_band() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3" under `pytest -n`, unset without it
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = _PORT_BASE + (index % 9) * _PORT_BAND
    return range(start, start + _PORT_BAND)


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's band (in turn, so a port just released
    by a stopped gateway is not handed out again at once)."""
    band = _port_band()
    for _ in range(len(band)):
        port = band[next(_next_port) % len(band)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (a gateway of an earlier test still closing, or another program)
            return port
    raise RuntimeError(f"no free loopback port in {band.start}-{band.stop - 1}")


@dataclass(frozen=True)
class Credentials:
    ident: str
    cert: Path  # leaf + issuing chain, PEM
    key: Path
    ca: Path  # fleet root


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def run_cli(
    *args: str,
    data: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> CliResult:
    argv = [*FLEETGATE, *args]
    if data is not None:
        argv += ["--data", str(data)]
    proc = subprocess.run(  # no terminal: a command that would prompt (a passphrase) says so instead
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    result = CliResult(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"fleetgate {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return result


class GatewayProcess:
    def __init__(
        self,
        root: Path,
        *,
        lab: bool = False,
        extra_args: tuple[str, ...] = (),
        open_files: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) of the gateway process, like `ulimit -n`
        self.env = env or {}  # for the gateway and `cli` (e.g. FLEETGATE_CA_PASSPHRASE)
        self.data = root / "data"
        self.clients = root / "clients"
        self.mqtt_port = free_port()
        self.https_port = free_port()
        self.lab_port = free_port() if lab else None
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = root / "gateway.log"
        self._metrics_reader: Credentials | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def init(self) -> None:
        # Test CAs are throwaway: keys without a passphrase (tests/cli/test_ca_keys.py covers encryption).
        names = ("--hostname", "localhost", "--hostname", "127.0.0.1")
        run_cli("init", *names, *INSECURE_KEYS, data=self.data, check=True)

    def start(self) -> None:
        args = [
            *FLEETGATE,
            "serve",
            "--data",
            str(self.data),
            "--listen-mqtt",
            f"127.0.0.1:{self.mqtt_port}",
            "--listen-https",
            f"127.0.0.1:{self.https_port}",
            *self.extra_args,
        ]
        if self.lab_port is not None:
            args += ["--insecure-plaintext-listen", f"127.0.0.1:{self.lab_port}"]
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env},
            preexec_fn=self._limits,
        )
        self._wait_ready()

    def _limits(self) -> None:
        """Runs in the child before exec: the open-file limit a test asked for."""
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        ports = [self.mqtt_port, self.https_port] + ([self.lab_port] if self.lab_port else [])
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            if all(_listening(p) for p in ports):
                return
            time.sleep(0.05)
        raise AssertionError(f"gateway did not start in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    # --- identities ---------------------------------------------------------------------------

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def root_ca(self) -> Path:
        return self.data / "ca" / "root.crt"

    def cli(
        self, *args: str, check: bool = False, timeout: float = 60, env: dict[str, str] | None = None
    ) -> CliResult:
        return run_cli(*args, data=self.data, check=check, timeout=timeout, env={**self.env, **(env or {})})

    def add_unit(self, unit_id: str) -> str:
        result = self.cli("unit", "add", unit_id, "--json", check=True)
        token = result.json()["token"]  # type: ignore[index]
        assert isinstance(token, str)
        return token

    def enroll_unit(self, unit_id: str) -> Credentials:
        """Register and enroll a unit the way a device does: key made here, CSR over EST."""
        token = self.add_unit(unit_id)
        server = bootstrap(self.https_url, ca_file=self.root_ca)
        key = generate_private_key()
        cert = simpleenroll(server, unit_id, token, device_csr(key, unit_id))
        return self._save(unit_id, key, [cert])

    def issue(self, kind: str, name: str, *extra: str) -> Credentials:
        out = self.clients / kind
        result = self.cli(kind, "add", name, "--out", str(out), "--json", *extra, check=True)
        data = result.json()
        assert isinstance(data, dict)
        return Credentials(name, Path(data["cert"]), Path(data["key"]), Path(data["ca"]))

    def metrics_reader(self) -> Credentials:
        """An operator certificate with the `metrics` role, issued once: /metrics needs one."""
        if self._metrics_reader is None:
            self._metrics_reader = self.issue("operator", "metrics-reader", "--role", "metrics")
        return self._metrics_reader

    def _save(self, ident: str, key: object, certs: list[object]) -> Credentials:
        from cryptography.hazmat.primitives import serialization

        out = self.clients / "unit"
        out.mkdir(parents=True, exist_ok=True)
        key_path, cert_path, ca_path = out / f"{ident}.key", out / f"{ident}.crt", out / "ca.crt"
        if key_path.exists():
            key_path.unlink()
        write_private_key(key_path, key)  # type: ignore[arg-type]
        issuing = (self.data / "ca" / "issuing.crt").read_bytes()
        leaf = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)  # type: ignore[attr-defined]
        write_public_file(cert_path, leaf + issuing)
        write_public_file(ca_path, self.root_ca.read_bytes())
        return Credentials(ident, cert_path, key_path, ca_path)

    def client_context(self, creds: Credentials) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(creds.ca))
        context.load_cert_chain(str(creds.cert), str(creds.key))
        return context

    def root_sha256(self) -> str:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.root_ca.read_bytes()).fingerprint(hashes.SHA256()).hex()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
