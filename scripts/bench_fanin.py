"""Fan-in micro-benchmark without sockets (not a test): one PUBLISH per connection per round.

    .venv/bin/python scripts/bench_fanin.py [--tls] [--qos 0|1] [--payload zeros|json] [--rounds N]
    .venv/bin/python scripts/bench_fanin.py --callgrind [--tls] [--qos 1]   # instructions per message
    PYTHONPATH=/other/checkout .venv/bin/python scripts/bench_fanin.py ...  # the same on another tree

A real Gateway (policy engine with every check, detectors and the other publish observers, registry,
broker) and the real edge (`ConnectionHub`; with `--tls` also `TlsServerProtocol` on memory BIOs
and `MqttConnection` with the gateway's peer check, after a real mTLS handshake per unit), driven
in an event loop (uvloop when installed) without sockets: every round, each of 200 units hands the
edge the bytes of one PUBLISH (`fleet/<unit>/telemetry/gps`, 100-byte payload; with `--tls` one TLS
record) the way the event loop hands it one socket read, then the loop runs one iteration; service
`analytics` is subscribed to `fleet/+/telemetry/#` at QoS 0 and must receive every message. The
clock moves one second per round, so every unit stays inside its rate limit.

Measures, per message: Python function calls (`sys.setprofile`, Python and C calls, one round after
warm-up: deterministic), wall time (noisy on a shared machine), and with `--callgrind` the machine
instructions under valgrind (deterministic whatever else runs): the script runs itself twice under
`valgrind --tool=callgrind`, feeding ROUNDS/4 and ROUNDS rounds of the same prepared input, and
divides the difference by the messages in between, so start-up, handshakes and record preparation
cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from device_sim.load.identities import BulkIssuer, unit_ids
from gateway.app.runtime import Gateway
from gateway.config import load_config
from gateway.edge.hub import ConnectionHub
from gateway.edge.tls import TlsServerProtocol
from gateway.edge.transport import MqttConnection
from gateway.mqtt.client import MqttClient
from gateway.mqtt.packets import ProtocolVersion
from gateway.policy.peer import Peer
from gateway.stores.datadir import DataDir
from pki.names import Identity

UNITS = 200
WARMUP = 3
V5 = ProtocolVersion.MQTT_5


class FakeTcp:
    """What the edge writes to instead of a socket."""

    def __init__(self, port: int) -> None:
        self.chunks: list[bytes] = []
        self.closing = False
        self.reading = True
        self._peer = ("127.0.0.1", port)

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


class Clock:
    def __init__(self) -> None:
        # The next whole hour, not the time of day: the publish-rate detector's windows (10 s slots,
        # a 300 s baseline) then roll over at the same rounds in every run, and two runs of a tree
        # count the same instructions (from the time of day, they differed by up to ~2 %).
        self.now = float(math.ceil(time.time() / 3600) * 3600)

    def __call__(self) -> float:
        return self.now


def prepare(workdir: Path) -> Path:
    data = workdir / "data"
    if (workdir / "ready").exists():
        return data
    subprocess.run(
        [sys.executable, "-m", "gateway", "init", "--data", str(data), "--hostname", "localhost",
         "--insecure-unencrypted-keys"],
        check=True, capture_output=True,
    )  # fmt: skip
    with BulkIssuer(data) as issuer:
        issuer.units(unit_ids(UNITS), workdir / "ids")
        issuer.roles("service", ["analytics"], workdir / "ids")
    (workdir / "ready").touch()
    return data


class Endpoint:
    """One client as the edge sees it: its TCP stand-in, and (TLS) its client-side TLS object."""

    def __init__(self, ident: str, port: int) -> None:
        self.ident = ident
        self.tcp = FakeTcp(port)
        self.protocol: Any = None  # TlsServerProtocol (--tls) or None (plain: hub.received)
        self.conn = -1
        self.client_tls: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()

    def handshake(self, context: ssl.SSLContext, protocol: TlsServerProtocol) -> None:
        self.client_tls = context.wrap_bio(self._in, self._out, server_hostname="localhost")
        self.protocol = protocol
        protocol.connection_made(self.tcp)  # type: ignore[arg-type]
        for _ in range(10):
            try:
                self.client_tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if self._out.pending:
                protocol.data_received(self._out.read())
            reply = self.tcp.take()
            if reply:
                self._in.write(reply)
            if done and not self._out.pending and not reply:
                return
        raise RuntimeError(f"{self.ident}: handshake did not finish")

    def seal(self, plain: bytes) -> bytes:
        """One TLS record carrying `plain`, as the client would write it."""
        assert self.client_tls is not None
        self.client_tls.write(plain)
        return self._out.read()

    def feed(self, data: bytes) -> None:
        if self.protocol is None:
            raise RuntimeError("plain endpoints are fed through the hub")
        self.protocol.data_received(data)

    def received(self) -> bytes:
        """Plaintext the edge sent this client since the last call."""
        raw = self.tcp.take()
        if self.client_tls is None:
            return raw
        self._in.write(raw)
        out = bytearray()
        try:
            while True:
                chunk = self.client_tls.read(1 << 20)
                if not chunk:
                    break
                out += chunk
        except ssl.SSLWantReadError:
            pass
        return bytes(out)


def _count_publishes(data: bytes) -> int:
    count, pos = 0, 0
    while pos < len(data):
        first = data[pos]
        pos += 1
        length, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        pos += length
        count += first >> 4 == 3
    return count


def payload(kind: str) -> bytes:
    """100 bytes: zeros (what scripts/bench's generator sends is binary too) or a JSON GPS fix."""
    if kind == "zeros":
        return bytes(100)
    fix = b'{"lat": 51.92231, "lon": 4.47917, "speed_kmh": 63.5, "heading": 270, "pad": ""}'
    return fix[:-2] + b"x" * (100 - len(fix)) + fix[-2:]


async def run(args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(args.workdir)
    data = prepare(workdir)
    gw = Gateway(DataDir(data), load_config(None))
    clock = Clock()
    hub = ConnectionHub(gw.broker, clock=clock)
    td = gw.trust_domain
    ids_dir = workdir / "ids"
    server_context = gw._mqtt_context()

    def client_context(ident: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(ids_dir / "ca.crt"))
        context.load_cert_chain(str(ids_dir / f"{ident}.crt"), str(ids_dir / f"{ident}.key"))
        return context

    def open_endpoint(ident: str, kind: str, port: int) -> Endpoint:
        ep = Endpoint(ident, port)
        if args.tls:
            holder: list[MqttConnection] = []

            def app() -> MqttConnection:
                holder.append(MqttConnection(hub, gw.check_certificate))
                return holder[0]

            server = TlsServerProtocol(server_context, hub, f"127.0.0.1:{port}", app)
            ep.handshake(client_context(ident), server)
            assert holder and holder[0]._conn is not None, f"{ident} refused"
            ep.conn = holder[0]._conn
        else:
            peer = Peer(f"127.0.0.1:{port}", Identity(kind, ident, td), None, None)
            ep.conn = hub.register(ep.tcp, peer)  # type: ignore[arg-type]
        return ep

    def send(ep: Endpoint, plain: bytes) -> None:
        if args.tls:
            ep.feed(ep.seal(plain))
        else:
            hub.received(ep.conn, plain)

    async def settle() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    sub_client = MqttClient("analytics", version=V5)
    sub = open_endpoint("analytics", "service", 40000)
    sub_client.connect()
    send(sub, sub_client.data_to_send())
    await settle()
    sub_client.subscribe("fleet/+/telemetry/#", qos=0)
    send(sub, sub_client.data_to_send())
    await settle()
    sub_client.receive_data(sub.received())

    units: list[tuple[Endpoint, bytes]] = []
    for i, unit in enumerate(unit_ids(UNITS)):
        ep = open_endpoint(unit, "unit", 41000 + i)
        client = MqttClient(unit, version=V5)
        client.connect()
        send(ep, client.data_to_send())
        client.publish(f"fleet/{unit}/telemetry/gps", payload(args.payload), qos=args.qos)
        units.append((ep, client.data_to_send()))
    await settle()
    for ep, _ in units:
        ep.received()  # the CONNACKs
    packet_len = len(units[0][1])

    total = WARMUP + args.prepare_rounds
    # Every round's input, prepared before anything is measured (TLS: the client's encryption).
    if args.tls:
        rounds = [[ep.seal(publish) for ep, publish in units] for _ in range(total)]
    else:
        rounds = [[publish for _, publish in units] for _ in range(total)]
    pairs = [(ep, ep.conn) for ep, _ in units]

    async def one_round(inputs: list[bytes]) -> None:
        clock.now += 1.0
        if args.tls:
            for (ep, _), record in zip(pairs, inputs, strict=True):
                ep.protocol.data_received(record)
        else:
            received = hub.received
            for (_, conn), plain in zip(pairs, inputs, strict=True):
                received(conn, plain)
        await asyncio.sleep(0)  # the loop iteration the reads arrived in ends

    delivered = 0
    for inputs in rounds[:WARMUP]:
        await one_round(inputs)
    await settle()
    delivered += _count_publishes(sub.received())
    for ep, _ in units:
        ep.received()  # the warm-up's PUBACKs

    calls = 0
    if args.count_calls:

        def profiler(frame: Any, event: str, arg: Any) -> None:
            nonlocal calls
            if event == "call" or event == "c_call":
                calls += 1

        sys.setprofile(profiler)
        await one_round(rounds[WARMUP])
        await settle()
        sys.setprofile(None)
        delivered += _count_publishes(sub.received())
        measured = rounds[WARMUP + 1 : WARMUP + args.rounds]
    else:
        measured = rounds[WARMUP : WARMUP + args.rounds]

    started = time.perf_counter()
    for inputs in measured:
        await one_round(inputs)
    await settle()
    elapsed = time.perf_counter() - started
    delivered += _count_publishes(sub.received())
    sent = (WARMUP + args.rounds) * UNITS
    acks = 0
    if args.qos:
        acks = sum(len(ep.received()) for ep, _ in units) // 4  # PUBACKs since the warm-up, 4 bytes each
    return {
        "sent": sent,
        "delivered": delivered,
        "packet_len": packet_len,
        "calls_per_message": calls / UNITS,
        "msg_per_s": len(measured) * UNITS / elapsed if elapsed else 0.0,
        "acks_after_warmup": acks,
    }


def callgrind(args: argparse.Namespace) -> None:
    """Instructions per message: two runs under callgrind, small and large, the same input prepared."""
    short, long = max(1, args.rounds // 4), args.rounds
    counts = []
    for rounds in (short, long):
        cmd = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--workdir", args.workdir, "--qos", str(args.qos),
            "--rounds", str(rounds), "--prepare-rounds", str(long), "--no-count-calls",
            "--payload", args.payload,
        ] + (["--tls"] if args.tls else [])  # fmt: skip
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        match = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode or match is None:  # say why: the run's own output, not just its exit status
            raise SystemExit(done.stderr[-2000:])
        counts.append(int(match.group(1)))
        print(done.stdout.strip().splitlines()[-1])
    per_message = (counts[1] - counts[0]) / ((long - short) * UNITS)
    mode = ("TLS" if args.tls else "plain") + f", QoS {args.qos}, {args.payload} payload"
    print(f"instructions per message ({mode}): {per_message:,.0f}  ({counts[0]:,} / {counts[1]:,} Ir)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls", action="store_true", help="through TlsServerProtocol and MqttConnection")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument(
        "--payload",
        choices=("zeros", "json"),
        default="zeros",
        help="100 zero bytes, or a JSON GPS fix of 100 bytes",
    )
    parser.add_argument("--rounds", type=int, default=40, help="measured rounds (callgrind: the long run)")
    parser.add_argument("--prepare-rounds", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-count-calls", dest="count_calls", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind", action="store_true", help="instructions per message under valgrind")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "fleetgate-bench-fanin"))
    args = parser.parse_args()
    args.prepare_rounds = max(args.prepare_rounds, args.rounds)
    if args.callgrind:
        prepare(Path(args.workdir))
        callgrind(args)
        return
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args))
    mode = ("TLS" if args.tls else "plain") + f", QoS {args.qos}, {args.payload} payload"
    expected = result["sent"]
    got = result["delivered"]
    ok = "all delivered" if got == expected else f"DELIVERED {got:.0f}/{expected:.0f}"
    print(
        f"fan-in {UNITS}→1 ({mode}): {result['calls_per_message']:.1f} calls/message, "
        f"{result['msg_per_s']:,.0f} msg/s, {ok}"
        + (f", {result['acks_after_warmup']:.0f} PUBACKs" if args.qos else "")
    )


if __name__ == "__main__":
    main()
