"""Sessions, retained messages, shared subscriptions, wills and detector state across nodes
(docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes"):
three `fleetgate serve` nodes on one PostgreSQL and three nats-servers with JetStream (node N on
server N, so everything crosses routes), real paho clients over mTLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nats
import psycopg
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from gateway.app.backbone import H_MAC, H_NODE, H_TIME, sign
from gateway.app.backbone_durable import stream_name
from gateway.broker.subjects import DEFAULT_PREFIX, topic_to_subject
from gateway.config import ENV_PREFIX
from gateway.mqtt.client import MqttClient
from gateway.mqtt.packets import Connack, Disconnect
from tests.clients import Paho, Received
from tests.cluster.test_nats_backbone import _client, _drain, _enroll, _until_arrives
from tests.harness import Credentials, GatewayProcess
from tests.nats import NatsServer, nats_js_cluster  # noqa: F401  (the module's nats-servers)
from tests.ops.helpers import metrics_text
from tests.pg import PgCluster

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "gateway" / "defaults" / "policy.yaml"
SHARED = "$share/ops-watch/fleet/+/telemetry/#"
TRIALS = int(os.environ.get("CLUSTER_BENCH_TRIALS", "1"))  # 50 for the figures in docs/cluster.md


@dataclass
class Cluster:
    nodes: list[GatewayProcess]
    ops: list[Credentials]  # two ops operators: one profile, so they may share `ops-watch`
    dispatch: Credentials
    url: str


def _policy(root: Path) -> Path:
    """The default policy with the ops role sharing the `ops-watch` group."""
    text = DEFAULT_POLICY.read_text()
    assert "      # share_groups: [ops-watch]" in text
    path = root / "policy.yaml"
    path.write_text(text.replace("      # share_groups: [ops-watch]", "      share_groups: [ops-watch]"))
    return path


@pytest.fixture(scope="module")
def cluster(
    pg_cluster: PgCluster,
    nats_js_cluster: list[NatsServer],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    url = pg_cluster.new_database()
    root = tmp_path_factory.mktemp("sessions")
    policy = _policy(root)
    nodes = []
    for i, server in enumerate(nats_js_cluster):
        env = {
            f"{ENV_PREFIX}DATABASE_URL": url,
            f"{ENV_PREFIX}CLUSTER_NODE_NAME": f"node-{i + 1}",
            f"{ENV_PREFIX}CLUSTER_NATS": server.url,
            f"{ENV_PREFIX}POLICY_FILE": str(policy),
        }
        nodes.append(GatewayProcess(root / f"n{i + 1}", env=env))
    nodes[0].init()
    for node in nodes[1:]:
        shutil.copytree(nodes[0].data, node.data)
    nodes[0].start()  # the first creates the schema; the others start side by side
    with ThreadPoolExecutor(4) as pool:
        started = [pool.submit(node.start) for node in nodes[1:]]
        issued = [pool.submit(nodes[0].issue, "operator", f"ops{i}", "--role", "ops") for i in range(2)]
        dispatch = pool.submit(nodes[0].issue, "service", "dispatch").result()
        ops = [future.result() for future in issued]
        for future in started:
            future.result()
    for node in nodes:
        for following in ("cluster retained: following stream", "cluster session records: following stream"):
            _wait_for(lambda n=node, f=following: f in n.log(), following, timeout=40)
    yield Cluster(nodes, ops, dispatch, url)
    for node in nodes:
        node.stop()


def _wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


def _audit(cluster: Cluster, action: str, subject: str) -> list[dict[str, object]]:
    with psycopg.connect(cluster.url) as conn:
        rows = conn.execute(
            "SELECT outcome, reason, details FROM audit_log WHERE action = %s AND subject = %s ORDER BY seq",
            (action, subject),
        ).fetchall()
    return [{"outcome": o, "reason": r, **json.loads(d)} for o, r, d in rows]


def _counter(node: GatewayProcess, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics_text(node).splitlines() if line.startswith(name))


def _disconnect_reason(client: Paho, timeout: float = 10.0) -> int:
    reason = client.disconnects.get(timeout=timeout)
    client.client.loop_stop()  # no reconnect: the device that lost its session stays away
    return reason


# --- 1. one live session per client id ---------------------------------------------------------


@pytest.mark.parametrize("version", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_a_connect_on_another_node_takes_the_session_over(
    cluster: Cluster, version: MQTTProtocolVersion
) -> None:
    """Node 2 takes over node 1's connection: the old one is closed (5.0: DISCONNECT 0x8E "Session
    taken over"), the new one works, and the takeover is audited once (by node 2, which accepted the
    new connection; the cloning detector is fed from the same event)."""
    n1, n2, n3 = cluster.nodes
    unit = f"TRK-TAKE-{int(version)}"
    creds = _enroll(n1, unit)
    watcher = _client(n3, cluster.dispatch, f"fleet/{unit}/state")
    old = Paho(n1.mqtt_port, creds, version=version)
    assert old.connect()[0] == 0
    assert old.subscribe(f"fleet/{unit}/control/#") == [1]
    new = Paho(n2.mqtt_port, creds, version=version)
    assert new.connect()[0] == 0
    reason = _disconnect_reason(old)
    if version == MQTTProtocolVersion.MQTTv5:
        assert reason == 0x8E  # Session taken over
    # The new connection works across the cluster (to node 3 and back from it).
    _until_arrives(new, f"fleet/{unit}/state", watcher)
    assert new.subscribe(f"fleet/{unit}/control/#") == [1]
    dispatch = _client(n3, cluster.dispatch)
    _until_arrives(dispatch, f"fleet/{unit}/control/probe", new)
    assert old.messages.empty()
    _wait_for(lambda: _audit(cluster, "mqtt.takeover", unit), "the takeover's audit record")
    time.sleep(1.0)  # both nodes' event ticks ran several times since
    records = _audit(cluster, "mqtt.takeover", unit)
    assert len(records) == 1, records
    assert records[0]["outcome"] == "suspicious" and records[0]["node"] == "node-2"
    assert _counter(n1, "fleetgate_sessions_taken_elsewhere_total") >= 1
    for client in (new, watcher, dispatch):
        client.disconnect()


def test_connects_in_quick_succession_on_three_nodes_leave_the_last(cluster: Cluster) -> None:
    """Connects on nodes 1, 2 and 3 one after the other in quick succession: the last one is the
    session everywhere, the others are taken over."""
    unit = "TRK-RACE"
    creds = _enroll(cluster.nodes[0], unit)
    clients = [Paho(node.mqtt_port, creds) for node in cluster.nodes]
    for client in clients:
        client.client.reconnect_delay_set(60, 120)  # a taken-over client stays away for the test
        assert client.connect()[0] == 0
    for loser in clients[:-1]:
        assert loser.disconnects.get(timeout=10) == 0x8E
    time.sleep(0.5)
    assert clients[-1].disconnects.empty()
    watcher = _client(cluster.nodes[0], cluster.dispatch, f"fleet/{unit}/state")
    _until_arrives(clients[-1], f"fleet/{unit}/state", watcher)
    for client in clients:
        client.client.loop_stop()
    clients[-1].disconnect()
    watcher.disconnect()


def test_how_long_a_takeover_across_nodes_takes(cluster: Cluster) -> None:
    """The old connection is a plain blocking TLS socket with the project's sans-IO client, so the
    moment its DISCONNECT arrives is when it is read (paho's loop may sit on TLS bytes for up to a
    second). Printed (run with -s) for docs/cluster.md; the assertion is only that it happened."""
    n1, n2, _ = cluster.nodes
    unit = "TRK-TAKE-TIMED"
    creds = _enroll(n1, unit)
    for _trial in range(TRIALS):
        old = _RawSession(n1, creds)
        new = Paho(n2.mqtt_port, creds)
        started = time.monotonic()
        assert new.connect()[0] == 0
        connacked = time.monotonic()
        cut = old.wait_for_disconnect()
        assert cut is not None and cut[0] == 0x8E
        print(
            f"\ntakeover across nodes: new CONNACK {1000 * (connacked - started):.0f} ms after its "
            f"connect began, old DISCONNECT 0x8E read {1000 * (cut[1] - started):.0f} ms after it"
        )
        new.disconnect()
        time.sleep(0.3)


class _RawSession:
    def __init__(self, node: GatewayProcess, creds: Credentials) -> None:
        raw = socket.create_connection(("localhost", node.mqtt_port), timeout=10)
        self.sock = node.client_context(creds).wrap_socket(raw, server_hostname="localhost")
        self.client = MqttClient(creds.ident)
        self.client.connect()
        self.sock.sendall(self.client.data_to_send())
        assert any(isinstance(e, Connack) and e.reason_code == 0 for e in self._read())

    def _read(self) -> list[object]:
        data = self.sock.recv(65536)
        return [] if not data else list(self.client.receive_data(data))

    def wait_for_disconnect(self) -> tuple[int, float] | None:
        try:
            while True:
                events = self._read()
                for event in events:
                    if isinstance(event, Disconnect):
                        return event.reason_code, time.monotonic()
                if not events:
                    return None
        finally:
            self.sock.close()


# --- 2. retained messages stored once ------------------------------------------------------------


def _retained(node: GatewayProcess, creds: Credentials, topic_filter: str) -> list[Received]:
    fresh = _client(node, creds, topic_filter)
    try:
        return [m for m in fresh.quiet(0.7) if m.retain]
    finally:
        fresh.disconnect()


def test_a_retained_message_set_via_node_3_reaches_a_new_subscriber_on_node_1(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    unit = "TRK-RET"
    creds = _enroll(n3, unit)
    truck = _client(n3, creds)
    assert truck.publish(f"fleet/{unit}/state", b"online", qos=1, retain=True) == 0
    deadline = time.monotonic() + 10
    while not (got := _retained(n1, cluster.dispatch, f"fleet/{unit}/state")):
        assert time.monotonic() < deadline, "node 1 never had the retained message"
    assert [(m.topic, m.payload) for m in got] == [(f"fleet/{unit}/state", b"online")]
    assert _counter(n1, "fleetgate_cluster_retained_following") == 1
    assert _counter(n3, "fleetgate_cluster_retained_published_total") >= 1
    # Delivery of the stored copy is judged per subscriber, as on one node: a unit may not read it.
    other = _enroll(n1, "TRK-RET-OTHER")
    probe = Paho(n1.mqtt_port, other)
    assert probe.connect()[0] == 0
    assert probe.subscribe(f"fleet/{unit}/state") == [0x87]
    probe.disconnect()
    # A clear through node 2 clears it everywhere.
    truck.disconnect()
    clearer = _client(n2, creds)
    assert clearer.publish(f"fleet/{unit}/state", b"", qos=1, retain=True) == 0
    for node in (n1, n3):
        deadline = time.monotonic() + 10
        while _retained(node, cluster.dispatch, f"fleet/{unit}/state"):
            assert time.monotonic() < deadline, "the clear did not reach every node"
    clearer.disconnect()


# --- 3. shared subscriptions --------------------------------------------------------------------


def test_a_shared_subscription_splits_across_nodes_without_duplicates_or_loss(cluster: Cluster) -> None:
    """Members of one share group on nodes 1 and 2, a publisher on node 3: every message reaches
    exactly one member, and both nodes take some."""
    n1, n2, n3 = cluster.nodes
    unit = "TRK-SHARE"
    members = [_client(n1, cluster.ops[0], SHARED), _client(n2, cluster.ops[1], SHARED)]
    truck = _client(n3, _enroll(n3, unit))
    probe_deadline = time.monotonic() + 10
    seen = 0
    while seen < 2:  # until both nodes' queue subscriptions are in NATS: each got a probe
        assert time.monotonic() < probe_deadline, "the share group's queue subscriptions never showed"
        truck.publish(f"fleet/{unit}/telemetry/probe", b"probe", qos=1)
        seen = sum(1 for m in members if not m.messages.empty())
        time.sleep(0.05)
    time.sleep(0.5)
    for member in members:
        _drain(member, 0.2)
    count = 80  # within the unit's burst (100) with the probes
    for i in range(count):
        assert truck.publish(f"fleet/{unit}/telemetry/gps", str(i).encode(), qos=1) == 0
    got = [[int(m.payload) for m in _drain(member, 1.0)] for member in members]
    print(f"\nshare group across nodes: node 1 took {len(got[0])}, node 2 took {len(got[1])} of {count}")
    assert sorted(got[0] + got[1]) == list(range(count))  # every one, once
    assert got[0] and got[1]  # both nodes took a share
    promtool = shutil.which("promtool")
    if promtool is not None:  # the new families pass Prometheus's own check
        check = subprocess.run(
            [promtool, "check", "metrics"],
            input=metrics_text(n1),
            text=True,
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    for client in (*members, truck):
        client.disconnect()


def test_a_share_group_member_on_the_publishers_node_takes_its_messages_without_a_crossing(
    cluster: Cluster,
) -> None:
    """Local first: with a member of the group on the publisher's node, that member takes every
    message there (none crosses to node 2's member, none twice); once it leaves, node 2's member
    takes them through NATS."""
    n1, n2, _ = cluster.nodes
    unit = "TRK-SHARE-LOCAL"
    truck = _client(n1, _enroll(n1, unit))
    remote = _client(n2, cluster.ops[1], SHARED)
    probe_deadline = time.monotonic() + 10
    while remote.messages.empty():  # node 2's queue subscription is in NATS: it got a probe
        assert time.monotonic() < probe_deadline, "node 2's share-group member never got a message"
        truck.publish(f"fleet/{unit}/telemetry/probe", b"probe", qos=1)
        time.sleep(0.05)
    local = _client(n1, cluster.ops[0], SHARED)
    time.sleep(0.5)
    for member in (local, remote):
        _drain(member, 0.2)
    served = "fleetgate_cluster_shared_served_at_origin_total"
    dropped_before = _counter(n1, served) + _counter(n2, served)
    count = 40
    for i in range(count):
        assert truck.publish(f"fleet/{unit}/telemetry/gps", str(i).encode(), qos=1) == 0
    here = [int(m.payload) for m in _drain(local, 1.0)]
    there = [int(m.payload) for m in _drain(remote, 0.5)]
    assert here == list(range(count)) and there == []  # all on node 1, in order, each once
    # and the one node NATS picked for the group, each time, dropped it as served at its origin
    deadline = time.monotonic() + 5
    while _counter(n1, served) + _counter(n2, served) - dropped_before < count:
        assert time.monotonic() < deadline, "the group's queue subscribers did not see every message"
        time.sleep(0.1)
    assert _counter(n1, served) + _counter(n2, served) - dropped_before == count
    local.disconnect()
    for i in range(count, count + 10):
        assert truck.publish(f"fleet/{unit}/telemetry/gps", str(i).encode(), qos=1) == 0
    assert sorted(int(m.payload) for m in _drain(remote, 1.0)) == list(range(count, count + 10))
    for client in (remote, truck):
        client.disconnect()


# --- 4. wills -----------------------------------------------------------------------------------


def test_a_will_fired_on_node_1_reaches_a_subscriber_on_node_2(cluster: Cluster) -> None:
    n1, n2, _ = cluster.nodes
    unit = "TRK-WILL"
    creds = _enroll(n1, unit)
    watcher = _client(n2, cluster.dispatch, f"fleet/{unit}/state")
    truck = Paho(n1.mqtt_port, creds, will=(f"fleet/{unit}/state", b"gone", 1, False))
    assert truck.connect()[0] == 0
    _until_arrives(truck, f"fleet/{unit}/state", watcher)
    truck.drop()
    got = watcher.expect(1)
    assert [(m.topic, m.payload) for m in got] == [(f"fleet/{unit}/state", b"gone")]
    watcher.disconnect()


# --- 5. detector state that follows a unit ------------------------------------------------------


def test_impossible_travel_across_a_reconnect_to_another_node_still_fires(cluster: Cluster) -> None:
    n1, n2, _ = cluster.nodes
    unit = "TRK-TRAVEL"
    creds = _enroll(n1, unit)
    truck = _client(n1, creds)
    now = int(time.time())
    paris = json.dumps({"lat": 48.8566, "lon": 2.3522, "ts": now - 30}).encode()
    assert truck.publish(f"fleet/{unit}/telemetry/gps", paris, qos=1) == 0
    truck.disconnect()
    time.sleep(1.0)  # the unit is off the air a moment, then comes back through another node
    truck = _client(n2, creds)
    tokyo = json.dumps({"lat": 35.6762, "lon": 139.6503, "ts": now}).encode()
    assert truck.publish(f"fleet/{unit}/telemetry/gps", tokyo, qos=1) == 0
    _wait_for(
        lambda: [
            r
            for r in _audit(cluster, "detector.fired", f"unit/{unit}")
            if r["detector"] == "impossible_travel"
        ],
        "the impossible-travel firing on node 2",
    )
    truck.client.loop_stop()


# --- 6. persistent sessions resumed on any node ---------------------------------------------------

_RECORDS = "FLEETGATE_SESSIONS"


def _fresh_start(node: GatewayProcess, creds: Credentials) -> None:
    """A clean start and a disconnect: no session of this client id is left anywhere."""
    client = Paho(node.mqtt_port, creds)
    assert client.connect()[0] == 0
    client.disconnect()


def _stored_record(server: str, client_id: str) -> tuple[str, dict[str, object]]:
    """(subject, the JSON body) of the cluster's record of `client_id`'s session."""
    subject = topic_to_subject(client_id, f"{DEFAULT_PREFIX}.s")

    async def run() -> bytes:
        nc = await nats.connect(server)
        try:
            msg = await nc.jetstream().get_last_msg(_RECORDS, subject)
            return msg.data or b""
        finally:
            await nc.close()

    return subject, json.loads(asyncio.run(run()))


def _store_record(server: str, subject: str, body: dict[str, object], key: bytes) -> None:
    """Write a record into the stream as a process on the NATS network would, signed with `key`."""
    payload = json.dumps(body).encode()
    headers = {H_NODE: "node-9", H_TIME: str(int(time.time() * 1000))}
    headers[H_MAC] = sign(key, subject, headers, payload)

    async def run() -> None:
        nc = await nats.connect(server)
        try:
            await nc.jetstream().publish(subject, payload, headers=headers)
        finally:
            await nc.close()

    asyncio.run(run())


@pytest.mark.parametrize("version", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_a_persistent_session_resumes_on_another_node_without_subscribing_again(
    cluster: Cluster, version: MQTTProtocolVersion
) -> None:
    """Dispatch subscribes with a persistent session on node 1 and leaves; a unit on node 3 publishes
    QoS 1 meanwhile; dispatch connects with clean start 0 to node 2 and does not subscribe: the
    session is present, every message acknowledged while it was away arrives, and new ones too."""
    n1, n2, n3 = cluster.nodes
    unit = f"TRK-RESUME-{int(version)}"
    truck = _client(n3, _enroll(n3, unit))
    expiry = 600 if version == MQTTProtocolVersion.MQTTv5 else None

    def dispatch_on(node: GatewayProcess) -> Paho:
        return Paho(node.mqtt_port, cluster.dispatch, version=version, clean=False, session_expiry=expiry)

    _fresh_start(n1, cluster.dispatch)
    dispatch = dispatch_on(n1)
    assert dispatch.connect() == (0, False)
    assert dispatch.subscribe(f"fleet/{unit}/telemetry/#", 1) == [1]
    _until_arrives(truck, f"fleet/{unit}/telemetry/probe", dispatch, timeout=30)
    _drain(dispatch, 0.3)
    dispatch.disconnect()
    # Node 1 parks the session's consumer within half a second; what it took before that would wait
    # in its queue for JetStream's ack_wait (10 s) before the cluster redelivers it (docs/cluster.md).
    time.sleep(1.0)
    away = [f"away-{i}".encode() for i in range(20)]
    for payload in away:
        assert truck.publish(f"fleet/{unit}/telemetry/gps", payload, qos=1) == 0  # PUBACK: stored
    dispatch = dispatch_on(n2)
    started = time.monotonic()
    assert dispatch.connect() == (0, True)  # session present, on another node
    back = [f"back-{i}".encode() for i in range(5)]
    got: list[Received] = []
    deadline = started + 30
    while not set(away) <= {m.payload for m in got}:
        assert time.monotonic() < deadline, f"{len(set(away) - {m.payload for m in got})} never arrived"
        got += _drain(dispatch, 0.2)
    took = time.monotonic() - started
    print(f"\nresumed on another node: the {len(away)} stored messages within {took:.2f} s")
    for payload in back:
        assert truck.publish(f"fleet/{unit}/telemetry/gps", payload, qos=1) == 0
    got += _drain(dispatch, 0.5)
    payloads = [m.payload for m in got if m.payload.startswith((b"away-", b"back-"))]
    assert set(payloads) == set(away) | set(back), sorted(set(away) | set(back) - set(payloads))
    assert _counter(n2, "fleetgate_sessions_resumed_elsewhere_total") >= 1
    dispatch.disconnect()
    truck.disconnect()
    _fresh_start(n2, cluster.dispatch)


def test_a_session_record_is_trusted_only_signed_for_its_identity_and_as_far_as_the_policy_allows(
    cluster: Cluster,
) -> None:
    """Records written into the stream by hand: one signed with another key and one (signed) naming
    another identity are not resumed (session present 0); one signed with the cluster's key that holds
    a subscription dispatch is not granted now resumes without it."""
    n1, n2, n3 = cluster.nodes
    server = n2.env[f"{ENV_PREFIX}CLUSTER_NATS"]
    unit = "TRK-RECORD"
    truck = _client(n3, _enroll(n3, unit))
    dispatch = Paho(n1.mqtt_port, cluster.dispatch, clean=False, session_expiry=600)
    assert dispatch.connect()[0] == 0
    assert dispatch.subscribe(f"fleet/{unit}/telemetry/#", 1) == [1]
    dispatch.disconnect()
    _wait_for(lambda: _counter(n2, "fleetgate_cluster_sessions_applied_total") >= 1, "the record")
    subject, genuine = _stored_record(server, "dispatch")
    with psycopg.connect(cluster.url) as conn:
        row = conn.execute("SELECT value FROM cluster_secrets WHERE name = 'backbone'").fetchone()
    assert row is not None
    key = bytes.fromhex(row[0])
    _fresh_start(n1, cluster.dispatch)

    def resumed(body: dict[str, object], signing_key: bytes) -> Paho | None:
        applied = _counter(n2, "fleetgate_cluster_sessions_applied_total")
        refused = _counter(n2, "fleetgate_cluster_control_refused_total")
        _store_record(server, subject, body, signing_key)
        _wait_for(
            lambda: (
                _counter(n2, "fleetgate_cluster_sessions_applied_total") > applied
                or _counter(n2, "fleetgate_cluster_control_refused_total") > refused
            ),
            "the record reaching node 2",
        )
        client = Paho(n2.mqtt_port, cluster.dispatch, clean=False, session_expiry=600)
        code, present = client.connect()
        assert code == 0
        if present:
            return client
        client.disconnect()
        _fresh_start(n2, cluster.dispatch)
        return None

    assert resumed(genuine, b"k" * 32) is None  # not signed by a node: ignored
    other = str(genuine["identity"]).replace("/service/dispatch", f"/unit/{unit}")
    assert other != genuine["identity"]
    assert resumed({**genuine, "identity": other}, key) is None  # another identity's: never resumed
    stale = {
        **genuine,
        "subscriptions": [
            [f"fleet/{unit}/telemetry/#", 1, 0, 0, 0, None],
            [f"fleet/{unit}/diag/#", 1, 0, 0, 0, None],  # dispatch is not granted diag (now)
        ],
    }
    dispatch = resumed(stale, key)
    assert dispatch is not None
    # The restored subscription's consumer is bound a moment after the CONNACK (its consumers were
    # deleted by the clean start above, so it is made anew, delivering from then on): probe until
    # telemetry arrives, then ask the question.
    deadline = time.monotonic() + 30
    while dispatch.messages.empty():
        assert time.monotonic() < deadline, "the restored telemetry subscription never delivered"
        assert truck.publish(f"fleet/{unit}/telemetry/probe", b"probe", qos=1) == 0
        time.sleep(0.2)
    _drain(dispatch, 1.0)
    assert truck.publish(f"fleet/{unit}/diag/dtc", b"diag", qos=1) == 0
    assert truck.publish(f"fleet/{unit}/telemetry/gps", b"telemetry", qos=1) == 0
    got = [m.payload for m in dispatch.expect(1, timeout=30)] + [m.payload for m in _drain(dispatch, 1.0)]
    assert b"diag" not in got and b"telemetry" in got, got  # restored, but only as far as allowed now
    dispatch.disconnect()
    truck.disconnect()
    _fresh_start(n2, cluster.dispatch)


def _lead_from(server: NatsServer) -> None:
    """Move the leadership of the stored messages' stream and of the share groups' consumers
    (backbone_groups.group_consumer) to `server` (JetStream's step-down elects a new leader among the
    other replicas, at random)."""

    async def run() -> None:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            stream = stream_name(DEFAULT_PREFIX)
            groups = [c.name for c in await js.consumers_info(stream) if c.name.startswith("fg_g-")]
            for name in [None, *groups]:
                api = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
                if name is not None:
                    api = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{name}"
                for _ in range(30):
                    info = await (js.stream_info(stream) if name is None else js.consumer_info(stream, name))
                    if info.cluster is not None and info.cluster.leader == server.name:
                        break
                    if info.cluster is not None and info.cluster.leader:
                        await nc.request(api, b"", timeout=5)
                    await asyncio.sleep(0.5)
                else:
                    raise AssertionError(f"{name or stream} never led from {server.name}")
        finally:
            await nc.close()

    asyncio.run(run())


def test_a_share_groups_qos1_messages_wait_in_jetstream_while_its_node_is_away_from_nats(
    cluster: Cluster,
    nats_js_cluster: list[NatsServer],  # noqa: F811
) -> None:
    """The group's only member is on node 2, whose NATS server is killed (-9) while a unit on node 1
    publishes QoS 1; node 2 reconnects to another server. Every message the unit had a PUBACK for
    reaches the member: the group's messages waited in its JetStream consumer meanwhile (a NATS queue
    subscription, which groups used before, has no member while its node is away, and loses them).
    Server 1 leads the stream and the group's consumer first, so stores go on throughout.
    Last in the module: it kills a server (and brings it back)."""
    from tests.cluster.test_jetstream import Publisher, _received_until

    n1, n2, _ = cluster.nodes
    unit = "TRK-SHARE-AWAY"
    truck = _client(n1, _enroll(n1, unit))
    member = _client(n2, cluster.ops[1], SHARED)
    probe_deadline = time.monotonic() + 20
    while member.messages.empty():  # node 2 pulls from the group's consumer
        assert time.monotonic() < probe_deadline, "the share-group member never got a message"
        truck.publish(f"fleet/{unit}/telemetry/probe", b"probe", qos=1)
        time.sleep(0.1)
    _lead_from(nats_js_cluster[0])
    time.sleep(0.5)
    _drain(member, 0.3)
    publisher = Publisher(truck, f"fleet/{unit}/telemetry/gps", rate=15)
    publisher.start()
    time.sleep(1.0)
    nats_js_cluster[1].kill()  # node 2's server
    time.sleep(3.0)
    publisher.halt.set()
    publisher.join()
    acknowledged = publisher.acked
    assert len(acknowledged) >= 40, publisher.outcomes  # the stores went on throughout
    got = _received_until(member, acknowledged, timeout=40)
    missing = acknowledged - {m.payload for m in got}
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged messages never reached the group"
    for client in (member, truck):
        client.disconnect()
    nats_js_cluster[1].restart()
