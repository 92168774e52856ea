"""`fleetgate serve --workers 2` (docs/cluster.md, "One machine, every core"): one gateway started as a
real subprocess through the CLI, on SQLite with no cluster configured, so its parent starts a local
nats-server. Real paho clients over mTLS. Which worker accepted a client is read from the gateway's
log: each worker's lines carry its node name, and every audit record is mirrored there
(`[gw-w1] fleetgate.audit: mqtt.connect TRK-W-1 ok …`)."""

from __future__ import annotations

import os
import queue
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app.workers import RestartBackoff
from tests.clients import Paho, Received
from tests.harness import Credentials, GatewayProcess, run_cli
from tests.nats import skip_without_nats
from tests.ops.helpers import context

WORKERS = ("-w0", "-w1")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    skip_without_nats()
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("workers"),
        extra_args=("--workers", "2"),
        env={"FLEETGATE_CLUSTER_NODE_NAME": "gw", "FLEETGATE_LISTEN_WORKER_HTTPS": "127.0.0.1:0"},
    )
    gateway.init()
    try:
        gateway.start()
        _until(
            lambda: gateway.log().count("cluster backbone: connected to NATS") >= 2, "both workers on NATS"
        )
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def dispatch(gw: GatewayProcess) -> Credentials:
    return gw.issue("service", "dispatch")


@pytest.fixture(scope="module")
def truck(gw: GatewayProcess) -> Credentials:
    return gw.enroll_unit("TRK-W-1")  # EST through the shared HTTPS port (whichever worker took it)


def _until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


CONNECTED = re.compile(r"\[(gw-w\d)\] fleetgate\.audit: mqtt\.connect (\S+) ok")


def _head(gw: GatewayProcess) -> int:
    """Where the log ends now."""
    return len(gw.log())


def _worker_of(gw: GatewayProcess, client_id: str, after: int) -> str:
    """The worker whose audit record says it accepted `client_id`'s CONNECT (logged after `after`)."""
    found: list[str] = []

    def recorded() -> bool:
        found[:] = [node for node, who in CONNECTED.findall(gw.log()[after:]) if who == client_id]
        return bool(found)

    _until(recorded, f"the connect of {client_id} in the log")
    return found[-1]


def _connect_on(gw: GatewayProcess, creds: Credentials, worker: str, *filters: str) -> Paho:
    """Connect until the kernel hands the connection to `worker` (SO_REUSEPORT picks by the source
    port: each new connection is a new draw)."""
    for _ in range(16):
        after = _head(gw)
        client = Paho(gw.mqtt_port, creds)
        assert client.connect()[0] == 0
        if _worker_of(gw, creds.ident, after).endswith(worker):
            for topic_filter in filters:
                assert client.subscribe(topic_filter, 1) == [1]
            return client
        client.disconnect()
    raise AssertionError(f"{creds.ident} never landed on {worker}")


def _drain(client: Paho, settle: float = 0.3) -> list[Received]:
    got = []
    while True:
        try:
            got.append(client.messages.get(timeout=settle))
        except queue.Empty:
            return got


def _until_arrives(publisher: Paho, topic: str, receiver: Paho, timeout: float = 10.0) -> None:
    """Publish until `receiver` gets one: the other worker's NATS subscription is in place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(topic, b"probe", qos=1)
        try:
            while True:
                if receiver.messages.get(timeout=0.2).topic == topic:
                    _drain(receiver, 0.2)
                    return
        except queue.Empty:
            continue
    raise AssertionError(f"nothing on {topic} crossed to the other worker within {timeout}s")


def _children(pid: int) -> list[int]:
    """Every live process whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _worker_pid(gw: GatewayProcess, index: int) -> int:
    assert gw.proc is not None
    for pid in _children(gw.proc.pid):
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2:-1] == [str(index).encode()]:
            return pid
    raise AssertionError(f"no worker {index} under the parent")


