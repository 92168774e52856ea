"""One gateway process: the CA, the registry, the broker, the listeners, and the loops that keep
live sessions honest.

`fleetgate serve` builds a Gateway and runs it until SIGTERM/SIGINT. Tests do the same in-process
or as a subprocess. Everything that touches disk or the network is set up here; the decisions are
made in pki/, gateway/policy and gateway/broker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aiohttp import web
from cryptography import x509

from gateway.admin.api import AdminContext, add_admin_routes
from gateway.admin.auth import RIGHT_TEXT
from gateway.admin.est import EstContext, add_est_routes
from gateway.admin.sse import AuditFeed
from gateway.admin.totp_store import TotpStore
from gateway.app.audit_events import EventRecorder
from gateway.app.metrics import GatewayCollector, metrics_registry, render
from gateway.app.observers import PublishFanout
from gateway.app.serving_lock import hold as hold_serving_lock
from gateway.app.serving_lock import release as release_serving_lock
from gateway.broker import Broker, BrokerLimits
from gateway.config import GatewayConfig
from gateway.context.flow_feed import FlowFeed
from gateway.context.partner_views import PartnerViews, load_or_create_key
from gateway.context.posture_watch import PostureWatch
from gateway.detection.continuous import wire as wire_continuous
from gateway.edge.admission import admission_from_limits
from gateway.edge.hub import ConnectionHub, start_lab_listener, start_mqtt_listener
from gateway.edge.transport import MtlsListener, tls_server_context
from gateway.mqtt.reason_codes import ReasonCode
from gateway.ops.operations import Operations
from gateway.policy.access import Peer
from gateway.policy.engine import PolicyEngine
from gateway.policy.rules import Policy, PolicyError, load_policy
from gateway.stores.audit_log import AuditLog
from gateway.stores.broker_store import SqliteBrokerStore
from gateway.stores.datadir import DataDir, ca_passphrase
from gateway.stores.registry_directory import RegistryDirectory
from pki.authority import CertificateAuthority
from pki.errors import VerificationError
from pki.names import Identity, IdentityError, identity_from_certificate
from pki.service import FleetCA
from pki.store import Registry, open_database
from pki.verify import check_validity

log = logging.getLogger("fleetgate")

# Revocations and state changes made by another process (the CLI) reach live sessions this fast:
# every DATA_VERSION_POLL_SECONDS the gateway asks SQLite whether any other connection committed
# (PRAGMA data_version reads no table), and only then reads the registry's change feeds. A full
# refresh also runs every REGISTRY_REFRESH_SECONDS as a safety net.
DATA_VERSION_POLL_SECONDS = 0.025
REGISTRY_REFRESH_SECONDS = 1.0


class GatewayStartupError(RuntimeError):
    """The gateway cannot start; the message says why and what to do."""


def load_startup_policy(config: GatewayConfig) -> Policy:
    try:
        return load_policy(config.policy_file)
    except PolicyError as exc:
        raise GatewayStartupError(f"the policy cannot be used: {exc}") from None


def broker_limits(config: GatewayConfig) -> BrokerLimits:
    limits = config.limits
    return BrokerLimits(
        max_packet_size=limits.max_packet_size,
        receive_maximum=limits.receive_maximum,
        max_inflight=limits.max_inflight,
        max_queued_messages=limits.max_queued_messages,
        max_subscriptions=limits.max_subscriptions,
        max_topic_alias=limits.max_topic_alias,
        max_keep_alive=limits.max_keep_alive,
        max_session_expiry=limits.max_session_expiry,
        max_retained_messages=limits.max_retained_messages,
        max_retained_per_client=limits.max_retained_per_client,
        connect_timeout=limits.connect_timeout,
        max_violations=limits.max_violations,
    )


class Gateway:
    def __init__(self, data: DataDir, config: GatewayConfig) -> None:
        if not data.is_initialised():
            raise GatewayStartupError(
                f"{data.root} is not an initialised data directory; run `fleetgate init --data {data.root}`"
            )
        self.data = data
        self.config = config
        self.authority = CertificateAuthority.load(data.ca_dir, ca_passphrase())
        self.trust_domain = self.authority.trust_domain
        sync = config.storage.synchronous
        self._registry_db = open_database(data.database, synchronous=sync)
        self._broker_db = open_database(data.database, synchronous=sync)
        self.registry = Registry(self._registry_db)
        self.ca = FleetCA(self.authority, self.registry, data.crl_dir)
        self.audit = AuditLog(self._registry_db)
        self.directory = RegistryDirectory(self.registry, self.trust_domain, datetime.now(UTC))
        # Certificate validity is ours to check (OpenSSL's time check is off, see transport.py): at the
        # handshake, at CONNECT and while a session lives, each widened by the same tolerance.
        self.clock_skew = timedelta(seconds=config.tls.clock_skew_tolerance)
        self.engine = PolicyEngine(
            load_startup_policy(config), self.directory, clock_skew_tolerance=config.tls.clock_skew_tolerance
        )
        limits = replace(broker_limits(config), max_violations=self.engine.violation_limit())
        self.broker = Broker(self.engine, limits, SqliteBrokerStore(self._broker_db))
        self.hub = ConnectionHub(
            self.broker,
            handshake_timeout=config.tls.handshake_timeout,
            max_write_buffer=config.limits.max_write_buffer,
            admission=admission_from_limits(config.limits),
        )
        self.events = EventRecorder(self.audit)
        self.ops = Operations(self)
        self.continuous = wire_continuous(self, self.ops)
        # The broker has one publish-observer slot; wire() above took it for the detectors. Everything
        # that watches accepted publishes shares it through one fan-out, the detectors first.
        self.flows = FlowFeed(self.engine.policy.context.data_classes)
        self._subscriptions_seen = -1  # Broker.subscriptions_version at the event tick's last look
        self.views = PartnerViews(
            self.broker,
            self.hub,
            self.engine.policy,
            load_or_create_key(data.root),
            on_published=self.flows.view_published,
        )
        self.totp = TotpStore(data.root, self.engine.policy.context.second_factor)
        unknown = self.engine.policy.context.second_factor.unknown_rights(RIGHT_TEXT)
        if unknown:
            log.warning("second_factor.sensitive names unknown admin rights: %s", ", ".join(unknown))
        self.posture = PostureWatch(self.engine, self.broker, self.hub, self.audit)
        self.observers = PublishFanout(
            self.continuous.evaluator.observe_publish,
            self.views.observe,
            self.posture.observe,
            self.flows.observe,
        )
        self.broker.observe_publishes(self.observers)
        self.feed = AuditFeed(self.audit)
        self._servers: list[asyncio.Server] = []
        self._listeners: list[MtlsListener] = []
        self._http: web.AppRunner | None = None
        self._serving_lock: int | None = None
        self.bound: dict[str, tuple[str, int]] = {}

    # --- admission ----------------------------------------------------------------------------

    def check_certificate(self, cert: x509.Certificate, address: str) -> Peer | str:
        """What a chain-verified client certificate proves, or why it proves nothing.

        Checked before a single MQTT byte is read; the policy engine checks the same facts again
        at CONNECT and whenever they change.
        """
        try:
            check_validity(cert, datetime.now(UTC), tolerance=self.clock_skew)
        except VerificationError as exc:
            return f"certificate_{exc.reason}"
        try:
            identity = identity_from_certificate(cert, self.trust_domain)
        except IdentityError as exc:
            return exc.reason
        if self.directory.is_certificate_revoked(cert.serial_number):
            return "certificate_revoked"
        state = self.directory.state_of(identity)
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
        if not serials:
            return 0
        self.engine.invalidate()
        actions = self.broker.disconnect_where(
            lambda peer: peer.certificate_serial in serials,
            ReasonCode.NOT_AUTHORIZED,
            "certificate revoked",
            time.time(),
        )
        self.hub.apply(actions)
        return len({action.conn for action in actions})

    def apply_registry_changes(self) -> None:
        """Follow the registry (this process or the CLI): revocations cut, state changes re-decide,
        and operations follow the new states (mode commands, cutting off revoked identities)."""
        now = datetime.now(UTC)
        changes = self.directory.refresh(now)
        if changes.revoked_serials:
            self.on_revocations(changes.revoked_serials)
        for identity in changes.identities:
            self.engine.invalidate(identity)
        if changes.identities:
            self.hub.apply(self.broker.reauthorize(time.time()))
        for record in changes.records:
            identity = Identity(record.kind, record.id, self.trust_domain)
            self.ops.on_identity_changed(identity, now, record)

    async def _watch_registry(self) -> None:
        seen = self._data_version()
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(DATA_VERSION_POLL_SECONDS)
            version = self._data_version()
            if version != seen or time.monotonic() - last_refresh >= REGISTRY_REFRESH_SECONDS:
                seen, last_refresh = version, time.monotonic()
                self.apply_registry_changes()

    def _data_version(self) -> int:
        """Changes whenever another connection (another process, or the broker's own) commits."""
        row = self._registry_db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def reload_policy(self, actor: str = "system/sighup") -> Policy | None:
        """Load the policy file again; on success re-decide every live session, else keep the old one."""
        now = datetime.now(UTC)
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
        self.hub.apply(self.broker.reauthorize(time.time()))
        self.audit.append(actor=actor, action="policy.reload", subject=subject, outcome="ok", now=now)
        log.info("policy reloaded from %s", subject)
        return policy

    async def _drain_events(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            events = self.broker.drain_events()
            self.ops.observe(events)
            self.events.record(events, self.hub.failures, datetime.now(UTC))
            self.continuous.tick(events, self.hub.failures, time.time())
            self.hub.failures.clear()
            # The session list is O(sessions) to build: only when a subscription came or went.
            sessions = None
            if self.broker.subscriptions_version != self._subscriptions_seen:
                self._subscriptions_seen = self.broker.subscriptions_version
                sessions = self.broker.sessions()
                self.views.refresh_subscribers(sessions)
            self.flows.tick(events, time.time(), sessions)

    # --- listeners ----------------------------------------------------------------------------

    def _mqtt_context(self) -> ssl.SSLContext:
        return tls_server_context(
            str(self.data.server_cert),
            str(self.data.server_key),
            str(self.data.client_ca_bundle),
            self.config.tls.min_version,
        )

    def _https_context(self) -> ssl.SSLContext:
        context = self._mqtt_context()
        context.verify_mode = ssl.CERT_OPTIONAL  # EST enroll uses a token; reenroll/admin use mTLS
        return context

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
            ),
        )
        collector = GatewayCollector(
            lambda: self.broker.metrics,
            lambda: self.hub.counters,
            lambda: self.hub.connection_count,
            lambda: self.continuous.evaluator.snapshot(),
            self.views.counters,
        )
        registry = metrics_registry(collector)

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=render(registry), content_type="text/plain", charset="utf-8")

        app.router.add_get("/metrics", metrics)
        add_admin_routes(
            app,
            AdminContext(
                ops=self.ops,
                audit=self.audit,
                registry=self.registry,
                trust_domain=self.trust_domain,
                sessions=self.broker.sessions,
                reload_policy=self.reload_policy,
                feed=self.feed,
                totp=self.totp,
                flows=self.flows.snapshot,
                clock_skew=self.clock_skew,
            ),
        )
        return app

    async def start(self) -> None:
        # Before anyone can connect: retained mode commands match the registry (quarantines made
        # with the CLI while the gateway was down take effect now).
        self._serving_lock = hold_serving_lock(self.data.root)  # `fleetgate restore` asks it
        reconciled = self.ops.reconcile(datetime.now(UTC))
        if reconciled:
            log.info("published %d mode command(s) to match the registry", reconciled)
        listen = self.config.listen
        mqtt, self.bound["mqtt"] = await start_mqtt_listener(
            self.hub, listen.mqtt.host, listen.mqtt.port, self._mqtt_context(), self.check_certificate
        )
        self._listeners.append(mqtt)
        if listen.insecure_plaintext is not None:
            lab = await start_lab_listener(
                self.hub, listen.insecure_plaintext.host, listen.insecure_plaintext.port
            )
            self._servers.append(lab)
            self.bound["lab"] = lab.sockets[0].getsockname()[:2]
        self._http = web.AppRunner(self._http_app(), access_log=None)
        await self._http.setup()
        site = web.TCPSite(
            self._http, listen.https.host, listen.https.port, ssl_context=self._https_context()
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None)  # aiohttp has no public accessor for the port
        if sockets:
            self.bound["https"] = sockets[0].getsockname()[:2]
        self.hub.run_ticker()
        self.hub.spawn(self._watch_registry())
        self.hub.spawn(self._drain_events())
        self.hub.spawn(self.feed.run())
        self.audit.append(
            actor="system",
            action="gateway.start",
            subject="gateway",
            outcome="ok",
            details={k: f"{h}:{p}" for k, (h, p) in self.bound.items()},
            now=datetime.now(UTC),
        )

    async def stop(self) -> None:
        self.feed.close()  # event streams end, so the HTTP server need not wait for them
        for listener in self._listeners:
            listener.close()
        for server in self._servers:
            server.close()
        await self.hub.shutdown()
        self.events.record(self.broker.drain_events(), self.hub.failures, datetime.now(UTC))
        if self._http is not None:
            await self._http.cleanup()
        self.audit.append(
            actor="system", action="gateway.stop", subject="gateway", outcome="ok", now=datetime.now(UTC)
        )
        self._broker_db.close()
        self._registry_db.close()
        release_serving_lock(self._serving_lock)

    async def run_until_signalled(self, on_ready: asyncio.Event | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_policy)
        await self.start()
        log.info("fleetgate is up: %s", ", ".join(f"{k} {h}:{p}" for k, (h, p) in self.bound.items()))
        if on_ready is not None:
            on_ready.set()
        await stop.wait()
        log.info("shutting down")
        await self.stop()
