"""`scripts/demo`: a fresh CA, a gateway in its own process, a fleet that drives, an attack, containment.

Orchestration only (the story is device_sim.demo.story): make the data directory, pick the ports,
start `fleetgate serve`, run the story, stop the gateway (or leave it up with --keep-running).

    python -m device_sim.demo.main [--units 50] [--seconds 30] [--keep-running] [--data var/demo]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from device_sim.demo.console_hint import console_hint
from device_sim.demo.story import DemoOptions, Story, quarantine_available
from device_sim.fleet.enroll import fleetgate

console = Console()
FLEETGATE = [sys.executable, "-m", "gateway"]


def port_or_free(wanted: int) -> tuple[int, bool]:
    """`wanted` if it can be bound on loopback (0: any), else a free one; (port, was it the wanted one)."""
    if wanted:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", wanted))
                return wanted, True
            except OSError:
                pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1]), wanted == 0


def start_gateway(data: Path, mqtt_port: int, https_port: int, log: Path) -> subprocess.Popen[bytes]:
    args = [
        *FLEETGATE,
        "serve",
        "--data",
        str(data),
        "--listen-mqtt",
        f"127.0.0.1:{mqtt_port}",
        "--listen-https",
        f"127.0.0.1:{https_port}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the gateway exited with {proc.returncode}; see {log}")
        if all(_listening(p) for p in (mqtt_port, https_port)):
            return proc
        time.sleep(0.1)
    stop_gateway(proc)
    raise SystemExit(f"demo: the gateway did not start within 30 s; see {log}")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="fleetgate demo: a CA, a gateway, a fleet, an attack and its containment",
    )
    parser.add_argument("--units", type=int, default=50, help="fleet size (default 50)")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="how long the fleet drives first (default 30)"
    )
    parser.add_argument("--data", type=Path, default=Path("var/demo"), help="data directory, wiped first")
    parser.add_argument("--mqtt-port", type=int, default=8883, help="0: any free port")
    parser.add_argument("--https-port", type=int, default=8443, help="0: any free port")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-running", action="store_true", help="leave the gateway up at the end")
    parser.add_argument("--summary", type=Path, default=None, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    if args.units < 3:
        parser.error("--units must be at least 3 (a compromised unit, its victim, and the rest)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    data: Path = args.data.absolute()
    if data.exists():
        # Wipe only what a demo made (or nothing at all): --data pointing at a real directory is a typo.
        if any(data.iterdir()) and not (data / "fleetgate.db").exists():
            raise SystemExit(f"demo: {data} is not empty and not a fleetgate data directory; not wiping it")
        shutil.rmtree(data)
    console.rule("[bold]fleetgate demo")
    # A throwaway CA for the demo: its keys get no passphrase (`fleetgate init` asks for one otherwise).
    init = fleetgate(
        data, "init", "--hostname", "localhost", "--hostname", "127.0.0.1", "--insecure-unencrypted-keys"
    )
    console.print(f"1. CA created for trust domain [bold]{init['trust_domain']}[/] in {data}")
    mqtt_port, mqtt_wanted = port_or_free(args.mqtt_port)
    https_port, https_wanted = port_or_free(args.https_port)
    for name, wanted, got, ok in (
        ("MQTT", args.mqtt_port, mqtt_port, mqtt_wanted),
        ("HTTPS", args.https_port, https_port, https_wanted),
    ):
        if not ok:
            console.print(f"   port {wanted} is taken; {name} uses {got} instead")
    gateway = start_gateway(data, mqtt_port, https_port, data / "gateway.log")
    console.print(
        f"2. gateway up (pid {gateway.pid}): MQTT over mTLS on 127.0.0.1:{mqtt_port}, "
        f"EST on https://localhost:{https_port}; log in {data / 'gateway.log'}"
    )
    options = DemoOptions(
        data=data,
        mqtt_port=mqtt_port,
        https_port=https_port,
        units=args.units,
        seconds=args.seconds,
        seed=args.seed,
        quarantine=quarantine_available(),
    )
    story = Story(options, console)
    try:
        summary = asyncio.run(story.run())
        if args.summary is not None:
            args.summary.write_text(json.dumps(summary, indent=2, default=str))
        if args.keep_running:
            console.print(
                f"\nThe gateway keeps running (pid {gateway.pid}); data in {data}. Try:\n"
                f"  .venv/bin/fleetgate cert list --data {data}\n"
                f"  .venv/bin/fleet-sim attack all --data {data} --server localhost:{mqtt_port} "
                f"--est https://localhost:{https_port}\n"
                "Ctrl-C stops it."
            )
            if story.ops_files is not None:
                hint = console_hint(story.ops_files, "ops", https_port, data)
                # Commands to copy: never wrapped, never read as markup.
                console.print(hint, markup=False, highlight=False, soft_wrap=True)
            gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_gateway(gateway)
    return 0


if __name__ == "__main__":
    sys.exit(main())
