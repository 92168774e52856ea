"""`scripts/demo`: a fresh CA, a gateway, and a small fleet that enrolls and reports over mTLS.

Orchestration only: the gateway runs as its own process (`fleetgate serve`), units enroll over EST
with keys they make themselves, and publish with paho-mqtt over mTLS, exactly as trucks would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from device_sim.enroll import UnitFiles, enroll_fleet

console = Console()
FLEETGATE = [sys.executable, "-m", "gateway"]


def _cli(data: Path, *args: str) -> dict[str, object]:
    out = subprocess.run([*FLEETGATE, *args, "--data", str(data), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"demo: fleetgate {args[0]} failed: {out.stderr.strip()}")
    result = json.loads(out.stdout)
    assert isinstance(result, dict)
    return result


def _start_gateway(data: Path, mqtt_port: int, https_port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            *FLEETGATE,
            "serve",
            "--data",
            str(data),
            "--listen-mqtt",
            f"127.0.0.1:{mqtt_port}",
            "--listen-https",
            f"127.0.0.1:{https_port}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the gateway exited; see {log}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", mqtt_port)) == 0:
                return proc
        time.sleep(0.1)
    raise SystemExit(f"demo: the gateway did not start; see {log}")


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self.lock:
            self.count += 1


def _client(files: UnitFiles, client_id: str, port: int, version: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
    client.tls_set(ca_certs=str(files.ca), certfile=str(files.cert), keyfile=str(files.key))
    return client


def _connect_result(files: UnitFiles, client_id: str, port: int) -> str:
    """Connect once and report what the gateway said (used for the spoofing attempt)."""
    outcome: list[str] = []
    done = threading.Event()
    client = _client(files, client_id, port, mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: object, props: object) -> None:
        outcome.append(str(reason))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect("localhost", port, keepalive=30)
        client.loop_start()
        done.wait(5)
    except OSError as exc:
        outcome.append(f"connection refused ({exc})")
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0] if outcome else "no answer"


def run(units: int, seconds: float, keep_running: bool, mqtt_port: int, https_port: int) -> None:
    data = Path("var/demo").absolute()
    if data.exists():
        shutil.rmtree(data)
    console.rule("[bold]fleetgate demo")
    init = _cli(data, "init", "--hostname", "localhost", "--hostname", "127.0.0.1")
    console.print(f"CA created for trust domain [bold]{init['trust_domain']}[/] in {data}")
    log = data / "gateway.log"
    gateway = _start_gateway(data, mqtt_port, https_port, log)
    console.print(f"gateway up: MQTT mTLS 127.0.0.1:{mqtt_port}, EST https://localhost:{https_port}")
    try:
        ids = [f"TRK-{n:05d}" for n in range(1, units + 1)]
        tokens = {unit: str(_cli(data, "unit", "add", unit)["token"]) for unit in ids}
        started = time.monotonic()
        fleet = enroll_fleet(
            f"https://localhost:{https_port}", data / "ca" / "root.crt", tokens, data / "units"
        )
        console.print(f"{len(fleet)} units enrolled over EST in {time.monotonic() - started:.1f} s")
        service = _cli(data, "service", "add", "dispatch", "--out", str(data / "services"))
        received = Counter()
        dispatch = _client(
            UnitFiles(Path(str(service["cert"])), Path(str(service["key"])), Path(str(service["ca"]))),
            "dispatch",
            mqtt_port,
            mqtt.MQTTv5,
        )
        dispatch.on_message = lambda c, u, m: received.add()
        dispatch.connect("localhost", mqtt_port)
        dispatch.subscribe("fleet/+/telemetry/#", qos=1)
        dispatch.loop_start()
        sent = _drive(fleet, mqtt_port, seconds)
        time.sleep(1.0)
        spoof = _connect_result(fleet[ids[0]], ids[1], mqtt_port)
        dispatch.loop_stop()
        dispatch.disconnect()
        _summary(len(fleet), sent, received.count, spoof, ids)
        if keep_running:
            console.print(f"gateway keeps running (pid {gateway.pid}); data in {data}; Ctrl-C to stop")
            gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=20)


def _drive(fleet: dict[str, UnitFiles], port: int, seconds: float) -> int:
    clients = []
    for n, (unit, files) in enumerate(fleet.items()):
        client = _client(files, unit, port, mqtt.MQTTv5 if n % 2 else mqtt.MQTTv311)
        client.connect("localhost", port)
        client.loop_start()
        clients.append((unit, client))
    sent = 0
    deadline = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < deadline:
        for unit, client in clients:
            payload = json.dumps({"lat": 52.0 + tick * 0.001, "lon": 4.3, "ts": time.time()})
            client.publish(f"fleet/{unit}/telemetry/gps", payload, qos=1)
            sent += 1
        tick += 1
        time.sleep(1.0)
    for _, client in clients:
        client.loop_stop()
        client.disconnect()
    return sent


def _summary(units: int, sent: int, received: int, spoof: str, ids: list[str]) -> None:
    out = Table(title="what happened", title_justify="left")
    out.add_column("")
    out.add_column("result")
    out.add_row("units enrolled (EST, keys made on the unit)", str(units))
    out.add_row("telemetry messages published (QoS 1, mTLS)", str(sent))
    out.add_row("delivered to the dispatch service", str(received))
    out.add_row(f"{ids[0]}'s certificate claiming to be {ids[1]}", f"refused: {spoof}")
    console.print(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="fleetgate demo: a gateway and a small fleet")
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep-running", action="store_true")
    parser.add_argument("--mqtt-port", type=int, default=8883)
    parser.add_argument("--https-port", type=int, default=8443)
    args = parser.parse_args()
    run(args.units, args.seconds, args.keep_running, args.mqtt_port, args.https_port)


if __name__ == "__main__":
    main()
