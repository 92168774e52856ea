"""The cluster's data plane, first slice (docs/cluster.md, part 2): two `fleetgate serve` nodes on one
PostgreSQL and a cluster of three nats-servers (core NATS; node A on the first, node B on the second,
so every message crosses a route), real paho clients over mTLS. A unit on node A publishes;
a service on node B receives what the unit's grants allow, exactly once, and nothing else; a
quarantine made through node B stops the unit's telemetry on both nodes while its control topic keeps
flowing across them."""

from __future__ import annotations

import asyncio
import queue
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import psycopg
import pytest

from gateway.app.backbone import H_CLIENT, H_ID, H_MAC, H_NODE, H_QOS, H_RETAIN, H_TIME, sign
from gateway.broker.subjects import DEFAULT_PREFIX, topic_to_subject
from gateway.cli.device import device_csr
from pki.est_client import bootstrap, simpleenroll
from pki.keys import generate_private_key
from pki.records import to_text
from tests.clients import Paho, Received
from tests.harness import Credentials, GatewayProcess
from tests.nats import NatsServer, nats_cluster  # noqa: F401  (the module's nats-servers)
from tests.ops.helpers import api, metrics_text
from tests.pg import PgCluster


@dataclass
class Nodes:
    a: GatewayProcess
    b: GatewayProcess
    ops: Credentials
    dispatch: Credentials
    nats: list[NatsServer]
    url: str


def _node(root: Path, url: str, name: str, nats: str) -> GatewayProcess:
    env = {
        "FLEETGATE_DATABASE_URL": url,
        "FLEETGATE_CLUSTER_NODE_NAME": name,
        "FLEETGATE_CLUSTER_NATS": nats,
        "FLEETGATE_CLUSTER_JETSTREAM_REPLICAS": "0",  # core NATS (test_jetstream.py: JetStream)
    }
    return GatewayProcess(root, env=env)


@pytest.fixture(scope="module")
def nodes(
    pg_cluster: PgCluster,
    nats_cluster: list[NatsServer],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Nodes]:
    url = pg_cluster.new_database()
    root = tmp_path_factory.mktemp("backbone")
    first, second, _ = (server.url for server in nats_cluster)  # A and B meet only through the routes
    a = _node(root / "a", url, "node-a", first)
    a.init()
    b = _node(root / "b", url, "node-b", second)
    shutil.copytree(a.data, b.data)
    a.start()
    b.start()
    ops = a.issue("operator", "ops1", "--role", "ops")
    dispatch = a.issue("service", "dispatch")
    yield Nodes(a, b, ops, dispatch, nats_cluster, url)
    for node in (a, b):
        node.stop()


def _enroll(gw: GatewayProcess, unit: str) -> Credentials:
    token = gw.add_unit(unit)
    server = bootstrap(gw.https_url, ca_file=gw.root_ca)
    key = generate_private_key()
    return gw._save(unit, key, [simpleenroll(server, unit, token, device_csr(key, unit))])


def _client(gw: GatewayProcess, creds: Credentials, *filters: str) -> Paho:
    client = Paho(gw.mqtt_port, creds)
    assert client.connect()[0] == 0
    for topic_filter in filters:
        assert client.subscribe(topic_filter, 1) == [1]
    return client


def _drain(client: Paho, settle: float = 0.3) -> list[Received]:
    got = []
    while True:
        try:
            got.append(client.messages.get(timeout=settle))
        except queue.Empty:
            return got


