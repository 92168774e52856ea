"""One gateway process: the composition root. It builds the CA, the registry, the broker, the
listeners and the loops that keep live sessions honest, wires them together, and owns the clock.

`fleetgate serve` builds a Gateway and runs it until SIGTERM/SIGINT. Tests do the same in-process
or as a subprocess. The decisions are made in pki/, gateway/policy and gateway/broker; fleet
operations in gateway/ops; following the registry in registry_follower.py; the background loops
run supervised (supervisor.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import sqlite3
import ssl
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, timedelta

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.admin.api import AdminContext, add_admin_routes
from gateway.admin.console import add_console_routes
from gateway.admin.console_context import ConsoleContext
from gateway.admin.est import EstContext, add_est_routes
from gateway.admin.rights import RIGHT_TEXT
from gateway.admin.sse import AuditFeed
from gateway.admin.totp_store import TotpStore
from gateway.app.audit_events import EventRecorder, HttpRefusals
from gateway.app.backbone import BackboneCounters, NatsBackbone, nats_tls_context
from gateway.app.backbone_durable import DurableSettings
from gateway.app.cluster import POLICY_PREFIX, RegistryNotifications, node_name
from gateway.app.cluster_plane import ClusterPlane
from gateway.app.fd_budget import FdBudgetError, plan_connections, raise_open_file_limit
from gateway.app.gc_pauses import GcPauses
from gateway.app.health import ReadinessProbe, add_health_routes
from gateway.app.log_format import set_node
from gateway.app.metrics import GatewayCollector, metrics_registry, render
from gateway.app.observers import PublishFanout
from gateway.app.registry_follower import DATA_VERSION_POLL_SECONDS, RegistryFollower
from gateway.app.supervisor import LoopHealth, supervise
from gateway.app.worker_role import WorkerRole, arm_stop_deadline
from gateway.broker import Broker, BrokerLimits
from gateway.config import ConfigError, GatewayConfig
from gateway.context.flow_feed import FlowFeed
from gateway.context.partner_views import PartnerViews
from gateway.context.posture_watch import PostureWatch
from gateway.context.unit_watch import UnitWatch
from gateway.detection.continuous import wire as wire_continuous
from gateway.edge.accept import AcceptLoop
from gateway.edge.admission import listener_gates
from gateway.edge.driver import BrokerDriver, Clock
from gateway.edge.hub import ConnectionHub, start_https_listener, start_lab_listener, start_mqtt_listener
from gateway.edge.proxied import Balancers
from gateway.edge.reports import HandshakeFailure
from gateway.edge.tls import tls_server_context
from gateway.edge.transport import MtlsListener
from gateway.ops.operations import Operations, OpsContext
from gateway.policy.engine import PolicyEngine
from gateway.policy.peer import Peer
from gateway.policy.rules import Policy, PolicyError
from gateway.stores.audit_anchor import append_anchor, make_anchor
from gateway.stores.audit_anchor import load_or_create_key as load_or_create_anchor_key
from gateway.stores.audit_log import AuditLog
from gateway.stores.backbone_key import backbone_key
from gateway.stores.broker_store import SqliteBrokerStore
from gateway.stores.cluster_nodes import ClusterNodes
from gateway.stores.datadir import DataDir, passphrase_from_env, remembered, shared_database
from gateway.stores.policy_file import load_policy
from gateway.stores.registry_directory import RegistryDirectory
from gateway.stores.serving_lock import hold as hold_serving_lock
from gateway.stores.serving_lock import release as release_serving_lock
from gateway.stores.views_key import load_or_create_key
from pki.authority import CertificateAuthority
from pki.errors import PkiError, VerificationError
from pki.keys import PassphraseSource
from pki.names import IdentityError, identity_from_certificate
from pki.postgres import describe_url, is_postgres_url, notify
from pki.service import FleetCA
from pki.signed_json import JsonSigner
from pki.sqlite import open_store
from pki.store import Registry, open_database
from pki.verify import check_validity

log = logging.getLogger("fleetgate")

EVENT_TICK_SECONDS = 0.25  # broker events drained into audit, detectors, views and the flow map
HEARTBEAT_SECONDS = 1.0  # this node's row in the nodes table (gateway/stores/cluster_nodes.py)
UNRECORDED_LIMIT = 100_000  # events (and failed handshakes) kept for the audit log while it fails
# Broker events audited in one commit, between two points where the event tick lets the event loop
# serve reads: ~50 µs each, so ~3 ms a commit (a connect burst of 1,000 units had held the loop
# ~80 ms in one commit). On PostgreSQL each commit is an fsync: 64 records share one.
AUDIT_SLICE = 64
# After answering a request whose body was not read (413, 408), how long aiohttp reads and drops what
# the client still sends before closing (its default, 10 s, is a long time to hold a slow client).
HTTP_LINGER_SECONDS = 2.0
LOW_OPEN_FILES = 4096  # below this open-file limit the start says how few units can connect


class GatewayStartupError(RuntimeError):
    """The gateway cannot start; the message says why and what to do."""


def load_startup_policy(config: GatewayConfig) -> Policy:
    try:
        return load_policy(config.policy_file)
    except PolicyError as exc:
        raise GatewayStartupError(f"the policy cannot be used: {exc}") from None


def refuse_lab_on_production(data: DataDir, registry: Registry) -> None:
    """The anonymous lab listener shares one broker with everything this data dir serves: it may only
    run on a throwaway data dir that has never issued a certificate to a unit."""
    units = {record.id for record in registry.list_certificates(kind="unit")}
    if units:
        raise GatewayStartupError(
            f"the lab listener (--insecure-plaintext-listen) cannot run on {data.root}: it has issued "
            f"certificates to {len(units)} unit(s), and anonymous lab clients would share a broker with "
            "them; give the lab a throwaway data dir of its own (fleetgate init --data /tmp/fleetgate-lab, "
            "then fleetgate serve --data /tmp/fleetgate-lab --insecure-plaintext-listen 127.0.0.1:1883)"
        )


def broker_limits(config: GatewayConfig) -> BrokerLimits:
    limits = config.limits
    return BrokerLimits(
        max_packet_size=limits.max_packet_size,
        receive_maximum=limits.receive_maximum,
        max_inflight=limits.max_inflight,
        max_queued_messages=limits.max_queued_messages,
        max_queued_bytes=limits.max_queued_bytes,
        queue_high_water=limits.queue_high_water,
        queue_high_water_bytes=limits.queue_high_water_bytes,
        subscriber_stall_timeout=limits.subscriber_stall_timeout,
        max_subscriptions=limits.max_subscriptions,
        max_topic_alias=limits.max_topic_alias,
        max_keep_alive=limits.max_keep_alive,
        max_session_expiry=limits.max_session_expiry,
        max_retained_messages=limits.max_retained_messages,
        max_retained_per_client=limits.max_retained_per_client,
        connect_timeout=limits.connect_timeout,
        max_violations=limits.max_violations,
    )


def _pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(cert.public_bytes(Encoding.PEM).decode() for cert in certs)


class Gateway:
    def __init__(
        self,
        data: DataDir,
        config: GatewayConfig,
        clock: Clock | None = None,
        passphrase: PassphraseSource = passphrase_from_env,
        worker: WorkerRole | None = None,
    ) -> None:
        if not data.is_initialised():
            raise GatewayStartupError(
                f"{data.root} is not an initialised data directory; run `fleetgate init --data {data.root}`"
            )
        self.data = data
        self.config = config
        self.clock = clock if clock is not None else Clock()
        # Asked once (a prompt must not come back at a SIGHUP); the root key is never loaded here.
        self._passphrase = remembered(passphrase)
        self.authority = CertificateAuthority.load(data.ca_dir, self._passphrase)
        self.authority.unlock()  # every issuing CA key now: better refuse to start than fail later
        self.trust_domain = self.authority.trust_domain
        sync = config.storage.synchronous
        # The shared state (registry, audit chain, nodes) in the data dir's SQLite file, or in a
        # cluster's PostgreSQL (storage.url, docs/cluster.md); the broker's retained messages and
        # persistent sessions stay in this node's own file either way.
        self.node = node_name(config.cluster.node_name)
        self.database = shared_database(data, config.storage.url)
        self.clustered = is_postgres_url(self.database)
        # One of `serve --workers N`'s processes (gateway/app/worker_role.py), or a single gateway.
        self.worker = worker
        # Whether this node names itself (logs, audit, /metrics) and reports in the nodes table.
        self.reports_node = self.clustered or worker is not None
        if self.reports_node:
            set_node(self.node)  # every log line names this node from now on
        try:
            self._registry_db = open_store(self.database, synchronous=sync)
            reconnect = getattr(self._registry_db, "reconnect_in_background", None)
            if reconnect is not None:  # PostgreSQL: never reconnect on the event loop while serving
                reconnect()
        except sqlite3.OperationalError as exc:
            raise GatewayStartupError(f"cannot start: {exc}") from None
        broker_file = data.database if worker is None else worker.broker_database
        broker_file.parent.mkdir(mode=0o700, exist_ok=True)
        self._broker_db = open_database(broker_file, synchronous=sync)
        self.registry = Registry(self._registry_db)
        self.nodes = ClusterNodes(self._registry_db)
        self._started_at = self.clock.wall()
        self._refuse_another_ca()
        if config.listen.insecure_plaintext is not None:
            refuse_lab_on_production(data, self.registry)
        self.ca = FleetCA(self.authority, self.registry, data.crl_dir)
        self.audit = AuditLog(self._registry_db, node=self.node if self.reports_node else None)
        self._notifications = RegistryNotifications(self.database, self.node) if self.clustered else None
        self._anchor_key = load_or_create_anchor_key(data.root)  # DATA/audit.key: anchors' MAC key
        self._anchored: tuple[int, str] | None = None  # the head the last anchor recorded
        self.directory = RegistryDirectory(self.registry, self.trust_domain, self.clock.wall())
        # Certificate validity is ours to check (OpenSSL's time check is off, see transport.py): at the
        # handshake, at CONNECT and while a session lives, each widened by the same tolerance.
        self.clock_skew = timedelta(seconds=config.tls.clock_skew_tolerance)
        self.engine = PolicyEngine(
            load_startup_policy(config), self.directory, clock_skew_tolerance=config.tls.clock_skew_tolerance
        )
        # The violation limit is not copied here: the broker asks the engine for it at each count, so
        # it follows a SIGHUP reload (limits.max_violations only stands in for a policy without one).
        self.broker = Broker(self.engine, broker_limits(config), SqliteBrokerStore(self._broker_db))
        # Every connection is a descriptor: share the process's out so no listener starves another.
        self.open_files = raise_open_file_limit()
        try:
            self.connection_plan = plan_connections(
                self.open_files.soft, config.limits, lab=config.listen.insecure_plaintext is not None
            )
        except FdBudgetError as exc:
            raise GatewayStartupError(str(exc)) from None
        plan = self.connection_plan
        self.balancers = Balancers(config.listen.proxy_protocol_from)  # PROXY v2 senders (docs/cluster.md)
        self.gc_pauses = GcPauses()  # measured from start() to stop(): /metrics' gc_pause_seconds
        self.hub = ConnectionHub(
            self.broker,
            handshake_timeout=config.tls.handshake_timeout,
            max_write_buffer=config.limits.max_write_buffer,
            clock=self.clock.now,
            gates=listener_gates(
                config.limits,
                mqtt=plan.mqtt,
                https=plan.https,
                lab=plan.lab,
                balancers=self.balancers.entries,
            ),
        )
        self.driver = BrokerDriver(self.broker, self.hub, self.clock)
        # The nodes' backbone for messages (docs/cluster.md, part 2): only with cluster.nats, and only
        # then is nats imported; otherwise the broker's backbone hooks stay None and cost nothing.
        self.backbone: NatsBackbone | None = None
        backbone_secret = b""
        if config.cluster.nats.strip():
            backbone_secret = backbone_key(self._registry_db)  # the same in every node's (shared) database
            c = config.cluster
            durable = None
            if c.jetstream_replicas > 0:
                durable = DurableSettings(
                    replicas=c.jetstream_replicas,
                    max_age=c.jetstream_max_age,
                    max_bytes=c.jetstream_max_bytes,
                    store_timeout=c.jetstream_store_timeout,
                    consumer_idle=c.jetstream_consumer_idle,
                )
            try:
                tls = nats_tls_context(c.nats_tls_ca, c.nats_tls_cert, c.nats_tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cluster.nats_tls_*: cannot use the certificate files ({exc})") from None
            if c.nats_credentials and importlib.util.find_spec("nkeys") is None:
                # nats-py would fail each connection attempt in the background, and the node serve on
                raise ConfigError(
                    "cluster.nats_credentials needs the nkeys package, which is not installed: "
                    "pip install 'nats-py[nkeys]'"
                )
            self.backbone = NatsBackbone(
                c.nats,
                self.node,
                self.driver,
                backbone_secret,
                durable=durable,
                tls=tls,
                credentials=c.nats_credentials,
            )
            if self.reports_node:  # other nodes learn from the nodes table that this one reads it
                self.nodes.reads_sealed(self.node, self._started_at)
            else:  # no other node (a backbone without a nodes table): nobody to wait for
                self.backbone.sealing = True
        self.events = EventRecorder(self.audit)
        self.http_refusals = HttpRefusals(self.audit, self.clock.wall)
        self.follower = RegistryFollower(
            self.directory,
            self.engine,
            self.driver,
            self.trust_domain,
            self._data_version if self._notifications is None else self._notifications.data_version,
        )
        self.ops = Operations(
            OpsContext(
                registry=self.registry,
                ca=self.ca,
                audit=self.audit,
                directory=self.directory,
                engine=self.engine,
                driver=self.driver,
                trust_domain=self.trust_domain,
                follow_registry=self.follower.apply_changes,
                mode_signer=JsonSigner.load(data.server_key, data.server_cert),
            )
        )
        self.follower.on_identity_changed(self.ops.on_identity_changed)
        self.continuous = wire_continuous(self, self.ops)
        # Sessions, retained messages, share groups and detector state across nodes (cluster_plane.py).
        self.cluster_plane: ClusterPlane | None = None
        if self.backbone is not None:
            self.cluster_plane = ClusterPlane(
                self.backbone, self.driver, self.continuous.evaluator, backbone_secret
            )
            self.cluster_plane.attach()
            self.backbone.attach()
        # The broker has one publish-observer slot; wire() above took it for the detectors. Everything
        # that watches accepted publishes shares it through one fan-out, the detectors first.
        self.flows = FlowFeed(self.engine.policy.context.data_classes)
        self._subscriptions_seen = -1  # Broker.subscriptions_version at the event tick's last look
        self._unrecorded: list[object] = []  # drained, not yet audited (the audit log failed)
        self._unrecorded_failures: list[HandshakeFailure] = []
        self.views = PartnerViews(
            self.driver,
            self.engine.policy,
            load_or_create_key(data.root),
            on_published=self.flows.view_published,
        )
        self.totp = TotpStore(data.root, self.engine.policy.context.second_factor)
        unknown = self.engine.policy.context.second_factor.unknown_rights(RIGHT_TEXT)
        if unknown:
            log.warning("second_factor.sensitive names unknown admin rights: %s", ", ".join(unknown))
        self.posture = PostureWatch(self.engine, self.driver, self.audit)
        # The console's per-unit view: last messages, last GPS fix, control liveness (bounded).
        self.unit_watch = UnitWatch(known=lambda unit: self.registry.get_identity("unit", unit) is not None)
        self.observers = PublishFanout(
            self.continuous.evaluator.observe_publish,
            self.views.observe,
            self.posture.observe,
            self.flows.observe,
            self.unit_watch.observe,
        )
        self.broker.observe_publishes(self.observers.observe)
        self.feed = AuditFeed(self.audit, self.clock.wall)
        self._heartbeat_health = LoopHealth("reporting to the cluster")
        self.loops = {
            name: LoopHealth(name)
            for name in ("following the registry", "draining broker events", "anchoring the audit log")
        }
        self._live_contexts: list[ssl.SSLContext] = []
        self._mqtt_listener: MtlsListener | None = None
        self._mqtt_live: ssl.SSLContext | None = None  # the context the MQTT listener serves with
        self._served_fingerprint = self._server_fingerprint()
        self._listeners: list[MtlsListener | AcceptLoop] = []
        self._http: web.AppRunner | None = None
        self._serving_lock: int | None = None
        self.bound: dict[str, tuple[str, int]] = {}

    def _refuse_another_ca(self) -> None:
        """Every node of a cluster must hold the same CA (files provisioned to each node)."""
        mine = hashes.Hash(hashes.SHA256())
        mine.update(self.authority.root.public_bytes(Encoding.DER))
        ours = mine.finalize().hex()
        recorded = self.nodes.agree("root_ca_sha256", ours)
        if recorded != ours:
            raise GatewayStartupError(
                f"the CA in {self.data.ca_dir} is not the CA of the database {self._where()} (root "
                f"{ours[:16]}…, recorded {recorded[:16]}…); provision this node with the cluster's ca/ files"
            )

    def _where(self) -> str:
        return describe_url(self.database) if self.clustered else str(self.data.database)

    def heartbeat(self) -> None:
        """This node's row in the nodes table (`fleetgate cluster status`), once a second."""
        peers = self.broker.connected_peers()
        units = sum(1 for peer in peers if peer.identity is not None and peer.identity.kind == "unit")
        follower = self.loops["following the registry"]
        self.nodes.heartbeat(
            self.node,
            self._started_at,
            self.clock.wall(),
            sessions=len(peers),
            units_online=units,
            listeners=" ".join(f"{k}={h}:{p}" for k, (h, p) in sorted(self.bound.items())),
            healthy=not follower.failing,
            backbone=self._backbone_state(),
        )
        if self.backbone is not None:  # the sealed wire form only once every node up reads it
            self.backbone.sealing = self.nodes.all_read_sealed(self.node, self.clock.wall())

    def _backbone_state(self) -> str:
        if self.backbone is None:
            return ""
        return "connected" if self.backbone.counters.connected else "disconnected"

    # --- admission ----------------------------------------------------------------------------

    def check_certificate(self, cert: x509.Certificate, address: str) -> Peer | str:
        """What a chain-verified client certificate proves, or why it proves nothing.

        Checked before a single MQTT byte is read; the policy engine checks the same facts again
        at CONNECT and whenever they change.
        """
        try:
            check_validity(cert, self.clock.wall(), tolerance=self.clock_skew)
        except VerificationError as exc:
            return f"certificate_{exc.reason}"
        try:
            identity = identity_from_certificate(cert, self.trust_domain)
        except IdentityError as exc:
            return exc.reason
        # Zero trust when the registry is away: what this node's cache already knows is admitted for
        # at most cluster.cache_max_age after its last good read; anything it must ask about is refused.
        age = (self.clock.wall() - self.directory.last_good).total_seconds()
        if age > self.config.cluster.cache_max_age:
            return "registry_unreachable"
        try:
            refusal = self.directory.certificate_refusal(cert)  # revoked, or not recorded by this CA
            if refusal is not None:
                return refusal
            state = self.directory.state_of(identity)
        except sqlite3.Error:
            return "registry_unreachable"
        if state is None:
            return "unknown_identity"
        if state.is_revoked:
            return "identity_revoked"
        return Peer(
            address=address,
            identity=identity,
            certificate_serial=cert.serial_number,
            certificate_not_after=cert.not_valid_after_utc.timestamp(),
        )

    # --- live re-authorization ----------------------------------------------------------------

    def on_revocations(self, serials: set[int]) -> int:
        """Cut every live session whose certificate is among `serials`; returns how many."""
        return self.follower.on_revocations(serials)

    def apply_registry_changes(self) -> None:
        """Follow the registry now (gateway/app/registry_follower.py)."""
        self.follower.apply_changes()

    def _data_version(self) -> int:
        """Changes whenever another connection (another process, or the broker's own) commits."""
        row = self._registry_db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def reload(self) -> None:
        """SIGHUP: the policy file, the CA (issuing CAs rotated or retired) and the server certificate,
        each kept as it was if the new one is bad."""
        self.reload_policy()
        self.reload_ca()
        self.reload_server_certificate()

    def reload_ca(self, actor: str = "system/sighup") -> bool:
        """Follow DATA/ca/ as it is now (after `fleetgate ca rotate` or `fleetgate ca retire`).

        A new issuing CA: EST issues from it, its CRL is published, and it is added as a trust anchor
        to both listeners' contexts in place (OpenSSL adds; live connections are untouched; the
        anchors are the issuing CAs alone, see _mqtt_context). A retired one: the MQTT listener gets
        a fresh context without it for new handshakes. The HTTPS listener's context cannot be
        swapped (aiohttp holds it), so there it stays a TLS anchor until a restart; its certificates
        are revoked in the registry (`retire`), so EST and the admin API refuse them anyway, and live
        MQTT sessions on them were cut when the revocation was followed.
        """
        now = self.clock.wall()
        try:
            authority = CertificateAuthority.load(self.data.ca_dir, self._passphrase)
            authority.unlock()
        except PkiError as exc:
            log.error("CA reload refused, keeping the current CA: %s", exc.message)
            self.audit.append(
                actor=actor, action="ca.reloaded", subject="ca", outcome="refused", reason=exc.reason, now=now
            )
            return False
        before = {ca.sha256: ca.generation for ca in self.authority.issuing_cas}
        after = {ca.sha256: ca.generation for ca in authority.issuing_cas}
        if before == after:
            return False
        added = [ca for ca in authority.issuing_cas if ca.sha256 not in before]
        removed = sorted(generation for sha, generation in before.items() if sha not in after)
        self.authority = authority
        self.ca.use_authority(authority)
        if added:
            anchors = _pem([ca.certificate for ca in added])
            for context in self._live_contexts:
                context.load_verify_locations(cadata=anchors)  # in place: the listeners hold these
        if removed:
            self._drop_mqtt_trust(removed)
        self.audit.append(
            actor=actor,
            action="ca.reloaded",
            subject="ca",
            outcome="ok",
            details={
                "issuing": authority.generation,
                "trusted": sorted(after.values()),
                "added": [ca.generation for ca in added],
                "removed": removed,
            },
            now=now,
        )
        log.info(
            "CA reloaded: issuing CA %d issues; trusted: %s",
            authority.generation,
            ", ".join(str(g) for g in sorted(after.values())),
        )
        return True

    def _drop_mqtt_trust(self, removed: Sequence[int]) -> None:
        listener, old = self._mqtt_listener, self._mqtt_live
        if listener is None or old is None:
            return
        try:
            fresh = self._mqtt_context()
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("the MQTT listener keeps trusting issuing CA(s) %s until a restart: %s", removed, exc)
            return
        self._live_contexts[self._live_contexts.index(old)] = fresh
        self._mqtt_live = fresh
        listener.use_context(fresh)
        log.warning(
            "issuing CA(s) %s no longer trusted by the MQTT listener; the HTTPS listener drops them at the "
            "next restart (until then EST and the admin API refuse their certificates as revoked)",
            ", ".join(map(str, removed)),
        )

    def reload_server_certificate(self, actor: str = "system/sighup") -> bool:
        """Serve DATA/server/ as it is now (after `fleetgate server-cert issue`): new handshakes get the
        new certificate, live connections keep theirs, and the retained mode commands are signed again
        with the new key. A pair that does not load (a key that does not match) changes nothing."""
        fingerprint = self._server_fingerprint()
        if fingerprint == self._served_fingerprint:
            return False
        cert, key = str(self.data.server_cert), str(self.data.server_key)
        try:
            self._mqtt_context()  # a trial load: a broken pair must not touch the live contexts
            signer = JsonSigner.load(self.data.server_key, self.data.server_cert)
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("server certificate reload refused, keeping the current one: %s", exc)
            return False
        for context in self._live_contexts:
            context.load_cert_chain(cert, key)  # in place: the listeners hold these very objects
        self.ops.use_mode_signer(signer)
        now = self.clock.wall()
        republished = self.ops.reconcile(now)
        self._served_fingerprint = fingerprint
        self.audit.append(
            actor=actor,
            action="server.certificate_reloaded",
            subject="gateway",
            outcome="ok",
            details={"sha256": fingerprint, "mode_commands_signed_again": republished},
            now=now,
        )
        log.info(
            "serving the new server certificate %s; %d mode command(s) signed again", fingerprint, republished
        )
        return True

    def _server_fingerprint(self) -> str:
        pem = self.data.server_cert.read_bytes()
        return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()

    def reload_policy(self, actor: str = "system/sighup") -> Policy | None:
        """Load the policy file again; on success re-decide every live session, else keep the old one."""
        now = self.clock.wall()
        subject = str(self.config.policy_file or "<embedded policy>")
        try:
            policy = load_policy(self.config.policy_file)
        except (PolicyError, OSError) as exc:
            log.error("policy reload refused, keeping the current policy: %s", exc)
            self.audit.append(
                actor=actor,
                action="policy.reload",
                subject=subject,
                outcome="refused",
                reason="invalid_policy",
                details={"error": str(exc)},
                now=now,
            )
            return None
        self.engine.reload(policy)
        self.views.reload(policy)
        self.totp.reload(policy.context.second_factor)
        self.flows.reload(policy.context.data_classes)
        self._subscriptions_seen = -1  # the views' tiers follow the policy: look at the sessions again
        self.driver.reauthorize()
        self.audit.append(actor=actor, action="policy.reload", subject=subject, outcome="ok", now=now)
        log.info("policy reloaded from %s", subject)
        if self.clustered and not actor.startswith("cluster/"):
            try:  # every other node reloads its copy (gateway/app/cluster.py)
                notify(self._registry_db, f"{POLICY_PREFIX}{self.node}")
            except sqlite3.Error as exc:
                log.warning("the other nodes were not told of this policy reload (%s); SIGHUP them", exc)
        return policy

    def _follow_policy_reload(self, origin: str) -> None:
        self.reload_policy(actor=f"cluster/{origin}")

    def anchor_audit(self, event: str) -> None:
        """Export the audit head, MACed, to DATA/audit-anchors.log and the log (stores/audit_anchor.py).

        "periodic" anchors only when the head moved since the last anchor."""
        seq, digest = self.audit.head()
        if event == "periodic" and self._anchored == (seq, digest):
            return
        at = self.clock.wall().astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        anchor = make_anchor(self._anchor_key, seq, digest, at, event)
        append_anchor(self.data.root, anchor)
        self._anchored = (seq, digest)
        log.info("audit anchor %s", anchor.line())

    def drain_events(self) -> None:
        """One event tick: broker events and failed handshakes into the audit log, the detectors,
        fleet operations, the partner views and the flow map. Start to end, without a pause (tests,
        shutdown); the running gateway takes its ticks through `event_tick`."""
        for _ in self._event_tick_steps():
            pass

    async def event_tick(self) -> None:
        """One event tick as the running gateway takes it: the event loop serves the reads that came
        in after each step (the detectors and the flow map work in slices of under a millisecond),
        so a tick over thousands of busy units does not hold every unit's messages for its whole
        length (~6 ms each 0.25 s at 20k msg/s from 1,000 units, measured: the fan-in tail)."""
        for _ in self._event_tick_steps():
            await asyncio.sleep(0)

    def _event_tick_steps(self) -> Iterator[None]:
        events = self.broker.drain_events()
        failures, self.hub.failures = self.hub.failures, []
        self.ops.observe(events)
        audit_failure: Exception | None = None
        try:
            yield from self._record_steps(events, failures)
            self.http_refusals.flush()
        except Exception as exc:  # the rest of the tick still runs; the supervisor hears of it after
            audit_failure = exc
        yield
        yield from self.continuous.tick_steps(events, failures, self.clock.now())
        if self.cluster_plane is not None:
            self.cluster_plane.observe_events(events)  # a unit that left takes its last GPS fix along
        # The session list is O(sessions) to build: only when a subscription came or went.
        sessions = None
        if self.broker.subscriptions_version != self._subscriptions_seen:
            self._subscriptions_seen = self.broker.subscriptions_version
            sessions = self.broker.sessions()
            self.views.refresh_subscribers(sessions)
        yield
        yield from self.flows.tick_steps(events, self.clock.now(), sessions)
        if audit_failure is not None:
            raise audit_failure

    def _record_steps(self, events: Sequence[object], failures: Sequence[HandshakeFailure]) -> Iterator[None]:
        """Audit what happened, AUDIT_SLICE events per commit, pausing between commits. If the audit
        log cannot be written (a full disk), what was not recorded is kept, up to UNRECORDED_LIMIT
        items, and recorded by the next tick that can."""
        self._unrecorded.extend(events)
        self._unrecorded_failures.extend(failures)
        for backlog in (self._unrecorded, self._unrecorded_failures):
            if len(backlog) > UNRECORDED_LIMIT:
                del backlog[: len(backlog) - UNRECORDED_LIMIT]
        wall = self.clock.wall()
        while len(self._unrecorded) > AUDIT_SLICE:
            self.events.record(self._unrecorded[:AUDIT_SLICE], (), wall)
            del self._unrecorded[:AUDIT_SLICE]
            yield
        self.events.record(self._unrecorded, self._unrecorded_failures, wall)
        self._unrecorded, self._unrecorded_failures = [], []

    # --- listeners ----------------------------------------------------------------------------

    def _mqtt_context(self) -> ssl.SSLContext:
        # The trusted issuing CAs, and not the root: the root signed every issuing CA, a retired one
        # included, so a client presenting a retired issuing CA in its chain would reach it.
        issuing = [ca.certificate for ca in reversed(self.authority.issuing_cas)]
        return tls_server_context(
            str(self.data.server_cert), str(self.data.server_key), _pem(issuing), self.config.tls.min_version
        )

    def _live(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """A context a listener serves with: a certificate reload updates it in place."""
        self._live_contexts.append(context)
        return context

    def _https_context(self) -> ssl.SSLContext:
        context = self._mqtt_context()
        context.verify_mode = ssl.CERT_OPTIONAL  # EST enroll uses a token; reenroll/admin use mTLS
        return context

    def metrics_collector(self) -> GatewayCollector:
        """What /metrics reports, read from the live objects at scrape time."""
        return GatewayCollector(
            lambda: self.broker.metrics,
            lambda: self.hub.counters,
            lambda: self.hub.connection_count,
            lambda: self.continuous.evaluator.snapshot(),
            self.views.counters,
            gates=lambda: self.hub.gates,
            open_files=self.open_files.soft,
            audit=self._audit_counters,
            containment=lambda: self.ops.containment_seconds,
            units=self._units_by_state,
            node=self.node if self.reports_node else None,
            backbone=None if self.backbone is None else self._backbone_counters,
            cluster_plane=None if self.cluster_plane is None else self.cluster_plane.counters,
            gc_pauses=lambda: self.gc_pauses.by_generation,
            gc_frozen=lambda: self.gc_pauses.frozen,
        )

    def _backbone_counters(self) -> BackboneCounters:
        assert self.backbone is not None
        return self.backbone.counters

    def _audit_counters(self) -> tuple[int, int, int]:
        try:
            head = self.audit.head()[0]
        except sqlite3.Error:  # the cluster's database away: the last head this node anchored
            head = self._anchored[0] if self._anchored is not None else 0
        return (self.audit.appended, self.audit.appended_bytes, head)

    def _units_by_state(self) -> dict[str, int]:
        """The registry's states (registered, enrolled, quarantined, revoked …), plus `online` (live
        unit sessions) and `restricted` (held to diagnostic-only by their posture)."""
        try:
            counts = self.registry.count_by_state("unit")
        except sqlite3.Error:  # the cluster's database away: /metrics still answers with what is live
            counts = {}
        identities = (s.peer.identity for s in self.broker.sessions() if s.connected and s.peer is not None)
        counts["online"] = sum(1 for who in identities if who is not None and who.kind == "unit")
        counts["restricted"] = self.engine.restricted_count()
        return counts

    def _http_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.limits.max_est_body + 1024)
        certs = self.config.certificates
        add_est_routes(
            app,
            EstContext(
                ca=self.ca,
                audit=self.audit,
                unit_lifetime=timedelta(days=certs.unit_lifetime_days),
                max_body=self.config.limits.max_est_body,
                clock_skew=self.clock_skew,
                clock=self.clock.wall,
                # Before the answer leaves: the new certificate is admitted on MQTT at once.
                on_issued=self.directory.note_issued,
                self_renewal=certs.self_renewal.as_mapping(),
                body_timeout=self.config.limits.https_request_timeout,
                refused=self.http_refusals,
            ),
        )
        registry = metrics_registry(self.metrics_collector())
        add_health_routes(
            app,
            ReadinessProbe(
                listeners=lambda: set(self.bound),
                required_listeners=frozenset({"mqtt", "https"}),
                database=self._broker_db,  # this node's own file (the shared one may be PostgreSQL)
                follower=self.loops["following the registry"],
                loop_time=lambda: asyncio.get_running_loop().time(),
            ),
        )
        admin = AdminContext(
            ops=self.ops,
            audit=self.audit,
            registry=self.registry,
            trust_domain=self.trust_domain,
            sessions=self.broker.sessions,
            reload_policy=self.reload_policy,
            feed=self.feed,
            totp=self.totp,
            flows=lambda: self.flows.snapshot(self.clock.now()),
            clock_skew=self.clock_skew,
            clock=self.clock.wall,
            body_timeout=self.config.limits.https_request_timeout,
            token_ttl=timedelta(hours=self.config.certificates.token_ttl_hours),
            refused=self.http_refusals,
            metrics=lambda: render(registry),
        )
        add_admin_routes(app, admin)
        add_console_routes(app, ConsoleContext(admin, self.unit_watch, self.engine))
        return app

    async def start(self) -> None:
        # Before anyone can connect: retained mode commands match the registry (quarantines made
        # with the CLI while the gateway was down take effect now).
        # `fleetgate restore` asks it; the parent of `serve --workers N` holds it for its workers.
        self._serving_lock = hold_serving_lock(self.data.root) if self.worker is None else None
        self.gc_pauses.install()
        reconciled = self.ops.reconcile(self.clock.wall())
        if reconciled:
            log.info("published %d mode command(s) to match the registry", reconciled)
        self._log_open_files()
        if self.backbone is not None:
            self.hub.spawn(self.backbone.run())  # connects in the background; clients are served anyway
        if self.cluster_plane is not None:
            self.hub.spawn(self.cluster_plane.run())
        listen = self.config.listen
        self._mqtt_live = self._live(self._mqtt_context())
        shared = self.worker is not None  # SO_REUSEPORT: every worker on the same ports
        mqtt, self.bound["mqtt"] = await start_mqtt_listener(
            self.hub,
            listen.mqtt.host,
            listen.mqtt.port,
            self._mqtt_live,
            self.check_certificate,
            self.balancers,
            reuse_port=shared,
        )
        self._listeners.append(mqtt)
        self._mqtt_listener = mqtt
        if listen.insecure_plaintext is not None:
            lab, self.bound["lab"] = await start_lab_listener(
                self.hub, listen.insecure_plaintext.host, listen.insecure_plaintext.port, reuse_port=shared
            )
            self._listeners.append(lab)
        # aiohttp serves EST and the admin API, behind our accept loop and admission. Its keep-alive
        # timeout is armed at connection start and after every answer, and only a complete request head
        # disarms it: it is the request-head timeout (aiohttp has no other bound on slow headers).
        self._http = web.AppRunner(
            self._http_app(),
            access_log=None,
            keepalive_timeout=self.config.limits.https_request_timeout,
            lingering_time=HTTP_LINGER_SECONDS,
        )
        await self._http.setup()
        assert self._http.server is not None
        self._https_live = self._live(self._https_context())
        https, self.bound["https"] = await start_https_listener(
            self.hub,
            listen.https.host,
            listen.https.port,
            self._https_live,
            self._http.server,
            reuse_port=shared,
        )
        self._listeners.append(https)
        own = listen.worker_https
        if own is not None and self.worker is not None:  # this worker alone: a per-worker scrape address
            mine, self.bound["worker_https"] = await start_https_listener(
                self.hub, own.host, own.port, self._https_live, self._http.server, reuse_port=True
            )
            self._listeners.append(mine)
        elif own is not None:
            log.info(
                "listen.worker_https is for `serve --workers N`; one process serves HTTPS on listen.https"
            )
        self.hub.run_ticker()
        registry, events, anchoring = self.loops.values()
        self.hub.spawn(supervise(self.follower.step, DATA_VERSION_POLL_SECONDS, registry))
        self.hub.spawn(supervise(self.event_tick, EVENT_TICK_SECONDS, events))
        interval = self.config.storage.audit_anchor_interval
        self.hub.spawn(supervise(lambda: self.anchor_audit("periodic"), interval, anchoring))
        self.hub.spawn(self.feed.run())
        if self.reports_node:
            # Only a cluster's nodes and `serve --workers N`'s report (a single node on SQLite must not
            # write once a second: a CLI holding the file's write lock would stall its event loop for
            # the busy timeout).
            self.hub.spawn(supervise(self.heartbeat, HEARTBEAT_SECONDS, self._heartbeat_health))
        if self._notifications is not None:
            self._notifications.attach(
                asyncio.get_running_loop(),
                self.follower.apply_changes,
                lambda origin: self._follow_policy_reload(origin),
            )
        self.audit.append(
            actor="system",
            action="gateway.start",
            subject="gateway",
            outcome="ok",
            details={k: f"{h}:{p}" for k, (h, p) in self.bound.items()},
            now=self.clock.wall(),
        )
        self.anchor_audit("start")

    async def stop(self) -> None:
        self.gc_pauses.uninstall()
        self.feed.close()  # event streams end, so the HTTP server need not wait for them
        for listener in self._listeners:
            listener.close()
        await self.hub.shutdown()
        if self.backbone is not None:
            await self.backbone.close()
        if self.cluster_plane is not None:
            await self.cluster_plane.close()
        # What a tick stopped between two of its audit commits had not recorded yet goes first.
        self._unrecorded.extend(self.broker.drain_events())
        self._unrecorded_failures.extend(self.hub.failures)
        self.events.record(self._unrecorded, self._unrecorded_failures, self.clock.wall())
        self._unrecorded, self._unrecorded_failures = [], []
        if self._http is not None:
            await self._http.cleanup()
        try:  # the summaries of every open window, with their counts
            self.events.aggregator.flush(time.monotonic(), self.clock.wall(), force=True)
            self.http_refusals.flush(force=True)
        except sqlite3.DatabaseError as exc:  # e.g. a full disk: the stop goes on
            log.error("cannot write the last audit summaries at stop (%s)", exc)
        if self._notifications is not None:
            self._notifications.close()
        try:
            self.audit.append(
                actor="system", action="gateway.stop", subject="gateway", outcome="ok", now=self.clock.wall()
            )
            self.anchor_audit("stop")
        except sqlite3.DatabaseError as exc:  # PostgreSQL away at stop: the stop goes on
            log.error("cannot record the stop in the audit log (%s)", exc)
        except OSError as exc:  # e.g. a full disk: the stop goes on; the next start anchors again
            log.error("cannot write the audit anchor at stop (%s); the next start writes one", exc)
        self._broker_db.close()
        self._registry_db.close()
        release_serving_lock(self._serving_lock)

    def _log_open_files(self) -> None:
        files, plan = self.open_files, self.connection_plan
        raised = f" (raised from {files.before})" if files.raised else ""
        log.info("open files: soft limit %d%s, hard %d; %s", files.soft, raised, files.hard, plan.describe())
        if files.soft < LOW_OPEN_FILES:
            log.warning(
                "the open-file limit (%d) lets at most %d units connect; raise it "
                "(systemd: LimitNOFILE=65536)",
                files.soft,
                plan.mqtt,
            )

    async def run_until_signalled(self, on_ready: asyncio.Event | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        frozen = self.gc_pauses.freeze_startup_heap()  # before the listeners open (app/gc_pauses.py)
        log.debug("%d start-up objects left out of the cycle collector's full collections", frozen)
        await self.start()
        log.info("fleetgate is up: %s", ", ".join(f"{k} {h}:{p}" for k, (h, p) in self.bound.items()))
        if self.balancers:
            balancers = " ".join(sorted(self.balancers.entries))
            log.info("mqtt: PROXY v2 headers required from %s (and taken from no one else)", balancers)
        if on_ready is not None:
            on_ready.set()
        await stop.wait()
        log.info("shutting down")
        if self.worker is not None:
            arm_stop_deadline()
        await self.stop()
