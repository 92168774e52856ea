"""QoS 1 and 2 between the nodes, durable: a JetStream stream, acknowledged stores, durable consumers.

Only on a cluster node with `cluster.nats` set and `cluster.jetstream_replicas` above 0
(docs/cluster.md, "QoS 1 and 2 across nodes: JetStream"). QoS 0 stays on core NATS (backbone.py).

Out: a client's QoS 1/2 PUBLISH (and a QoS 1/2 will) accepted on this node is published into one
stream (`FLEETGATE_QOS` for the default prefix) on its topic's subject under `<prefix>.q`, signed like
every backbone message, with `Nats-Msg-Id` set to the message's backbone id (signed too) so that a
retry, or a replay within the stream's duplicate window, is stored once. The broker's PUBACK (PUBREC)
for it waits (gateway/broker/receipts.py) until JetStream acknowledged the store (PubAck): a retry every
`RETRY_S` for as long as it takes (said once a minute past `cluster.jetstream_store_timeout`, counted
as `store_waiting`), because closing the client's connection would cut its control channel too. Only
a message no retry can store (larger than NATS's max_payload) is reported failed (`not_stored`, logged
once a minute): the broker refuses it to a 5.0 client with 0x97 and closes a 3.1.1 client's connection
unacknowledged (Broker.stored). Confirmations reach the broker in
batches (one call per event-loop iteration).

In: for every NATS subject filter this node's subscriptions need, a durable push consumer named from
the node and the filter (`fg_<node>_<hash>`, one filter subject each: nats-server 2.9), deliver-new,
explicit acks. A message is acknowledged to JetStream after the broker routed it to the local sessions
(the same point at which a local QoS 1 message is the gateway's responsibility: in the sessions'
queues, persisted for persistent sessions); a redelivery of a message already routed is acknowledged
and not routed again (ids remembered per node). A node that restarts binds its consumers again (its
persistent sessions resubscribe) and receives what arrived meanwhile; consumers of a node gone for
good are deleted by JetStream after `cluster.jetstream_consumer_idle` seconds without a subscriber.

Persistent sessions: per subscribed subject a consumer of their own (`fg_s-<client id>_<hash>`),
bound by the node that holds the session, delivering to that session only (`Broker.deliver_stored`)
and acknowledged to JetStream when the session's delivery ended (PUBACK; at QoS 2 the session's
record naming its PUBREC, below; or dropped by the broker), not when it was queued: the node's
queue is its own SQLite file and dies with it. So a session resumed on another node binds the same
consumers and gets what it had not acknowledged. The
node's consumers and local routing skip these sessions for QoS 1/2 (`Broker.deliver_durably`), so
each message reaches them from one place; message ids are remembered per session, so a redelivery
of a message still being delivered is not delivered twice. While a session's client is away from
this node its consumers are parked (unbound, kept: the messages wait in JetStream for whichever node
it comes back to), and they live as long as the session could (inactive threshold from its expiry).

QoS 2 to a persistent session, exactly once across a node's death: the message goes out under a
packet id taken from its stream sequence (`qos2_packet_id`), the same on every node, so a node that
resumes the session resends it under the id the client holds; when the client's PUBREC comes, the
session's cluster record names the release (cluster_session_records.py) before the PUBREL goes and
before JetStream forgets the message, and a node resuming the session from that record sends the
PUBREL and acknowledges any redelivery of the message without delivering it (`released`).

Replay protection for stored messages: the MAC is checked as for core messages, but freshness is
measured against the time JetStream stored the message (from the delivery's ack subject), not against
now: a message redelivered minutes later is legitimate; one signed more than FRESH_S before it was
stored is a replay and refused, and a replay within FRESH_S carries the same signed `Nats-Msg-Id` and
is dropped by the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.app import backbone_wire as core
from gateway.broker.core import RemoteMessage, StoredMessage

log = logging.getLogger("fleetgate.cluster")

RETRY_S = 0.5  # between attempts to store one message
ATTEMPT_S = 2.0  # one attempt's wait for the PubAck
DUPLICATE_WINDOW_S = 120.0  # the stream's Nats-Msg-Id memory: longer than FRESH_S
REBIND_S = 5.0  # how often node consumers that could not be bound are tried again
PRESENCE_S = 0.5  # how often sessions that came or left are looked for (their consumers bound, parked)
SESSION_IDS = 4096  # message ids remembered per persistent session (redeliveries: routed once)
# A session's new consumer starts this long before its subscription: the stream's clock is the NATS
# server's, and a message stored between the SUBACK and the consumer must not fall between the two.
START_MARGIN_S = 0.25
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class DurableSettings:
    replicas: int = 3
    max_age: float = 86_400.0  # seconds a stored message is kept at most
    max_bytes: int = 1 << 30  # the stream's size bound (oldest dropped first)
    store_timeout: float = (
        10.0  # a PUBACK waiting this long for JetStream is logged (the store is kept trying)
    )
    ack_wait: float = 10.0  # a delivery not acknowledged by its node within this is redelivered
    consumer_idle: float = 3600.0  # a consumer nobody has bound for this long is deleted


def _never_storable(exc: Exception) -> bool:
    """A store that no retry can make: the message is larger than NATS's max_payload."""
    from nats.errors import MaxPayloadError

    return isinstance(exc, MaxPayloadError)