def test_a_worker_dying_young_again_and_again_waits_longer_each_time_up_to_30_s() -> None:
    """A crash loop does not spin: the delay doubles while the worker keeps dying young, is capped,
    and is short again once a worker lived long enough to count as healthy."""
    backoff = RestartBackoff()
    assert [backoff.delay(lived=1.0) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.delay(lived=3600.0) == 0.5
    assert backoff.delay(lived=1.0) == 1


def test_a_unit_connecting_again_and_again_lands_on_both_workers(
    gw: GatewayProcess, truck: Credentials
) -> None:
    seen = set()
    for _ in range(16):
        after = _head(gw)
        client = Paho(gw.mqtt_port, truck)
        assert client.connect()[0] == 0
        seen.add(_worker_of(gw, "TRK-W-1", after))
        client.disconnect()
        if len(seen) == 2:
            break
    assert seen == {"gw-w0", "gw-w1"}
    status = gw.cli("cluster", "status", "-o", "json", check=True).json()
    assert {(row["name"], row["state"], row["backbone"]) for row in status} == {  # type: ignore[index,union-attr]
        ("gw-w0", "up", "connected"),
        ("gw-w1", "up", "connected"),
    }


def _online(gw: GatewayProcess) -> tuple[int, int]:
    rows = gw.cli("cluster", "status", "-o", "json", check=True).json()
    return sum(r["sessions"] for r in rows), sum(r["units_online"] for r in rows)  # type: ignore[index,union-attr,misc]


def test_cluster_status_counts_a_connected_unit_on_its_worker_and_forgets_it_when_it_leaves(
    gw: GatewayProcess, truck: Credentials
) -> None:
    client = Paho(gw.mqtt_port, truck)
    assert client.connect()[0] == 0
    try:
        deadline = time.monotonic() + 10  # each worker's heartbeat writes its row once a second
        while _online(gw) != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _online(gw) == (1, 1)
    finally:
        client.disconnect()
    deadline = time.monotonic() + 10
    while _online(gw) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _online(gw) == (0, 0)


OWN_HTTPS = re.compile(r"worker (gw-w\d): its own https 127\.0\.0\.1:(\d+)")


def test_each_worker_answers_metrics_alone_on_its_own_https_address(gw: GatewayProcess) -> None:
    # The shared HTTPS port hands each connection to any worker; a Prometheus scrape of one worker
    # needs an address of its own (listen.worker_https, here port 0: one free port each, logged).
    own = dict(OWN_HTTPS.findall(gw.log()))
    assert set(own) == {"gw-w0", "gw-w1"} and own["gw-w0"] != own["gw-w1"]
    reader = context(gw, gw.metrics_reader())
    for node, port in own.items():
        for _ in range(3):  # the same worker every time
            url = f"https://localhost:{port}/metrics"
            with urllib.request.urlopen(url, context=reader, timeout=10) as response:
                text = response.read().decode()
            assert f'fleetgate_node_info{{node="{node}"}} 1.0' in text
    # and like the shared port, it wants the metrics role
    with pytest.raises(urllib.error.HTTPError) as refused:
        url = f"https://localhost:{own['gw-w0']}/metrics"
        urllib.request.urlopen(url, context=context(gw, None), timeout=10)
    assert refused.value.code == 401


def test_qos_0_and_1_cross_from_a_unit_on_one_worker_to_a_service_on_the_other(
    gw: GatewayProcess, dispatch: Credentials, truck: Credentials
) -> None:
    topic = f"fleet/{truck.ident}/telemetry/gps"
    service = _connect_on(gw, dispatch, "-w1", "fleet/+/telemetry/#")
    unit = _connect_on(gw, truck, "-w0")
    _until_arrives(unit, topic, service)
    sent = []
    for i in range(20):
        payload, qos = f"fix-{i}".encode(), i % 2
        assert unit.publish(topic, payload, qos=qos) == 0
        sent.append((payload, qos))
    got = _drain(service, 1.0)
    assert sorted((m.payload, m.qos) for m in got) == sorted(sent)  # every one, once, at its QoS
    unit.disconnect()
    service.disconnect()


def test_a_cli_quarantine_drops_telemetry_on_both_workers_and_control_still_reaches_the_unit(
    gw: GatewayProcess, dispatch: Credentials
) -> None:
    unit = "TRK-W-3"
    service = _connect_on(gw, dispatch, "-w1", "fleet/+/telemetry/#", f"fleet/{unit}/control/#")
    truck = _connect_on(gw, gw.enroll_unit(unit), "-w0", f"fleet/{unit}/control/#", f"fleet/{unit}/cmd/#")
    _until_arrives(truck, f"fleet/{unit}/telemetry/gps", service)
    _drain(truck, 0.2)

    gw.cli("unit", "quarantine", unit, "--reason", "workers test", check=True)  # a third process
    deadline = time.monotonic() + 10  # worker 0 follows the registry and tells the unit
    while not any(m.topic.endswith("/cmd/mode") and b"diagnostic-only" in m.payload for m in _drain(truck)):
        assert time.monotonic() < deadline, "the unit's worker did not follow the CLI's quarantine"

    truck.publish(f"fleet/{unit}/telemetry/gps", b"while-quarantined", qos=1)
    assert service.publish(f"fleet/{unit}/control/brake", b"engage", qos=1) == 0  # worker 1 -> worker 0
    got = truck.expect(1)
    assert (got[0].topic, got[0].payload) == (f"fleet/{unit}/control/brake", b"engage")
    assert truck.publish(f"fleet/{unit}/control/brake/ack", b"done", qos=1) == 0
    seen = [(m.topic, m.payload) for m in _drain(service, 1.0)]
    assert (f"fleet/{unit}/control/brake/ack", b"done") in seen
    assert not [p for _, p in seen if p == b"while-quarantined"]
    truck.disconnect()
    service.disconnect()


def test_kill_9_of_a_worker_restarts_it_its_unit_reconnects_the_other_workers_sessions_stay(
    gw: GatewayProcess, dispatch: Credentials, truck: Credentials
) -> None:
    topic = f"fleet/{truck.ident}/telemetry/gps"
    service = _connect_on(gw, dispatch, "-w1", "fleet/+/telemetry/#")
    unit = _connect_on(gw, truck, "-w0")
    _until_arrives(unit, topic, service)
    victim = _worker_pid(gw, 0)

    os.kill(victim, signal.SIGKILL)
    _until(lambda: "worker gw-w0 restarted" in gw.log(), "the parent restarting worker 0")
    assert f"worker gw-w0 (pid {victim}) was killed by SIGKILL" in gw.log()
    assert _worker_pid(gw, 0) != victim
    assert unit.connack.get(timeout=20)[0] == 0  # paho reconnects by itself, to whichever worker
    _until_arrives(unit, topic, service, timeout=20)
    assert service.disconnects.empty()  # the service on worker 1 never lost its session
    unit.disconnect()
    service.disconnect()


def test_without_nats_server_the_parent_says_which_package_to_install(gw: GatewayProcess) -> None:
    result = run_cli(
        "serve",
        "--workers",
        "2",
        data=gw.data,
        env={"FLEETGATE_NATS_SERVER": str(gw.root / "no-such-binary")},
    )
    assert result.code == 1
    assert "install the Debian package nats-server" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_every_worker_and_the_nats_server_exit_0(gw: GatewayProcess) -> None:
    """Last in the module: it stops the gateway."""
    assert gw.proc is not None
    children = _children(gw.proc.pid)
    names = sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in children)
    assert names.count("nats-server") == 1 and len(children) == 3  # two workers and nats-server
    assert gw.stop(signal.SIGTERM) == 0
    assert [pid for pid in children if _alive(pid)] == []
    assert "Traceback" not in gw.log()
    verified = gw.cli("audit", "verify", check=True)  # both workers appended to one chain all along
    assert "audit log intact" in verified.stdout


def test_workers_and_nats_server_die_with_the_parent(gw: GatewayProcess) -> None:
    """kill -9 of the parent: its workers and nats-server follow (PR_SET_PDEATHSIG), even a worker
    still starting."""
    gw.start()
    assert gw.proc is not None
    children = _children(gw.proc.pid)
    assert len(children) == 3
    gw.proc.kill()
    gw.proc.wait()
    gw.proc = None
    # SIGTERM: each ends as it would under systemd's stop, a worker still starting only once it has
    # started; 10 s was too short once on a loaded CI machine (-n 2 beside the cluster tests).
    _until(lambda: not [pid for pid in children if _alive(pid)], "the workers and nats-server ending", 30)