def _until_arrives(publisher: Paho, topic: str, receiver: Paho, timeout: float = 10.0) -> None:
    """Publish on `topic` until `receiver` gets one: its node's NATS subscription is in place (a
    subscription made on one node reaches NATS a moment after its SUBACK; docs/cluster.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(topic, b"probe", qos=1)
        try:
            while True:
                message = receiver.messages.get(timeout=0.2)
                if message.topic == topic:
                    _drain(receiver, 0.2)
                    return
        except queue.Empty:
            continue
    raise AssertionError(f"nothing on {topic} crossed to the other node within {timeout}s")


def test_telemetry_crosses_nodes_exactly_once_at_qos_0_and_1(nodes: Nodes) -> None:
    unit = "TRK-NATS-1"
    # Two overlapping filters on node B: NATS holds two subscriptions there, the client gets one copy.
    service = _client(nodes.b, nodes.dispatch, "fleet/+/telemetry/#", f"fleet/{unit}/telemetry/gps")
    truck = _client(nodes.a, _enroll(nodes.a, unit))
    _until_arrives(truck, f"fleet/{unit}/telemetry/gps", service)
    sent = []
    for i in range(30):
        qos = i % 2
        payload = f"fix-{i}-q{qos}".encode()
        assert truck.publish(f"fleet/{unit}/telemetry/gps", payload, qos=qos) == 0
        sent.append((payload, qos))
    got = _drain(service, 1.0)
    assert sorted(m.payload for m in got) == sorted(p for p, _ in sent)  # each once, none twice
    assert {m.payload: m.qos for m in got} == dict(sent)  # QoS kept (the subscription allows 1)
    assert [m.payload for m in got if m.qos == 1] == [p for p, q in sent if q == 1]  # in order
    assert truck.publish(f"fleet/{unit}/telemetry/gps", b"fix-q2", qos=2) == 0  # at most once across
    assert [(m.payload, m.qos) for m in _drain(service, 1.0)] == [(b"fix-q2", 1)]  # the subscription's QoS
    truck.disconnect()
    service.disconnect()
    metrics = _metrics(metrics_text(nodes.b))
    assert metrics["fleetgate_backbone_connected"] == 1
    assert metrics["fleetgate_backbone_received_total"] >= 30
    assert metrics["fleetgate_backbone_duplicates_total"] >= 30  # the overlapping NATS subscriptions
    assert _metrics(metrics_text(nodes.a))["fleetgate_backbone_sent_total"] >= 30
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run(
            [promtool, "check", "metrics"],
            input=metrics_text(nodes.b),
            text=True,
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def _metrics(text: str) -> dict[str, float]:
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("fleetgate_backbone_") and "{" not in line
    }


def test_a_topic_outside_the_units_grants_never_reaches_the_other_node(nodes: Nodes) -> None:
    unit, other = "TRK-NATS-2", "TRK-NATS-3"
    service = _client(nodes.b, nodes.dispatch, "fleet/+/telemetry/#")
    truck = _client(nodes.a, _enroll(nodes.a, unit))
    _until_arrives(truck, f"fleet/{unit}/telemetry/gps", service)
    truck.publish(f"fleet/{other}/telemetry/gps", b"forged", qos=1)  # another unit's topic: denied at A
    truck.publish(f"fleet/{unit}/telemetry/gps", b"after", qos=1)
    payloads = [m.payload for m in _drain(service, 1.0)]
    assert payloads == [b"after"]  # the later, allowed one arrived; the forged one never did
    truck.disconnect()
    service.disconnect()


def test_quarantine_through_node_b_drops_telemetry_on_both_nodes_control_keeps_flowing(nodes: Nodes) -> None:
    unit = "TRK-NATS-4"
    dispatch_b = _client(nodes.b, nodes.dispatch, "fleet/+/telemetry/#", f"fleet/{unit}/control/#")
    watcher_a = _client(nodes.a, nodes.ops, "fleet/+/telemetry/#")
    truck = _client(nodes.a, _enroll(nodes.a, unit), f"fleet/{unit}/control/#", f"fleet/{unit}/cmd/#")
    _until_arrives(truck, f"fleet/{unit}/telemetry/gps", dispatch_b)
    _drain(watcher_a, 0.2)
    _drain(truck, 0.2)

    status, body = api(nodes.b, nodes.ops, "POST", f"/api/units/{unit}/quarantine", {"reason": "t"})
    assert status == 200, body
    deadline = time.monotonic() + 10  # node A follows the registry, and tells the unit
    while not any(m.topic.endswith("/cmd/mode") and b"diagnostic-only" in m.payload for m in _drain(truck)):
        assert time.monotonic() < deadline, "node A did not follow the quarantine made through node B"

    truck.publish(f"fleet/{unit}/telemetry/gps", b"while-quarantined", qos=1)
    # Control across the nodes, both ways: dispatch on B commands the unit on A, the unit acks.
    assert dispatch_b.publish(f"fleet/{unit}/control/brake", b"engage", qos=1) == 0
    got = truck.expect(1)
    assert (got[0].topic, got[0].payload) == (f"fleet/{unit}/control/brake", b"engage")
    assert truck.publish(f"fleet/{unit}/control/brake/ack", b"done", qos=1) == 0
    seen_b = _drain(dispatch_b, 1.0)
    assert [(m.topic, m.payload) for m in seen_b] == [
        (f"fleet/{unit}/control/brake", b"engage"),  # dispatch's own subscription matches it (local)
        (f"fleet/{unit}/control/brake/ack", b"done"),
    ]
    assert not [m for m in _drain(watcher_a, 0.2) if b"while-quarantined" in m.payload]
    for client in (truck, dispatch_b, watcher_a):
        client.disconnect()


def _inject(server: str, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
    """Publish on NATS as a process that reached the NATS servers but is no fleetgate node."""

    async def run() -> None:
        nc = await nats.connect(server)
        await nc.publish(subject, payload, headers=headers)
        await nc.flush()
        await nc.close()

    asyncio.run(run())


def _dropped(gw: GatewayProcess, reason: str) -> float:
    line = f'fleetgate_backbone_dropped_total{{reason="{reason}"}}'
    return sum(float(x.split()[-1]) for x in metrics_text(gw).splitlines() if x.startswith(line))


def test_nothing_injected_into_nats_reaches_a_units_control_channel(nodes: Nodes) -> None:
    """NATS carries only what a node accepted and signed: a forged command, one signed with another
    key, and a genuine message replayed later are all refused by node B, and counted; a command from
    dispatch through node A still arrives."""
    unit = "TRK-NATS-6"
    truck = _client(nodes.b, _enroll(nodes.b, unit), f"fleet/{unit}/control/#")
    dispatch_a = _client(nodes.a, nodes.dispatch)
    _until_arrives(dispatch_a, f"fleet/{unit}/control/probe", truck)
    subject = topic_to_subject(f"fleet/{unit}/control/brake", DEFAULT_PREFIX)
    server = nodes.nats[1].url  # node B's own server
    headers = {H_NODE: "node-a", H_ID: "forged:1", H_CLIENT: '"dispatch"', H_QOS: "1", H_RETAIN: "0",
               H_TIME: str(int(time.time() * 1000))}  # fmt: skip
    _inject(server, subject, b"release-brakes", None)  # no headers at all
    _inject(server, subject, b"release-brakes", {**headers, H_MAC: sign(b"k" * 32, subject, headers, b"x")})
    stale = {**headers, H_ID: "forged:2", H_TIME: str(int((time.time() - 600) * 1000))}
    key = bytes.fromhex(_query(nodes, "SELECT value FROM cluster_secrets WHERE name = 'backbone'"))
    _inject(
        server, subject, b"release-brakes", {**stale, H_MAC: sign(key, subject, stale, b"release-brakes")}
    )
    assert dispatch_a.publish(f"fleet/{unit}/control/brake", b"engage", qos=1) == 0
    got = [(m.topic, m.payload) for m in _drain(truck, 1.0)]
    assert got == [(f"fleet/{unit}/control/brake", b"engage")]  # dispatch's command, and only it
    assert _dropped(nodes.b, "unauthenticated") >= 2 and _dropped(nodes.b, "stale") >= 1
    truck.disconnect()
    dispatch_a.disconnect()


def _query(nodes: Nodes, sql: str) -> str:
    with psycopg.connect(nodes.url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return str(row[0])


def _form_on_nats(nodes: Nodes, truck: Paho, topic: str, payload: bytes) -> str:
    """Publish `payload` from `truck` and say which wire form it crossed NATS in."""

    async def run() -> tuple[dict[str, str] | None, bytes]:
        nc = await nats.connect(nodes.nats[0].url)  # node A's server: no route to wait for
        sub = await nc.subscribe(topic_to_subject(topic, DEFAULT_PREFIX))
        await nc.flush()
        await asyncio.get_running_loop().run_in_executor(None, truck.publish, topic, payload, 0)
        while True:  # this test's message, not a probe still on its way
            msg = await sub.next_msg(timeout=5)
            if msg.data.endswith(payload):
                await nc.close()
                return msg.headers, msg.data

    headers, data = asyncio.run(run())
    if data == payload and headers is not None and H_MAC in headers:
        return "first form"
    assert data.startswith(b"FG2\t") and not (headers or {}).get(H_MAC), (headers, data[:80])
    return "sealed"


def test_while_a_node_of_an_earlier_version_is_up_the_others_send_it_the_first_wire_form(
    nodes: Nodes,
) -> None:
    """A rolling upgrade: a node that does not read the sealed form heartbeats in the nodes table (it
    never records that it reads it), so node A sends the first form, which every node reads, and
    seals again once that node is gone. The service on node B gets every message either way."""
    unit = "TRK-NATS-7"
    topic = f"fleet/{unit}/telemetry/gps"
    service = _client(nodes.b, nodes.dispatch, "fleet/+/telemetry/#")
    truck = _client(nodes.a, _enroll(nodes.a, unit))
    _until_arrives(truck, topic, service)

    def until_form(expected: str) -> None:
        deadline = time.monotonic() + 10  # each node looks at the nodes table once a second
        n = 0
        while (form := _form_on_nats(nodes, truck, topic, f"fix-{n}".encode())) != expected:
            assert time.monotonic() < deadline, f"node A still sends the {form}"
            n += 1
            time.sleep(0.2)  # within the unit's rate limit
        received = [m.payload for m in _drain(service, 0.5)]
        assert received and received[-1] == f"fix-{n}".encode(), received

    until_form("sealed")  # two nodes of this version
    later = to_text(datetime.now(UTC) + timedelta(hours=1))  # up, whatever the clocks say
    with psycopg.connect(nodes.url) as conn:
        conn.execute(
            "INSERT INTO cluster_nodes (name, started_at, seen_at, sessions, units_online, listeners, "
            "healthy, backbone) VALUES ('node-old', %s, %s, 0, 0, '', 1, 'connected')",
            (later, later),
        )
    try:
        until_form("first form")
        status = nodes.a.cli("cluster", "status", "-o", "json")
        assert status.code == 0, status.stderr
        assert {r["name"]: r["wire"] for r in status.json()} == {  # type: ignore[index,union-attr]
            "node-a": "sealed",
            "node-b": "sealed",
            "node-old": "first form",
        }
    finally:
        with psycopg.connect(nodes.url) as conn:
            conn.execute("DELETE FROM cluster_nodes WHERE name = 'node-old'")
    until_form("sealed")
    truck.disconnect()
    service.disconnect()


def test_node_b_moves_to_another_nats_server_when_its_own_stops(nodes: Nodes) -> None:
    """Node B was told of one NATS server only; it learnt the others from the cluster (NATS advertises
    them), reconnects to one of them when its server stops, and its NATS subscriptions come back. What
    was published while it was away is lost for its subscribers (core NATS; docs/cluster.md). Last in
    the module: it stops a server."""
    unit = "TRK-NATS-5"
    service = _client(nodes.b, nodes.dispatch, "fleet/+/telemetry/#")
    truck = _client(nodes.a, _enroll(nodes.a, unit))
    _until_arrives(truck, f"fleet/{unit}/telemetry/gps", service)
    nodes.nats[1].stop()  # node B's server
    _until_arrives(truck, f"fleet/{unit}/telemetry/gps", service, timeout=15)
    truck.publish(f"fleet/{unit}/telemetry/gps", b"after-failover", qos=1)
    assert [m.payload for m in _drain(service, 1.0)] == [b"after-failover"]
    assert "cluster backbone: NATS connection back" in nodes.b.log()
    truck.disconnect()
    service.disconnect()
