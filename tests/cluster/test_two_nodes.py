"""Two `fleetgate serve` nodes on loopback sharing one PostgreSQL: a change made through node A (its
admin API) or through the CLI against the database reaches a live session held by node B.

Each trial measures, on the unit's or partner's own MQTT client connected to node B, how long the
change took to arrive: for the API, from just before the request to node A was sent (so it includes
the HTTP round trip); for the CLI, from the moment the CLI stamped the change in the registry
(`updated_at`, `revoked_at`: its clock before the commit) (so the process start-up is not counted).
The suite runs TRIALS each with a generous bound; `CLUSTER_BENCH_TRIALS=50` gives the numbers in
docs/benchmarks.md (they are printed, run with -s).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.cli.device import device_csr
from pki.est_client import bootstrap, simpleenroll
from pki.keys import generate_private_key
from tests.clients import Paho
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import AUTHENTICATORS, api, issue_operator
from tests.pg import PgCluster

TRIALS = int(os.environ.get("CLUSTER_BENCH_TRIALS", "1"))
GENEROUS_S = 2.0  # the suite's bound; the measured p99 is what docs/benchmarks.md reports


class TimedPaho(Paho):
    """Paho that stamps each message and disconnect with the wall clock when it arrives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        self.cut_at: queue.Queue[float] = queue.Queue()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.arrivals.put((time.time(), message.topic, bytes(message.payload)))
        super()._on_message(client, userdata, message)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.cut_at.put(time.time())
        super()._on_disconnect(client, userdata, flags, reason, props)

    def next_mode(self, containing: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, topic, payload = self.arrivals.get(timeout=left)
            except queue.Empty:
                break
            if topic.endswith("/cmd/mode") and containing.encode() in payload:
                return at
        raise AssertionError(f"no mode command containing {containing!r} within {timeout}s")


@dataclass
class Cluster:
    url: str
    a: GatewayProcess
    b: GatewayProcess
    ops: Credentials
    security: SecurityDesk
    samples: dict[str, list[float]] = field(default_factory=dict)
    counter: int = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:04d}"

    def enroll(self, unit: str) -> Credentials:
        """Registered with the CLI (against the database), enrolled over EST on node A."""
        token = self.a.add_unit(unit)
        server = bootstrap(self.a.https_url, ca_file=self.a.root_ca)
        key = generate_private_key()
        cert = simpleenroll(server, unit, token, device_csr(key, unit))
        return self.a._save(unit, key, [cert])

    def on_b(self, creds: Credentials, *filters: str) -> TimedPaho:
        client = TimedPaho(self.b.mqtt_port, creds)
        assert client.connect()[0] == 0
        for topic_filter in filters:
            assert client.subscribe(topic_filter, 1) == [1]
        return client

    def stamped(self, kind: str, ident: str, *, revoked: bool = False) -> float:
        """When the CLI stamped its change (the writer's clock, before its commit): the identity's
        updated_at, or its newest certificate revocation."""
        sql = (
            "SELECT max(revoked_at) FROM pki_certificates WHERE kind = %s AND id = %s"
            if revoked
            else "SELECT updated_at FROM pki_identities WHERE kind = %s AND id = %s"
        )
        with psycopg.connect(self.url) as conn:
            row = conn.execute(sql, (kind, ident)).fetchone()
        assert row is not None and row[0] is not None, (kind, ident)
        return datetime.fromisoformat(str(row[0])).timestamp()

    def record(self, what: str, seconds: float) -> None:
        self.samples.setdefault(what, []).append(seconds)
        assert seconds < GENEROUS_S, f"{what} took {seconds:.3f}s to reach node B"


def _node(root: Path, url: str, name: str) -> GatewayProcess:
    return GatewayProcess(root, env={"FLEETGATE_DATABASE_URL": url, "FLEETGATE_CLUSTER_NODE_NAME": name})


