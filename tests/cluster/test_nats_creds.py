"""The backbone to a NATS server in operator (JWT) mode (cluster.nats_credentials): a node with its
user's `.creds` file connects, JetStream included; a node whose user the server does not know
(another operator's, or of an account it was never given) is turned away, says so once with NATS's
reason, and serves its own clients on; a missing or broken
`.creds` file is refused before anything starts. A real nats-server (an operator, its system account
and one account with JetStream, in a memory resolver; tests/nats_jwt.py makes and signs them) and
`fleetgate serve`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import Paho
from tests.harness import GatewayProcess, run_cli
from tests.nats import NatsServer, skip_without_nats
from tests.nats_jwt import Trust, accounts, write_creds
from tests.ops.helpers import metric


def _until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def operator_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trust, NatsServer, Path]]:
    """A nats-server that admits only users of the operator's account (JetStream on), returned once
    that account's JetStream answers (and holds no stream yet)."""
    skip_without_nats()
    root = tmp_path_factory.mktemp("nats-creds")
    trust = Trust.new()
    server = NatsServer(root, jetstream=True, extra=("-c", str(trust.server_config(root / "operator.conf"))))
    try:
        # nats-server 2.9 sets up an account's JetStream on its first connection; two at once (a
        # node's backbone and its cluster link) can race in it, so one connection goes first.
        assert _streams(server.url, trust.creds(root / "probe.creds", "probe")) == 0
        yield trust, server, root
    finally:
        server.stop()


def _node(root: Path, server: NatsServer, creds: Path) -> GatewayProcess:
    gw = GatewayProcess(root)
    gw.init()
    gw.env.update(
        {
            "FLEETGATE_CLUSTER_NATS": server.url,
            "FLEETGATE_CLUSTER_JETSTREAM_REPLICAS": "1",  # one server; QoS 1/2 in the account's JetStream
            "FLEETGATE_CLUSTER_NATS_CREDENTIALS": str(creds),
        }
    )
    return gw


def _streams(url: str, creds: Path) -> int:
    """The streams in the account of the user in `creds`, asked of NATS with those credentials."""
    import nats

    async def ask() -> int:
        nc = await nats.connect(url, user_credentials=str(creds), allow_reconnect=False, connect_timeout=2)
        try:
            return int((await nc.jetstream().account_info()).streams)
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_a_node_with_its_users_creds_joins_a_nats_server_in_operator_mode(
    operator_nats: tuple[Trust, NatsServer, Path],
) -> None:
    trust, server, root = operator_nats
    creds = trust.creds(root / "node-a.creds", "node-a")
    gw = _node(root / "a", server, creds)
    gw.start()
    try:
        assert _until(lambda: "QoS 1/2 through JetStream stream" in gw.log()), gw.log()[-2000:]
        log = gw.log()
        assert "cluster backbone: connected to NATS" in log
        assert "unreachable" not in log and "refused this node" not in log  # the cluster link's too
        assert metric(gw, "backbone_connected") == 1
        assert _streams(server.url, creds) >= 1  # the node's streams, in the operator's account
    finally:
        gw.stop()


def _stranger(who: str, place: Path) -> Path:
    """The .creds file of a user the server does not know: one of another operator's account, or
    one of an account the server was never given (its JWT is not in the resolver)."""
    if who == "another-operator":
        return Trust.new().creds(place / "other-operator.creds")
    return write_creds(place / "unknown-account.creds", accounts(1)[0])


@pytest.mark.parametrize("who", ["another-operator", "an-unknown-account"])
def test_a_node_whose_user_the_server_does_not_know_is_turned_away_and_keeps_serving_its_own(
    operator_nats: tuple[Trust, NatsServer, Path], who: str
) -> None:
    _, server, root = operator_nats
    place = root / f"b-{who}"
    place.mkdir()
    gw = _node(place, server, _stranger(who, place))
    gw.start()
    try:
        # said at once, with NATS's reason, and not again every retry: once per connection
        assert _until(lambda: "cluster link: NATS refused this node" in gw.log()), gw.log()[-2000:]
        assert _until(lambda: f"NATS at {server.url} refused this node" in gw.log()), gw.log()[-2000:]
        time.sleep(1.5)  # three more retries of each
        log = gw.log()
        said = [line for line in log.splitlines() if f"NATS at {server.url}" in line]
        assert len(said) == 1 and "Authorization Violation" in said[0], said
        assert "check cluster.nats_credentials" in said[0]
        assert log.count("cluster link: NATS refused this node") == 1
        assert "cluster backbone: connected to NATS" not in log
        dispatch = gw.issue("service", "dispatch")  # it still serves its own clients
        assert Paho(gw.mqtt_port, dispatch).connect()[0] == 0
    finally:
        gw.stop()


def test_a_missing_or_broken_creds_file_is_refused_before_the_gateway_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("init", "--hostname", "localhost", "--insecure-unencrypted-keys", data=data, check=True)
    base = {"FLEETGATE_CLUSTER_NATS": "nats://127.0.0.1:4222"}
    key = "FLEETGATE_CLUSTER_NATS_CREDENTIALS"
    no_seed = tmp_path / "no-seed.creds"  # a .creds file cut short: the JWT but not the seed
    no_seed.write_text(Trust.new().creds(tmp_path / "whole.creds").read_text().split("*****")[0])
    cases = {
        "nowhere.creds is not a readable file": {**base, key: str(tmp_path / "nowhere.creds")},
        "no-seed.creds is not a NATS .creds file (no -----BEGIN USER NKEY SEED----- block": {
            **base,
            key: str(no_seed),
        },
        "cluster.nats_credentials is for cluster.nats, which is not set": {key: str(no_seed)},
    }
    for words, env in cases.items():
        result = run_cli("serve", data=data, env=env)
        assert result.code != 0, words
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (words, result.stderr)
        assert "Traceback" not in result.stderr
