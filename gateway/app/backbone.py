"""The cluster's data plane, first slice: accepted messages between the nodes over core NATS.

Only when `cluster.nats` is set (docs/cluster.md, "Part 2"); a single gateway never imports this.

Out: every client PUBLISH and will this node accepted (after every check at its edge) and routed to
its own subscribers is given here by the broker (`Broker.forward_accepted`) and published once on
NATS, on its topic's subject (gateway/broker/subjects.py), with headers saying which node and which
client sent it, its QoS, retain flag and the 5.0 properties that travel with a message. The broker
call stays synchronous: the message is appended to a list and one sender task publishes in order.

In: this node subscribes on NATS to the union of its local subscriptions' filters, mapped, refcounted
(one NATS subscription per distinct subject filter however many local subscriptions share it; gone
with the last one). What arrives is handed to `Broker.route_remote` in batches (one broker call per
event-loop iteration), which delivers through the same decisions as a local message and never gives
it back to the backbone. The connection is made with no_echo (NATS does not send a node its own
messages) and the origin header is checked too; overlapping NATS subscriptions (`a.>` and `a.b`)
would each receive a message, so messages carry an id and a node routes each id once.

Authenticated: every message carries an HMAC-SHA256 (`Fg-Mac`) under the cluster's backbone key
(gateway/stores/backbone_key.py, in the shared database) over its subject, its headers and its
payload, and the time it was sent (`Fg-Time`). A node routes nothing whose MAC does not verify, or
that is older than FRESH_S (a replay), so a process that can reach NATS but is not a node cannot
inject a message, least of all a command on a unit's control topic. (Confidentiality is NATS's TLS:
use tls:// URLs across machines.)

QoS 1/2 with JetStream (`cluster.jetstream_replicas` > 0): stored, acknowledged to the client once
stored, consumed durably: gateway/app/backbone_durable.py. Guarantees: see docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.app import backbone_durable as durable_lane
from gateway.app.backbone_groups import GroupConsumers
from gateway.app.backbone_wire import FRESH_S as FRESH_S
from gateway.app.backbone_wire import H_CLIENT as H_CLIENT
from gateway.app.backbone_wire import H_ID as H_ID
from gateway.app.backbone_wire import H_IDENTITY as H_IDENTITY
from gateway.app.backbone_wire import H_MAC as H_MAC
from gateway.app.backbone_wire import H_NODE as H_NODE
from gateway.app.backbone_wire import H_PROPS as H_PROPS
from gateway.app.backbone_wire import H_QOS as H_QOS
from gateway.app.backbone_wire import H_RETAIN as H_RETAIN
from gateway.app.backbone_wire import H_SERVED as H_SERVED
from gateway.app.backbone_wire import H_TIME as H_TIME
from gateway.app.backbone_wire import SEEN_IDS as SEEN_IDS
from gateway.app.backbone_wire import BackboneCounters as BackboneCounters
from gateway.app.backbone_wire import authentic as authentic
from gateway.app.backbone_wire import message_from as message_from
from gateway.app.backbone_wire import message_headers as message_headers
from gateway.app.backbone_wire import open_message as open_message
from gateway.app.backbone_wire import seal as seal
from gateway.app.backbone_wire import served_header as served_header
from gateway.app.backbone_wire import sign as sign
from gateway.broker.core import RemoteMessage
from gateway.broker.message import Message
from gateway.broker.routing import IndexWatcher
from gateway.broker.sessions import StoredSubscription
from gateway.broker.state import GroupKey
from gateway.broker.subjects import DEFAULT_PREFIX, filter_to_subjects, topic_to_subject
from gateway.edge.driver import BrokerDriver
from gateway.policy.peer import Peer

log = logging.getLogger("fleetgate.cluster")

RECONNECT_WAIT_S = 0.5


def nats_tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext | None:
    """TLS for the NATS connections from cluster.nats_tls_* (None when none is set: tls:// URLs then
    use the system's CAs). Raises OSError or ssl.SSLError for a file that cannot be used."""
    if not (ca or cert):
        return None
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def not_connected(exc: Exception) -> str:
    """Why a NATS connection is not up, for the node's log: NATS's own words, and for an
    authorization violation what the operator should look at (NATS closes the connection with that
    for a user it does not know: a .creds file from another account or operator, a wrong password)."""
    reason = str(exc) or type(exc).__name__
    if "authorization" in reason.lower():
        return f"refused this node ({reason}): check cluster.nats_credentials or the user in cluster.nats"
    return f"unreachable ({reason})"


async def connect_until_up(
    servers: list[str],
    name: str,
    *,
    tls: ssl.SSLContext | None = None,
    credentials: str = "",
    no_echo: bool,
    disconnected: Callable[[], Awaitable[None]],
    reconnected: Callable[[], Awaitable[None]],
    error: Callable[[Exception], Awaitable[None]],
    unreachable: Callable[[Exception], None],
) -> Any:
    """A NATS connection that reconnects by itself forever, made as soon as NATS first answers
    (retrying every RECONNECT_WAIT_S; `unreachable` is told the first failure, once). The node serves
    its own clients while it waits. `error` should begin with reraise_if_stopping(). `credentials`:
    a `.creds` file (cluster.nats_credentials) for NATS servers in operator (JWT) mode."""
    import nats  # only a cluster's node with cluster.nats pays for the import

    announced = False
    connected = False

    def announce(exc: Exception) -> None:
        nonlocal announced
        if not announced and not connected:
            unreachable(exc)
            announced = True

    async def on_error(exc: Exception) -> None:
        # nats-py retries a first connection by itself, telling only this callback why each attempt
        # failed (refused, a TLS handshake the server or this node turned down, an authorization
        # violation for credentials it does not accept): say the first.
        announce(exc)
        await error(exc)

    while True:
        try:
            nc = await nats.connect(
                servers=servers,
                name=name,
                no_echo=no_echo,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                connect_timeout=2,
                tls=tls,
                user_credentials=credentials or None,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=on_error,
            )
            connected = True
            return nc
        except Exception as exc:
            announce(exc)
            await asyncio.sleep(RECONNECT_WAIT_S)


def reraise_if_stopping() -> None:
    """For a NATS connection's error callback. When the node is stopping, nats-py's connect loop
    retries forever and Python 3.11's wait_for can swallow the cancellation (when the connect failed
    at the same instant), so say it again here, in the loop's own error callback, or the stop would
    wait forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class NatsBackbone:
    def __init__(
        self,
        servers: str,
        node: str,
        driver: BrokerDriver,
        key: bytes,
        prefix: str = DEFAULT_PREFIX,
        durable: durable_lane.DurableSettings | None = None,
        tls: ssl.SSLContext | None = None,
        credentials: str = "",
    ) -> None:
        """`durable`: QoS 1/2 through JetStream (backbone_durable.py); None: everything on core NATS.
        `tls`: for tls:// servers (`nats_tls_context`); `credentials`: a `.creds` file for servers in
        operator (JWT) mode (cluster.nats_credentials); the cluster link uses both too."""
        self._key = key
        # Whether every other node up reads the sealed wire form (backbone_wire.py); the runtime
        # keeps it true to the nodes table, once a second. Until then: the first form, which every
        # node reads.
        self.sealing = False
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.tls = tls
        self.credentials = credentials
        self.node = node
        self.prefix = prefix
        self._driver = driver
        self._broker = driver.broker
        self.counters = BackboneCounters()
        self._nc: Any = None
        self._out: list[tuple[str, bytes, dict[str, str] | None]] = []
        self._out_ready = asyncio.Event()
        self._in: list[RemoteMessage] = []
        self._seq = 0
        self._incarnation = os.urandom(4).hex()  # a restarted node's ids never repeat its old ones
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._refusal_logged = -60.0
        self._keys: dict[tuple[str, str | None, str | None, str], tuple[str, ...]] = {}
        self._refs: Counter[str] = Counter()
        self._subs: dict[str, Any] = {}
        self._subs_dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Share-group subscriptions go here instead when the cluster balances them across nodes
        # (cluster_shared.py: NATS queue groups); set before attach().
        self.groups: IndexWatcher | None = None
        # client id → done once the session record last put for it is stored (a QoS 2 PUBLISH's store
        # waits for the record naming it: cluster_session_records.py); set before attach().
        self.record_written: Callable[[str], Awaitable[None]] | None = None
        self._durable: durable_lane.DurableLane | None = None
        if durable is not None:
            self._durable = durable_lane.DurableLane(
                node,
                key,
                prefix,
                durable,
                self.counters,
                driver.stored,
                driver.route_remote_except,
                driver.deliver_stored,
                driver.broker.session_presence,
                driver.broker.released_ids,
            )
        self._session_keys: set[tuple[str, str | None, str | None, str]] = set()
        # Share groups' QoS 1/2 messages, from consumers of the stream (cluster_shared.py uses it).
        self.group_consumers: GroupConsumers | None = None
        if self._durable is not None:
            self.group_consumers = GroupConsumers(self._durable, driver.route_to_group)

    # --- wiring -------------------------------------------------------------------------------

    def attach(self) -> None:
        """Take the broker's hooks; call before serving (sessions loaded from the store included)."""
        self._broker.watch_subscriptions(self.subscription_changed)
        self._broker.forward_accepted(self.accepted)
        if self._durable is not None:
            self._broker.watch_deliveries(self._durable.delivered)
            self._broker.deliver_durably(self._durable.durable)
            self._broker.cluster.message_id = self.next_message_id

    async def run(self) -> None:
        """Connect (retrying until NATS answers: the node serves its own clients meanwhile), then
        keep the NATS subscriptions current and send what the broker accepted."""
        self._nc = await connect_until_up(
            self.servers,
            f"fleetgate-{self.node}",
            tls=self.tls,
            credentials=self.credentials,
            no_echo=True,
            disconnected=self._disconnected,
            reconnected=self._reconnected,
            error=self._error,
            unreachable=lambda exc: log.warning(
                "NATS at %s %s; retrying, messages stay on this node", self.where, not_connected(exc)
            ),
        )
        self.counters.connected = True
        log.info("cluster backbone: connected to NATS (%s)", self.where)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_subscriptions()), loop.create_task(self._send())]
        if self._durable is not None:
            self._tasks.append(loop.create_task(self._durable.start(self._nc)))
        if self.group_consumers is not None:
            self._tasks.append(loop.create_task(self.group_consumers.run()))
        self._subs_dirty.set()
        self._out_ready.set()
        await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        self._broker.forward_accepted(None)
        self._broker.watch_subscriptions(None)
        if self._durable is not None:
            self._broker.watch_deliveries(None)
            self._broker.deliver_durably(())
            self._broker.cluster.message_id = None
            if self.group_consumers is not None:
                await self.group_consumers.close()
            await self._durable.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _disconnected(self) -> None:
        self.counters.connected = False
        log.warning("cluster backbone: NATS connection lost; reconnecting")

    async def _reconnected(self) -> None:
        self.counters.connected = True
        if self.group_consumers is not None:
            self.group_consumers.reconnected()
        log.info("cluster backbone: NATS connection back")

    async def _error(self, exc: Exception) -> None:
        reraise_if_stopping()
        if self._nc is not None:  # before the first connection, run() says it once
            log.warning("cluster backbone: NATS error: %s", exc)

    @property
    def where(self) -> str:
        """The configured servers without any credentials in their URLs (for logs)."""
        return ", ".join(
            urlsplit(s)._replace(netloc=urlsplit(s).netloc.rpartition("@")[2]).geturl() for s in self.servers
        )

    # --- out ----------------------------------------------------------------------------------

    def accepted(
        self,
        message: Message,
        client_id: str,
        peer: Peer,
        receipt: int | None,
        served: Sequence[GroupKey] = (),
        message_id: str | None = None,
    ) -> bool:
        """The broker's hook (inside its call): queue it for the sender, nothing more. True: the
        acknowledgement of `receipt` waits for the durable store (QoS 1/2 with JetStream). `served`:
        the share groups a member here took it for (named on the message: cluster_shared.py).
        `message_id` (from `next_message_id`): the id to store it under, named in its client's session
        record first; the store waits until that record is stored (`record_written`)."""
        durable = self._durable if message.qos else None
        if self._nc is None and durable is None:
            self.counters.dropped["not_connected"] += 1
            return False
        msg_id = self.next_message_id() if message_id is None else message_id
        subject = topic_to_subject(message.topic, self.prefix if durable is None else durable.prefix)
        body, headers = seal(
            self._key,
            subject,
            self.node,
            msg_id,
            message,
            client_id,
            peer,
            int(time.time() * 1000),
            served_header(served) if served else "",
            stored=durable is not None,  # JetStream dedupes retries and replays by the signed id
            sealed=self.sealing,
        )
        if durable is not None:
            after = None
            if message_id is not None and self.record_written is not None:
                after = self.record_written(client_id)
            durable.publish(subject, body, headers or {}, receipt, after)
            return receipt is not None
        self._out.append((subject, body, headers))
        self._out_ready.set()
        return False

    def next_message_id(self) -> str:
        """A backbone id no other message of the cluster has: this node, its incarnation, a count."""
        self._seq += 1
        return f"{self.node}:{self._incarnation}:{self._seq}"

    async def _send(self) -> None:
        nc = self._nc
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            batch, self._out = self._out, []
            for subject, payload, headers in batch:
                try:
                    await nc.publish(subject, payload, headers=headers)
                    self.counters.sent += 1
                except Exception as exc:  # too large for NATS's max_payload, connection closed…
                    self.counters.dropped[type(exc).__name__] += 1
                    log.warning("cluster backbone: publishing on %s failed: %s", subject, exc)

    # --- subscriptions --------------------------------------------------------------------------

    def subscription_changed(self, added: bool, client_id: str, sub: StoredSubscription) -> None:
        """The broker's index hook: one key per (client, group, scope, filter), so re-adding the same
        subscription or removing one twice leaves the counts right."""
        if sub.group is not None and self.groups is not None:
            self.groups(added, client_id, sub)  # a queue group's, not an ordinary NATS subscription
            return
        key = (client_id, sub.group, sub.scope, sub.plain_filter)
        if self._durable is not None and sub.group is None:
            # A persistent session's own consumers (backbone_durable.py), one per subject.
            if added and key not in self._session_keys and self._broker.session_persistent(client_id):
                self._session_keys.add(key)
                self._durable.session_subscription(
                    True, client_id, filter_to_subjects(sub.plain_filter, self.prefix)
                )
            elif not added and key in self._session_keys:
                self._session_keys.discard(key)
                still = self._broker.session_persistent(client_id)  # an UNSUBSCRIBE, not the session's end
                subjects = filter_to_subjects(sub.plain_filter, self.prefix)
                self._durable.session_subscription(False, client_id, subjects, unsubscribed=still)
        if added:
            if key in self._keys:
                return
            subjects = filter_to_subjects(sub.plain_filter, self.prefix)
            self._keys[key] = subjects
            for s in subjects:
                self._refs[s] += 1
        else:
            gone = self._keys.pop(key, None)
            if gone is None:
                return
            for s in gone:
                self._refs[s] -= 1
                if self._refs[s] <= 0:
                    del self._refs[s]
        self._subs_dirty.set()

    async def _keep_subscriptions(self) -> None:
        nc = self._nc
        while True:
            await self._subs_dirty.wait()
            self._subs_dirty.clear()
            wanted = set(self._refs)
            for subject in [s for s in self._subs if s not in wanted]:
                with contextlib.suppress(Exception):
                    await self._subs.pop(subject).unsubscribe()
            for subject in [s for s in wanted if s not in self._subs]:
                try:
                    self._subs[subject] = await nc.subscribe(subject, cb=self._on_message)
                except Exception as exc:
                    log.warning("cluster backbone: subscribing to %s failed: %s", subject, exc)
            if self._durable is not None:
                await self._durable.keep(wanted)
            self.counters.subjects = len(self._subs)

    def subjects(self) -> list[str]:
        """The NATS subject filters this node holds now (tests, status)."""
        return sorted(self._subs) + ([] if self._durable is None else self._durable.subjects())

    # --- in -----------------------------------------------------------------------------------

    async def _on_message(self, msg: Any) -> None:
        opened = open_message(self._key, msg.subject, msg.headers, msg.data, time.time())
        if isinstance(opened, str):  # not from a node of this cluster, or a replay: never routed
            refused = opened
            self.counters.dropped[refused] += 1
            now = time.monotonic()
            if now - self._refusal_logged >= 60:
                self._refusal_logged = now
                log.warning(
                    "cluster backbone: refused a message on %s (%s); counted in "
                    "fleetgate_backbone_dropped_total, logged once a minute",
                    msg.subject,
                    refused,
                )
            return
        headers, payload = opened
        if headers.get(H_NODE) == self.node:
            return  # our own (no_echo already keeps them away)
        msg_id = headers.get(H_ID)
        if msg_id is None:
            self.counters.dropped["not_ours"] += 1
            return
        seen = self._seen
        if msg_id in seen:
            self.counters.duplicates += 1  # a second NATS subscription of ours matched it
            return
        seen[msg_id] = None
        if len(seen) > SEEN_IDS:
            seen.popitem(last=False)
        try:
            remote = message_from(msg.subject, payload, headers, self.prefix)
        except (ValueError, KeyError, TypeError) as exc:
            self.counters.dropped["malformed"] += 1
            log.warning("cluster backbone: dropped a message on %s: %s", msg.subject, exc)
            return
        self.counters.received += 1
        pending = self._in
        pending.append(remote)
        if len(pending) == 1:
            asyncio.get_running_loop().call_soon(self._route)

    def _route(self) -> None:
        batch, self._in = self._in, []
        if batch:
            self._driver.route_remote(batch)