class SecurityDesk:
    """Security operators for the sensitive API calls (release, revoke, partner cut), each of which
    needs a fresh TOTP code: an operator has two unused codes at a time and one more every 30 s, so
    50 trials in a row take turns among as many operators as they need, issued as they are needed."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.operators: list[Credentials] = []

    def operator(self) -> Credentials:
        ahead = int(time.time() // 30) + 1  # the last step the gateway accepts now
        for creds in self.operators:
            if AUTHENTICATORS[creds.cert].last_step < ahead:
                return creds
        creds = issue_operator(self.gw, f"sec{len(self.operators) + 1}", "security")
        self.operators.append(creds)
        return creds


@pytest.fixture(scope="module")
def cluster(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = pg_cluster.new_database()
    root = tmp_path_factory.mktemp("cluster")
    a = _node(root / "a", url, "node-a")
    a.init()
    b = _node(root / "b", url, "node-b")
    shutil.copytree(a.data, b.data)  # the CA's files provisioned to each node (docs/cluster.md)
    a.start()
    b.start()
    ops = a.issue("operator", "ops1", "--role", "ops")
    yield Cluster(url, a, b, ops, SecurityDesk(a))
    for node in (a, b):
        node.stop()


def test_quarantine_release_and_revoke_through_node_a_api_reach_node_b(cluster: Cluster) -> None:
    for _ in range(TRIALS):
        unit = cluster.name("TRK-QA")
        client = cluster.on_b(cluster.enroll(unit), f"fleet/{unit}/cmd/#")
        sent = time.time()
        status, body = api(cluster.a, cluster.ops, "POST", f"/api/units/{unit}/quarantine", {"reason": "t"})
        assert status == 200, body
        cluster.record("quarantine (API on A)", client.next_mode("diagnostic-only") - sent)
        security = cluster.security.operator()  # before the clock starts: it may issue one
        sent = time.time()
        status, body = api(cluster.a, security, "POST", f"/api/units/{unit}/release", {})
        assert status == 200, body
        cluster.record("release (API on A)", client.next_mode("normal") - sent)
        security = cluster.security.operator()
        sent = time.time()
        revoke = {"reason": "keyCompromise", "confirm": True}
        status, body = api(cluster.a, security, "POST", f"/api/identities/unit/{unit}/revoke", revoke)
        assert status == 200, body
        cluster.record("revoke (API on A)", client.cut_at.get(timeout=5) - sent)


def test_a_partner_cut_through_node_a_api_reaches_node_b(cluster: Cluster) -> None:
    for _ in range(TRIALS):
        partner = cluster.name("acme").lower()
        client = cluster.on_b(cluster.a.issue("partner", partner, "--tier", "1"))
        security = cluster.security.operator()
        sent = time.time()
        status, body = api(cluster.a, security, "POST", f"/api/partners/{partner}/disconnect", {})
        assert status == 200, body
        cluster.record("partner cut (API on A)", client.cut_at.get(timeout=5) - sent)


def test_cli_quarantine_release_revoke_reach_node_b(cluster: Cluster) -> None:
    for _ in range(TRIALS):
        unit = cluster.name("TRK-CLI")
        creds = cluster.enroll(unit)
        client = cluster.on_b(creds, f"fleet/{unit}/cmd/#")
        assert cluster.a.cli("unit", "quarantine", unit, "--reason", "bench").code == 0
        arrived = client.next_mode("diagnostic-only")
        cluster.record("quarantine (CLI)", arrived - cluster.stamped("unit", unit))
        assert cluster.a.cli("unit", "release", unit).code == 0
        arrived = client.next_mode("normal")
        cluster.record("release (CLI)", arrived - cluster.stamped("unit", unit))
        result = cluster.a.cli("unit", "revoke", unit, "--reason", "keyCompromise", "--force")
        assert result.code == 0, result.stderr
        cut = client.cut_at.get(timeout=5)
        cluster.record("revoke (CLI)", cut - cluster.stamped("unit", unit, revoked=True))


def test_cli_partner_cut_reaches_node_b(cluster: Cluster) -> None:
    for _ in range(TRIALS):
        partner = cluster.name("acme").lower()
        creds = cluster.a.issue("partner", partner, "--tier", "1")
        client = cluster.on_b(creds)
        result = cluster.a.cli("partner", "disconnect", partner)
        assert result.code == 0, result.stderr
        cut = client.cut_at.get(timeout=5)
        cluster.record("partner cut (CLI)", cut - cluster.stamped("partner", partner, revoked=True))


def test_one_audit_chain_for_both_nodes(cluster: Cluster) -> None:
    nodes = {row[0] for row in _query(cluster.url, "SELECT details::json->>'node' FROM audit_log")}
    assert {"node-a", "node-b"} <= nodes  # both appended (their starts, at least) to one chain
    result = cluster.b.cli("audit", "verify")
    assert result.code == 0, result.stdout + result.stderr


def test_a_policy_reload_on_node_a_reloads_node_b(cluster: Cluster) -> None:
    assert cluster.a.proc is not None
    cluster.a.proc.send_signal(signal.SIGHUP)
    sql = "SELECT count(*) FROM audit_log WHERE action = 'policy.reload' AND actor = 'cluster/node-a'"
    deadline = time.monotonic() + 10
    while _query(cluster.url, sql)[0][0] == 0:
        assert time.monotonic() < deadline, "node B did not follow node A's policy reload"
        time.sleep(0.05)
    # node B logs the reload just after it appends the audit row: wait for the line, too
    while "[node-b] fleetgate: policy reloaded" not in cluster.b.log():  # each line names its node
        assert time.monotonic() < deadline, "node B's log does not name its node on the reload line"
        time.sleep(0.05)


def test_report(cluster: Cluster) -> None:
    """The numbers for docs/benchmarks.md (printed with -s)."""
    for what, values in cluster.samples.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(
            f"{what}: n={len(values)} p50={statistics.median(values) * 1000:.1f} ms "
            f"p99={p99 * 1000:.1f} ms max={ordered[-1] * 1000:.1f} ms"
        )


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]
