"""The parent of `fleetgate serve --workers N` (gateway/app/workers.py says how it works)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from gateway.app.cluster import node_name
from gateway.app.local_nats import LocalNats, NatsServerMissing, find_nats_server
from gateway.app.worker_role import WORKERS_DIR, worker_node_name
from gateway.app.workers import WorkerPool, die_with_parent, endpoint_text, reserve_port, worker_argv
from gateway.cli.common import CliError
from gateway.config import Endpoint, GatewayConfig
from gateway.policy.rules import PolicyError
from gateway.stores.audit_anchor import load_or_create_key as load_or_create_anchor_key
from gateway.stores.audit_log import AuditLog
from gateway.stores.backbone_key import backbone_key
from gateway.stores.cluster_nodes import ClusterNodes
from gateway.stores.datadir import PASSPHRASE_ENV, DataDir, shared_database
from gateway.stores.policy_file import load_policy
from gateway.stores.serving_lock import hold as hold_serving_lock
from gateway.stores.serving_lock import release as release_serving_lock
from gateway.stores.views_key import load_or_create_key as load_or_create_views_key
from pki.authority import CertificateAuthority
from pki.keys import PassphraseSource
from pki.postgres import is_postgres_url
from pki.sqlite import open_store
from pki.store import Registry

log = logging.getLogger("fleetgate.workers")


def prepare_once(data: DataDir, database: str) -> None:
    """What the workers would otherwise race to make at their first start: the shared database's
    schemas and backbone key, the partner-view and audit-anchor keys, DATA/workers/."""
    conn = open_store(database)
    try:
        Registry(conn)
        AuditLog(conn)
        ClusterNodes(conn)
        backbone_key(conn)
    finally:
        conn.close()
    load_or_create_views_key(data.root)
    load_or_create_anchor_key(data.root)
    (data.root / WORKERS_DIR).mkdir(mode=0o700, exist_ok=True)


def unlock_once(data: DataDir, source: PassphraseSource) -> bytes | None:
    """Check the CA keys open (better now than in N workers), and return the passphrase if it was
    asked at a terminal: the workers, which have no terminal, get it in their environment."""
    asked: list[bytes] = []

    def keep(path: Path) -> bytes:
        asked.append(source(path))
        return asked[-1]

    CertificateAuthority.load(data.ca_dir, keep).unlock()
    return asked[0] if asked and not os.environ.get(PASSPHRASE_ENV) else None


def _reserve_worker_https(
    own: Endpoint | None, workers: int, reserved: list[socket.socket]
) -> list[tuple[str, int]]:
    """`listen.worker_https`: each worker's HTTPS address of its own (PORT+i, or a free port each for
    port 0), reserved like the shared ports (appended to `reserved`); [] when not set."""
    if own is None:
        return []
    if own.port and own.port + workers - 1 > 65535:
        raise CliError(f"listen.worker_https: ports {own.port} to {own.port + workers - 1} do not all exist")
    addresses = []
    for index in range(workers):
        port = own.port + index if own.port else 0
        try:
            sock = reserve_port(own.host, port)
        except OSError as exc:
            raise CliError(
                f"cannot listen on {own.host}:{port} (listen.worker_https for worker {index}): "
                f"{exc.strerror or exc}; is something else using that port?"
            ) from None
        reserved.append(sock)
        addresses.append((own.host, int(sock.getsockname()[1])))
    return addresses


def serve_with_workers(
    data: DataDir,
    config: GatewayConfig,
    workers: int,
    options: list[str],
    passphrase: PassphraseSource,
) -> int:
    """Run `workers` gateway processes until SIGTERM (0) or SIGINT (130)."""
    if not data.is_initialised():
        raise CliError(
            f"{data.root} is not an initialised data directory; run `fleetgate init --data {data.root}`"
        )
    try:  # said once here rather than by every worker
        load_policy(config.policy_file)
    except PolicyError as exc:
        raise CliError(f"the policy cannot be used: {exc}") from None
    database = shared_database(data, config.storage.url)
    local_nats = not config.cluster.nats.strip()
    binary = ""
    if local_nats:
        try:
            binary = find_nats_server()
        except NatsServerMissing as exc:
            raise CliError(str(exc), "nats_server_missing") from None
    typed = unlock_once(data, passphrase)
    lock = hold_serving_lock(data.root)
    reserved = []
    try:
        prepare_once(data, database)
        listen: dict[str, tuple[str, int]] = {}
        endpoints = {"mqtt": config.listen.mqtt, "https": config.listen.https}
        if config.listen.insecure_plaintext is not None:
            endpoints["lab"] = config.listen.insecure_plaintext
        for name, endpoint in endpoints.items():
            try:
                sock = reserve_port(endpoint.host, endpoint.port)
            except OSError as exc:
                raise CliError(
                    f"cannot listen on {endpoint.host}:{endpoint.port}: {exc.strerror or exc}; "
                    "is another gateway running on that port?"
                ) from None
            reserved.append(sock)
            listen[name] = (endpoint.host, int(sock.getsockname()[1]))
        own_https = _reserve_worker_https(config.listen.worker_https, workers, reserved)
        nats = None
        if local_nats:
            nats = LocalNats(binary, data.root, die_with_parent())
            try:
                nats.start()
            except (OSError, RuntimeError) as exc:
                raise CliError(f"cannot start the local nats-server: {exc}") from None
            log.info("local nats-server on %s (JetStream store in %s)", nats.url, nats.dir / "jetstream")
        base = node_name(config.cluster.node_name)
        commands = []
        for index in range(workers):
            env = {**os.environ, "FLEETGATE_CLUSTER_NODE_NAME": worker_node_name(base, index)}
            if nats is not None:
                env["FLEETGATE_CLUSTER_NATS"] = nats.url
                # One local server holds one copy: the streams are made with one replica (a stream
                # asking for three would never be created there, and QoS 1/2 could not be stored).
                if config.cluster.jetstream_replicas > 1:
                    env["FLEETGATE_CLUSTER_JETSTREAM_REPLICAS"] = "1"
            if typed is not None:
                env[PASSPHRASE_ENV] = typed.decode()
            if own_https:
                env["FLEETGATE_LISTEN_WORKER_HTTPS"] = endpoint_text(*own_https[index])
            argv = worker_argv(index, data.root, listen, options)
            commands.append((worker_node_name(base, index), argv, env))
        log.info(
            "fleetgate serves with %d workers: %s",
            workers,
            ", ".join(f"{k} {h}:{p}" for k, (h, p) in listen.items()),
        )
        for index, (host, port) in enumerate(own_https):
            log.info("worker %s: its own https %s", worker_node_name(base, index), endpoint_text(host, port))
        pool = WorkerPool(commands, nats, hup_every_worker=not is_postgres_url(database))
        try:
            code = pool.run()
        finally:
            pool.stop_quietly()
        log.info("fleetgate stopped (%d worker restart(s) while it ran)", pool.total_restarts)
        return code
    finally:
        for sock in reserved:
            sock.close()
        release_serving_lock(lock)
