"""A node's second NATS connection: the cluster's control messages and share-group deliveries.

The backbone (backbone.py) carries accepted messages on a connection made with no_echo. What this
connection carries needs the opposite: a share group's NATS queue group must be able to pick the
node that published the message (so the origin's own members take their turn), and a JetStream
consumer (the retained store, cluster_retained.py) must hand a node what it wrote itself. So it is a
connection of its own, with echo, used by:

- cluster_sessions.py: "client X connected here" announcements, "I took over X's connection"
  replies, and the last GPS fix of a unit that left a node (the impossible-travel detector);
- cluster_shared.py: NATS queue subscriptions, one per share group and subject;
- cluster_retained.py: the JetStream stream of retained messages.

Every control message is signed like a backbone message (backbone.sign: HMAC-SHA256 under the
cluster's backbone key over its subject, headers and payload) and carries its send time; `verified`
refuses what does not verify or is not fresh, exactly as the backbone does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.app.backbone import (
    H_MAC,
    H_NODE,
    H_TIME,
    authentic,
    connect_until_up,
    not_connected,
    open_message,
    reraise_if_stopping,
    sign,
)

log = logging.getLogger("fleetgate.cluster")

Handler = Callable[[Any], Awaitable[None]]  # a nats-py Msg


@dataclass
class LinkCounters:
    sent: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by reason
    connected: bool = False


class ClusterLink:
    def __init__(
        self,
        servers: list[str],
        node: str,
        key: bytes,
        tls: ssl.SSLContext | None = None,
        credentials: str = "",
    ) -> None:
        """`tls` and `credentials` (a `.creds` file): the backbone's, for the same NATS servers."""
        self.servers = servers
        self.tls = tls
        self.credentials = credentials
        self.node = node
        self._key = key
        self.counters = LinkCounters()
        self.nc: Any = None
        self._out: list[tuple[str, bytes, dict[str, str]]] = []
        self._out_ready = asyncio.Event()
        self._wanted: dict[tuple[str, str], Handler] = {}  # (subject, queue) → handler
        self._subs: dict[tuple[str, str], Any] = {}
        self._dirty = asyncio.Event()
        self._on_connect: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._refusal_logged = -60.0

    @property
    def connected(self) -> bool:
        return self.counters.connected

    def when_connected(self, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `start()` once connected (the retained store's stream and consumer)."""
        self._on_connect.append(start)

    # --- subscriptions ------------------------------------------------------------------------

    def want(self, subject: str, handler: Handler, queue: str = "") -> None:
        self._wanted[(subject, queue)] = handler
        self._dirty.set()

    def unwant(self, subject: str, queue: str = "") -> None:
        if self._wanted.pop((subject, queue), None) is not None:
            self._dirty.set()

    async def _keep_subscriptions(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            for key in [k for k in self._subs if k not in self._wanted]:
                with contextlib.suppress(Exception):
                    await self._subs.pop(key).unsubscribe()
            for key in [k for k in self._wanted if k not in self._subs]:
                subject, queue = key
                try:
                    self._subs[key] = await self.nc.subscribe(subject, queue=queue, cb=self._wanted[key])
                except Exception as exc:
                    log.warning("cluster link: subscribing to %s failed: %s", subject, exc)

    def queue_subjects(self) -> list[tuple[str, str]]:
        """(subject, queue) of the NATS subscriptions held now (tests, status)."""
        return sorted(self._subs)

    # --- out ----------------------------------------------------------------------------------

    def signed(self, subject: str, payload: bytes, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with this node's name, the time and the MAC (backbone.sign)."""
        headers = {**headers, H_NODE: self.node, H_TIME: str(int(time.time() * 1000))}
        headers[H_MAC] = sign(self._key, subject, headers, payload)
        return headers

    def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Sign and queue a control message (safe inside a broker call: nothing awaited here)."""
        headers = self.signed(subject, payload, headers)
        if self.nc is None:
            self.counters.refused["not_connected"] += 1
            return
        self._out.append((subject, payload, headers))
        self._out_ready.set()

    async def _send(self) -> None:
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            batch, self._out = self._out, []
            for subject, payload, headers in batch:
                try:
                    await self.nc.publish(subject, payload, headers=headers)
                    self.counters.sent += 1
                except Exception as exc:
                    log.warning("cluster link: publishing on %s failed: %s", subject, exc)

    # --- in -----------------------------------------------------------------------------------

    def verified(self, msg: Any, *, fresh: bool = True) -> dict[str, str] | None:
        """The headers of a control message a node of this cluster signed (and sent within the
        freshness window, unless `fresh` is False: a stored retained message is as old as it is);
        else None, counted and logged once a minute."""
        headers: dict[str, str] = msg.headers or {}
        refused = authentic(self._key, msg.subject, headers, msg.data, time.time())
        if refused is None or (refused == "stale" and not fresh):
            return headers
        self._refused(msg, refused)
        return None

    def opened(self, msg: Any) -> tuple[dict[str, str], bytes] | None:
        """A data message's fields (as headers) and payload, either form (backbone_wire.py), if a
        node of this cluster signed it within the freshness window; else None, counted and logged."""
        opened = open_message(self._key, msg.subject, msg.headers, msg.data, time.time())
        if isinstance(opened, str):
            self._refused(msg, opened)
            return None
        return opened

    def _refused(self, msg: Any, why: str) -> None:
        self.counters.refused[why] += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 60:
            self._refusal_logged = now
            log.warning("cluster link: refused a message on %s (%s); logged once a minute", msg.subject, why)

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        self.nc = await connect_until_up(
            self.servers,
            f"fleetgate-{self.node}-control",
            tls=self.tls,
            credentials=self.credentials,
            no_echo=False,  # share groups and the keyed streams need this node's own messages too
            disconnected=self._disconnected,
            reconnected=self._reconnected,
            error=self._error,
            unreachable=lambda exc: log.warning("cluster link: NATS %s; retrying", not_connected(exc)),
        )
        self.counters.connected = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_subscriptions()), loop.create_task(self._send())]
        self._tasks += [loop.create_task(start()) for start in self._on_connect]
        self._dirty.set()
        self._out_ready.set()
        await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _disconnected(self) -> None:
        self.counters.connected = False

    async def _reconnected(self) -> None:
        self.counters.connected = True

    async def _error(self, exc: Exception) -> None:
        reraise_if_stopping()
        if self.nc is not None:
            log.warning("cluster link: NATS error: %s", exc)