def durable_prefix(prefix: str) -> str:
    """Stored messages' subjects: beside the core subtrees (`<prefix>.m`, `<prefix>.d`), never in them."""
    return f"{prefix}.q"


def stream_name(prefix: str) -> str:
    return _UNSAFE.sub("_", prefix).upper() + "_QOS"


def consumer_name(owner: str, subject: str) -> str:
    """A durable name for `owner`'s consumer of `subject`: readable, and unique by its hashes."""
    digest = hashlib.sha256(f"{owner}\n{subject}".encode()).hexdigest()[:20]
    return f"fg_{_UNSAFE.sub('_', owner)[:40]}_{digest}"


def qos2_packet_id(msg: Any) -> int:
    """The packet id a stored message goes out under at QoS 2, on whichever node delivers it: from
    its sequence in the stream, so that after a node's death the next node resends it under the id
    the client may already hold (and the client delivers it once)."""
    try:
        return int((msg.metadata.sequence.stream - 1) % 65535 + 1)
    except (AttributeError, TypeError):
        return 0  # not a JetStream delivery: any free id


class DurableLane:
    def __init__(
        self,
        node: str,
        key: bytes,
        prefix: str,
        settings: DurableSettings,
        counters: core.BackboneCounters,
        stored: Callable[[list[int], list[int], set[int]], None],
        route: Callable[[list[RemoteMessage], Container[str]], None],
        deliver: Callable[[str, list[StoredMessage]], None],
        presence: Callable[[str], tuple[bool, float]] = lambda client_id: (True, 0.0),
        released: Callable[[str], Collection[str]] = lambda client_id: (),
    ) -> None:
        self._nc: Any = None
        self._js: Any = None
        self._ready = asyncio.Event()  # set once the stream is there
        self.node = node
        self._key = key
        self.prefix = durable_prefix(prefix)
        self.stream = stream_name(prefix)
        self.settings = settings
        self.counters = counters
        self._stored = stored
        self._route_batch = route
        self._deliver = deliver
        # Persistent sessions' own consumers: (client id, subject) → subscription; the clients that
        # have one (skipped by the node's consumers); receipt → the JetStream message to ack once the
        # session's delivery ended; what arrived for each session in this loop iteration.
        self._session_subs: dict[tuple[str, str], Any] = {}
        self._session_wanted: Counter[tuple[str, str]] = Counter()
        self._wanted_since: dict[tuple[str, str], float] = {}  # when a session subscribed (wall clock)
        # Clients whose persistent sessions take client QoS 1/2 messages only from their own consumers
        # (local routing and the node's consumers skip them), from the moment they subscribe: a
        # resumed session's consumers exist and hold what arrives before they are bound here, and a
        # new one's consumer starts at the subscription (`_bind`). The number of subjects each.
        self.durable: Counter[str] = Counter()
        self.own: Counter[str] = Counter()  # clients with consumers bound here once (bound or parked)
        self._receipts: dict[int, Any] = {}
        self._session_ids: dict[str, OrderedDict[str, int]] = {}
        self._next_receipt = 1
        self._doomed: set[tuple[str, str]] = set()  # session consumers to delete, not just unbind
        self._claimed: set[tuple[str, str]] = set()  # bound once here: bound now, or parked
        self._presence = presence  # client id → (connected here, session expiry interval)
        self._released = released  # client id → backbone ids its session released (QoS 2, PUBREC)
        self._for_sessions: dict[str, list[StoredMessage]] = {}
        self._confirmed: list[int] = []
        self._failed: list[int] = []
        self._duplicates: set[int] = set()  # confirmed receipts whose message the stream had already
        self._in: list[RemoteMessage] = []
        self._to_ack: list[Any] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._subs: dict[str, Any] = {}
        self._wanted: set[str] = set()
        self._keeping = asyncio.Lock()
        self._logged: dict[str, float] = {}  # reason -> when it was last logged (once a minute each)
        self._refusal_logged = -60.0
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, nc: Any) -> None:
        """Create the stream, or bring an existing one to the configured limits. Stores asked for
        before then wait for it (within their timeout)."""
        from nats.js import api

        self._nc = nc
        self._js = nc.jetstream()
        s = self.settings
        config = api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
            max_age=s.max_age,
            max_bytes=s.max_bytes,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=min(DUPLICATE_WINDOW_S, s.max_age),
        )
        said = -60.0
        while True:
            try:
                try:
                    await self._js.add_stream(config)
                except Exception as exc:
                    if "already in use" not in str(exc) and "exist" not in str(exc):
                        raise
                    await self._js.update_stream(config)
                break
            except Exception as exc:
                if time.monotonic() - said >= 60:  # once a minute, not once a try
                    said = time.monotonic()
                    log.warning(
                        "cluster backbone: JetStream stream %s cannot be made (%s); QoS 1/2 publishers "
                        "get no PUBACK until it is. A NATS cluster with fewer than %d JetStream servers "
                        "needs cluster.jetstream_replicas lowered to what it has; retrying every second",
                        self.stream,
                        exc,
                        s.replicas,
                    )
                await asyncio.sleep(1.0)
        self._ready.set()
        log.info(
            "cluster backbone: QoS 1/2 through JetStream stream %s (replicas %d)", self.stream, s.replicas
        )
        await self.keep(self._wanted)
        await self._keep_sessions()
        rebind_at = time.monotonic() + REBIND_S
        while True:  # sessions that came or left; binds refused (a consumer bound elsewhere) again
            await asyncio.sleep(PRESENCE_S)
            try:
                if time.monotonic() >= rebind_at and any(s not in self._subs for s in self._mine()):
                    rebind_at = time.monotonic() + REBIND_S
                    await self.keep(self._wanted)
                if self._sessions_unsettled():
                    await self._keep_sessions()
            except Exception as exc:  # never the end of the backbone: tried again next time
                log.warning("cluster backbone: binding JetStream consumers failed: %s", exc)

    # --- out ----------------------------------------------------------------------------------

    def publish(
        self,
        topic_subject: str,
        payload: bytes,
        headers: dict[str, str],
        receipt: int | None,
        after: Awaitable[None] | None = None,
    ) -> None:
        """Store a signed message, once `after` is done if given; `receipt` (a client's PUBLISH) is
        confirmed (saying whether the stream had it already) or failed to the broker."""
        task = asyncio.get_running_loop().create_task(
            self._store(topic_subject, payload, headers, receipt, after)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        receipt: int | None,
        after: Awaitable[None] | None,
    ) -> None:
        if after is not None:
            await after  # the session record naming it (bounded: cluster_session_records.py)
        deadline = time.monotonic() + self.settings.store_timeout
        while True:
            try:
                if not self._ready.is_set():
                    await asyncio.wait_for(self._ready.wait(), max(0.05, deadline - time.monotonic()))
                js = self._js
                wait = min(ATTEMPT_S, max(0.05, deadline - time.monotonic()))
                attempt = asyncio.ensure_future(
                    js.publish(subject, payload, timeout=wait, headers=dict(headers))
                )
                # Not wait_for: a publish caught in nats-py's reconnection may not end when cancelled,
                # and this loop must keep its deadline whatever the client library does.
                await asyncio.wait((attempt,), timeout=wait + 0.1)
                if not attempt.done():
                    attempt.cancel()
                    raise TimeoutError("no PubAck")
                ack = attempt.result()
                self.counters.sent += 1
                if ack.duplicate:
                    self.counters.store_retries_deduplicated += 1
                self._settle(receipt, True, ack.duplicate)
                return
            except Exception as exc:
                if _never_storable(exc):  # more than NATS's max_payload: no retry will ever store it
                    self._give_up(subject, exc)
                    self._settle(receipt, False)
                    return
                # JetStream away (a majority of servers down, a leader election): keep trying, never
                # give up. The client's PUBACK waits and its in-flight window fills, so it stops
                # publishing QoS 1/2, but its connection stays and with it its control channel:
                # nothing but an explicit revoke cuts that. Past the timeout it is said, once a minute.
                if time.monotonic() >= deadline:
                    self._still_waiting(subject, exc)
                    deadline = time.monotonic() + self.settings.store_timeout
                self.counters.store_retries += 1
                await asyncio.sleep(RETRY_S)

    def _give_up(self, subject: str, exc: Exception) -> None:
        self._count_and_warn(
            "not_stored",
            "cluster backbone: a message on %s can never be stored in JetStream (%s); its client "
            "was refused (5.0: 0x97) or, on 3.1.1, disconnected; keep limits.max_packet_size under "
            "NATS's max_payload. Counted in "
            'fleetgate_backbone_dropped_total{reason="not_stored"}, logged once a minute',
            subject,
            str(exc) or type(exc).__name__,
        )

    def _still_waiting(self, subject: str, exc: Exception) -> None:
        self._count_and_warn(
            "store_waiting",
            "cluster backbone: JetStream has not stored a message on %s for %.0f s (%s); its "
            "client's PUBACK waits and it is kept trying; QoS 1/2 publishers pause until JetStream "
            "answers, their connections stay; logged once a minute",
            subject,
            self.settings.store_timeout,
            str(exc) or type(exc).__name__,
        )

    def _count_and_warn(self, reason: str, message: str, *args: object) -> None:
        """Count under fleetgate_backbone_dropped_total{reason}; say it at most once a minute."""
        self.counters.dropped[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, -math.inf) >= 60:
            self._logged[reason] = now
            log.warning(message, *args)

    def _settle(self, receipt: int | None, ok: bool, duplicate: bool = False) -> None:
        if receipt is None:
            return
        if not self._confirmed and not self._failed:
            asyncio.get_running_loop().call_soon(self._report)
        (self._confirmed if ok else self._failed).append(receipt)
        if duplicate:
            self._duplicates.add(receipt)

    def _report(self) -> None:
        confirmed, failed, duplicates = self._confirmed, self._failed, self._duplicates
        self._confirmed, self._failed, self._duplicates = [], [], set()
        if confirmed or failed:
            self._stored(confirmed, failed, duplicates)

    # --- in -----------------------------------------------------------------------------------

    async def keep(self, wanted: set[str]) -> None:
        """Hold one consumer per NATS subject filter in `wanted` (core subject filters, mapped here)."""
        self._wanted = set(wanted)
        if not self._ready.is_set():
            return  # start() binds them
        async with self._keeping:
            await self._keep()

    def _mine(self) -> set[str]:
        return {self._durable(subject) for subject in self._wanted}

    async def _keep(self) -> None:
        wanted = self._wanted
        mine = {self._durable(subject): subject for subject in wanted}
        for subject in [s for s in self._subs if s not in mine]:
            sub = self._subs.pop(subject)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, consumer_name(self.node, subject))
        for subject in [s for s in mine if s not in self._subs]:
            try:
                self._subs[subject] = await self._bind(subject, consumer_name(self.node, subject))
            except Exception as exc:
                log.warning("cluster backbone: consuming %s from JetStream failed: %s", subject, exc)

    def _durable(self, core_subject: str) -> str:
        return self.prefix + core_subject[len(self.prefix) - 2 :]  # `<prefix>.m…` → `<prefix>.q.m…`

    async def _bind(
        self,
        subject: str,
        durable: str,
        cb: Callable[[Any], Awaitable[None]] | None = None,
        idle: float | None = None,
        since: float | None = None,
    ) -> Any:
        """Bind the durable consumer, made if it does not exist yet: from new messages on, or with
        `since` (a session's subscription, wall clock) from what was stored from then on."""
        from nats.js import api

        s = self.settings
        start = None
        if since is not None:
            start = datetime.fromtimestamp(since - START_MARGIN_S, UTC)
        config = api.ConsumerConfig(
            durable_name=durable,
            deliver_policy=api.DeliverPolicy.NEW if start is None else api.DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            max_ack_pending=20_000,
            inactive_threshold=s.consumer_idle if idle is None else idle,
        )
        return await self._js.subscribe(
            subject,
            durable=durable,
            stream=self.stream,
            cb=cb or self._on_message,
            manual_ack=True,
            config=config,
            pending_msgs_limit=100_000,
        )

    def verified(self, msg: Any) -> tuple[dict[str, str], bytes] | None:
        """A stored message's fields (as headers) and payload if a node signed it and it is fresh
        against the time JetStream stored it; None when refused (counted, said once a minute,
        acknowledged: never redelivered)."""
        try:
            stored_at = msg.metadata.timestamp.timestamp()
        except Exception:
            stored_at = 0.0  # not a JetStream delivery: refused as stale below
        opened = core.open_message(self._key, msg.subject, msg.headers, msg.data, stored_at, stored=True)
        if isinstance(opened, str):
            self._refuse(msg, opened)
            return None
        return opened

    async def make_pull_consumer(self, subject: str, durable: str, idle: float) -> str:
        """Make (or find) a durable pull consumer of `subject`, from new messages on, deleted by
        JetStream once nobody has pulled from it for `idle` seconds; the subject its messages are
        asked for on (`$JS.API.CONSUMER.MSG.NEXT…`)."""
        from nats.js import api

        s = self.settings
        config = api.ConsumerConfig(
            durable_name=durable,
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            max_ack_pending=20_000,
            inactive_threshold=idle,
            filter_subject=subject,
        )
        try:
            await self._js.add_consumer(self.stream, config=config)
        except Exception:
            await self._js.consumer_info(self.stream, durable)  # made by another node meanwhile
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable}"

    @property
    def nc(self) -> Any:
        return self._nc

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _on_message(self, msg: Any) -> None:
        opened = self.verified(msg)
        if opened is None:
            return
        headers, payload = opened
        msg_id = headers.get(core.H_ID)
        if headers.get(core.H_NODE) == self.node or msg_id is None or msg_id in self._seen:
            if msg_id in self._seen:
                self.counters.duplicates += 1
            self.ack_later(msg)  # ours, or routed already: done with it
            return
        try:
            remote = core.message_from(msg.subject, payload, headers, self.prefix)
        except (ValueError, KeyError, TypeError) as exc:
            self.counters.dropped["malformed"] += 1
            log.warning("cluster backbone: dropped a stored message on %s: %s", msg.subject, exc)
            self.ack_later(msg)
            return
        self._seen[msg_id] = None
        if len(self._seen) > core.SEEN_IDS:
            self._seen.popitem(last=False)
        self.counters.received += 1
        self._in.append(remote)
        self.ack_later(msg)

    def _refuse(self, msg: Any, why: str) -> None:
        self.counters.dropped[why] += 1
        self.ack_later(msg)  # never routed, never redelivered
        now = time.monotonic()
        if now - self._refusal_logged >= 60:
            self._refusal_logged = now
            log.warning(
                "cluster backbone: refused a stored message on %s (%s); counted in "
                "fleetgate_backbone_dropped_total, logged once a minute",
                msg.subject,
                why,
            )

    def ack_later(self, msg: Any) -> None:
        """Acknowledged to JetStream once this iteration's batch was routed (or at once if none)."""
        if not self._to_ack:
            asyncio.get_running_loop().call_soon(self._route_and_ack)
        self._to_ack.append(msg)

    def _route_and_ack(self) -> None:
        batch, self._in = self._in, []
        acks, self._to_ack = self._to_ack, []
        if batch:
            # Synchronous: in the sessions' queues (and store) when it returns.
            self._route_batch(batch, self.durable)
        for client_id, stored in self._for_sessions.items():
            self._deliver(client_id, stored)  # their receipts come back through delivered()
        self._for_sessions = {}
        task = asyncio.get_running_loop().create_task(self._ack(acks))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _ack(self, msgs: list[Any]) -> None:
        nc = self._nc
        for msg in msgs:
            with contextlib.suppress(Exception):
                await nc.publish(msg.reply, b"+ACK")

    # --- persistent sessions: consumers of their own ---------------------------------------------

    def session_subscription(
        self, added: bool, client_id: str, subjects: tuple[str, ...], unsubscribed: bool = True
    ) -> None:
        """A persistent session's subscription came or went (its filter's core subjects).
        `unsubscribed`: the client unsubscribed, so its consumers are deleted; otherwise (the session
        expired, was discarded or taken over by another node) they are only unbound here, and
        JetStream deletes them after `consumer_idle` unless another node binds them meanwhile."""
        if added:
            # A session resumed here from its cluster record comes with the QoS 2 messages it
            # released on its old node (their placeholders are in place before its subscriptions):
            # remembered as delivered, so that a redelivery after their PUBCOMP is not delivered.
            ids = self._session_ids.setdefault(client_id, OrderedDict())
            for msg_id in self._released(client_id):
                ids.setdefault(msg_id, 0)  # receipt 0: none is ever issued, so it acks on sight
        for core_subject in subjects:
            key = (client_id, self._durable(core_subject))
            wanted = self._session_wanted[key]
            if added:
                self._doomed.discard(key)  # subscribed again (a resumed subscription replaced): kept
                if not wanted:
                    self._wanted_since[key] = time.time()
                    self.durable[client_id] += 1
                self._session_wanted[key] = wanted + 1
                continue
            if wanted > 1:
                self._session_wanted[key] = wanted - 1
                continue
            self._session_wanted.pop(key, None)
            self._wanted_since.pop(key, None)
            if wanted == 1:
                self.durable[client_id] -= 1
                if self.durable[client_id] <= 0:
                    del self.durable[client_id]
                if unsubscribed:
                    self._doomed.add(key)
        if self._ready.is_set():
            task = asyncio.get_running_loop().create_task(self._keep_sessions())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _keep_sessions(self) -> None:
        """Bind the consumers of sessions connected here; park (unbind, keep) those of sessions
        offline here, so that their messages wait in JetStream for whichever node the client comes
        back to; unbind (or delete, after an UNSUBSCRIBE) those no longer wanted."""
        async with self._keeping:
            wanted = dict(self._session_wanted)
            here = self._presence
            for key in [k for k in self._claimed if k not in wanted]:
                client_id, subject = key
                self._claimed.discard(key)
                self.own[client_id] -= 1
                if self.own[client_id] <= 0:
                    del self.own[client_id]
                    for receipt in self._session_ids.pop(client_id, {}).values():
                        self._receipts.pop(receipt, None)  # not acked: JetStream redelivers it
                sub = self._session_subs.pop(key, None)
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                if key in self._doomed:
                    self._doomed.discard(key)
                    with contextlib.suppress(Exception):  # unsubscribed: the session wants it no more
                        await self._js.delete_consumer(self.stream, consumer_name(f"s-{client_id}", subject))
            for key in [k for k in self._session_subs if not here(k[0])[0]]:
                with contextlib.suppress(Exception):  # parked: its client left this node
                    await self._session_subs.pop(key).unsubscribe()
            for key in [k for k in wanted if k not in self._session_subs]:
                client_id, subject = key
                connected, expiry = here(client_id)
                if not connected:
                    continue
                try:
                    self._session_subs[key] = await self._bind(
                        subject,
                        consumer_name(f"s-{client_id}", subject),
                        self._session_cb(client_id),
                        idle=max(self.settings.consumer_idle, expiry + 60.0),
                        since=self._wanted_since.get(key),
                    )
                except Exception as exc:
                    log.warning(
                        "cluster backbone: the consumer of %s for session %r failed: %s",
                        subject,
                        client_id,
                        exc,
                    )
                    continue
                if key not in self._claimed:
                    self._claimed.add(key)
                    self.own[client_id] += 1

    def _sessions_unsettled(self) -> bool:
        """A session consumer to bind (its client is here) or to park (its client left)."""
        here = self._presence
        return any(here(c)[0] != ((c, s) in self._session_subs) for c, s in self._session_wanted)

    def _session_cb(self, client_id: str) -> Callable[[Any], Awaitable[None]]:
        async def on_message(msg: Any) -> None:
            self._on_session_message(client_id, msg)

        return on_message

    def _on_session_message(self, client_id: str, msg: Any) -> None:
        opened = self.verified(msg)
        if opened is None:
            return
        headers, payload = opened
        msg_id = headers.get(core.H_ID)
        if msg_id is None:
            self.ack_later(msg)
            return
        ids = self._session_ids.setdefault(client_id, OrderedDict())
        known = ids.get(msg_id)  # released on another node: seeded when the session subscribed here
        if known is not None:  # redelivered: the delivery in the session is still on its way, or done
            self.counters.duplicates += 1
            if known in self._receipts:
                self._receipts[known] = msg  # whichever delivery of it is acked acks it in JetStream
            else:
                self.ack_later(msg)
            return
        try:
            remote = core.message_from(msg.subject, payload, headers, self.prefix)
        except (ValueError, KeyError, TypeError):
            self.counters.dropped["malformed"] += 1
            self.ack_later(msg)
            return
        receipt = self._next_receipt
        self._next_receipt += 1
        self._receipts[receipt] = msg
        ids[msg_id] = receipt
        if len(ids) > SESSION_IDS:
            ids.popitem(last=False)
        self.counters.received += 1
        if not self._to_ack and not self._in and not self._for_sessions:
            asyncio.get_running_loop().call_soon(self._route_and_ack)
        self._for_sessions.setdefault(client_id, []).append((remote, receipt, msg_id, qos2_packet_id(msg)))

    def delivered(self, receipts: list[int]) -> None:
        """The broker's word (inside its call): these sessions' deliveries ended; ack them."""
        msgs = [m for m in (self._receipts.pop(r, None) for r in receipts) if m is not None]
        if msgs:
            task = asyncio.get_running_loop().create_task(self._ack(msgs))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def subjects(self) -> list[str]:
        return sorted(self._subs) + sorted(f"{c}:{s}" for c, s in self._session_subs)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for sub in list(self._subs.values()):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
