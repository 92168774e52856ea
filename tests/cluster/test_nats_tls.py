"""The backbone over TLS to a NATS server that verifies its clients (cluster.nats_tls_*): a node with
a certificate from the fleet's own CA connects, a node without one never does, and a broken setting
is refused before anything starts. A real nats-server (`--tlsverify`) and `fleetgate serve`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import Paho
from tests.harness import GatewayProcess, run_cli
from tests.nats import NatsServer, skip_without_nats


def _until(check: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, NatsServer, Path]]:
    """A gateway's data dir (its CA, and its server certificate for the NATS server too) and a
    nats-server that wants a client certificate from that CA."""
    skip_without_nats()
    root = tmp_path_factory.mktemp("nats-tls")
    gw = GatewayProcess(root / "a")
    gw.init()
    issuing = (gw.data / "ca" / "issuing.crt").read_bytes()
    trusted = root / "fleet-cas.pem"  # what nats-server trusts for client certificates
    trusted.write_bytes(gw.root_ca.read_bytes() + issuing)
    served = root / "nats-server.pem"  # the server's own certificate and its chain
    served.write_bytes((gw.data / "server" / "server.crt").read_bytes() + issuing)
    tls = ("--tls", "--tlscert", str(served), "--tlskey", str(gw.data / "server" / "server.key"))
    server = NatsServer(root, extra=(*tls, "--tlsverify", "--tlscacert", str(trusted)))
    yield gw, server, root
    server.stop()


def test_a_node_with_a_fleet_certificate_joins_a_nats_server_that_verifies_clients(
    tls_nats: tuple[GatewayProcess, NatsServer, Path],
) -> None:
    gw, server, _ = tls_nats
    node_cert = gw.issue("service", "nats-node-a")  # any identity the fleet's CA issued
    gw.env.update(
        {
            "FLEETGATE_CLUSTER_NATS": f"tls://localhost:{server.port}",
            "FLEETGATE_CLUSTER_JETSTREAM_REPLICAS": "0",
            "FLEETGATE_CLUSTER_NATS_TLS_CA": str(gw.root_ca),
            "FLEETGATE_CLUSTER_NATS_TLS_CERT": str(node_cert.cert),
            "FLEETGATE_CLUSTER_NATS_TLS_KEY": str(node_cert.key),
        }
    )
    gw.start()
    try:
        assert _until(lambda: "cluster backbone: connected to NATS" in gw.log()), gw.log()[-2000:]
        assert "unreachable" not in gw.log()  # the cluster link's connection too
    finally:
        gw.stop()


def test_a_node_without_a_client_certificate_is_turned_away_and_keeps_serving_its_own(
    tls_nats: tuple[GatewayProcess, NatsServer, Path],
) -> None:
    fleet, server, root = tls_nats
    gw = GatewayProcess(root / "b")
    gw.init()
    gw.env.update(
        {
            "FLEETGATE_CLUSTER_NATS": f"tls://localhost:{server.port}",
            "FLEETGATE_CLUSTER_JETSTREAM_REPLICAS": "0",
            "FLEETGATE_CLUSTER_NATS_TLS_CA": str(
                fleet.root_ca
            ),  # it trusts the server, but shows no certificate
        }
    )
    gw.start()
    try:
        # said at once, with the reason, and not again every retry
        assert _until(lambda: "unreachable" in gw.log()), gw.log()[-2000:]
        time.sleep(1.5)
        log = gw.log()
        assert "cluster backbone: connected to NATS" not in log
        assert log.count("NATS at tls://localhost") == 1
        dispatch = gw.issue("service", "dispatch")  # it still serves its own clients
        assert Paho(gw.mqtt_port, dispatch).connect()[0] == 0
    finally:
        gw.stop()


def test_half_a_client_certificate_or_a_missing_file_is_refused_before_the_gateway_starts(
    tmp_path: Path,
) -> None:
    run_cli("init", "--hostname", "localhost", "--insecure-unencrypted-keys", data=tmp_path, check=True)
    base = {"FLEETGATE_CLUSTER_NATS": "tls://localhost:4222"}
    half = run_cli(
        "serve", data=tmp_path, env={**base, "FLEETGATE_CLUSTER_NATS_TLS_CERT": str(tmp_path / "x.crt")}
    )
    assert half.code != 0 and "cluster.nats_tls_cert and cluster.nats_tls_key go together" in half.stderr
    missing = run_cli(
        "serve",
        data=tmp_path,
        env={**base, "FLEETGATE_CLUSTER_NATS_TLS_CA": str(tmp_path / "nowhere.pem")},
    )
    assert missing.code != 0 and "nowhere.pem is not a readable file" in missing.stderr
    assert "Traceback" not in half.stderr + missing.stderr
