"""The one object that drives the broker from outside a connection: broker + hub + the one clock.

Connections drive the broker through the hub (bytes in, actions out). Everything else that must
change live sessions — fleet operations, the registry follower, partner views, posture, policy
reloads — goes through a BrokerDriver: it reads the clock once, calls the broker entry point with
that `now`, and hands the returned actions to the hub. So "who applies the broker's actions" and
"who reads the clock" each have one answer, here.

`later(fn)` runs `fn` on the next event-loop iteration: observers called from inside
`Broker.receive` must not re-enter the broker, so they defer their own broker calls through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Container, Sequence
from datetime import UTC, datetime

from gateway.broker import Broker, BrokerMetrics, Close, SessionInfo
from gateway.broker.core import DiscardedSessions, RemoteMessage, StoredMessage
from gateway.edge.hub import ConnectionHub
from gateway.mqtt.packets import Properties, Publish
from gateway.mqtt.reason_codes import ReasonCode
from gateway.policy.peer import Peer
from pki.names import Identity


class Clock:
    """The process's clocks: epoch seconds for the broker and policy, aware datetimes for the
    registry and audit, a monotonic counter for durations. Tests pass a clock of their own."""

    def now(self) -> float:
        return time.time()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class BrokerDriver:
    def __init__(self, broker: Broker, hub: ConnectionHub, clock: Clock) -> None:
        self.broker = broker
        self.hub = hub
        self.clock = clock

    def publish_internal(self, publish: Publish, now: float | None = None) -> None:
        """A message from the gateway itself (mode commands, partner views)."""
        self.hub.apply(self.broker.publish_internal(publish, self.clock.now() if now is None else now))

    def route_remote(self, messages: Sequence[RemoteMessage]) -> None:
        """Messages other nodes accepted (the cluster's backbone), to this node's subscribers."""
        self.hub.apply_now(self.broker.route_remote(messages, self.clock.now()))

    # --- a cluster's other nodes (gateway/app/cluster_*.py, gateway/broker/elsewhere.py) ----------

    def connected_elsewhere(
        self, client_id: str, identity: Identity | None, announced: tuple[float, str], here: str
    ) -> Peer | None:
        """Another node accepted a CONNECT for `client_id`: this node's session of it ends (its live
        connection taken over if the announced one is later). The peer taken over, if any."""
        taken, actions = self.broker.connected_elsewhere(
            client_id, identity, announced, here, self.clock.now()
        )
        self.hub.apply(actions)
        return taken

    def taken_over_elsewhere(self, client_id: str, old_peer: Peer) -> None:
        self.broker.taken_over_elsewhere(client_id, old_peer, self.clock.now())

    def retained_elsewhere(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        properties: Properties,
        expires_at: float | None,
        origin: str,
    ) -> None:
        now = self.clock.now()
        self.hub.apply(
            self.broker.retained_elsewhere(topic, payload, qos, properties, expires_at, origin, now)
        )

    def route_to_group(self, message: RemoteMessage, group: tuple[str | None, str, str]) -> None:
        self.hub.apply(self.broker.route_to_group(message, group, self.clock.now()))

    def route_remote_except(self, messages: Sequence[RemoteMessage], skip: Container[str]) -> None:
        """As route_remote, but not to the sessions in `skip` (their own consumers deliver to them)."""
        self.hub.apply_now(self.broker.route_remote(messages, self.clock.now(), skip))

    def deliver_stored(self, client_id: str, messages: Sequence[StoredMessage]) -> None:
        """Messages from a persistent session's own durable consumer, to that session only."""
        self.hub.apply_now(self.broker.deliver_stored(client_id, messages, self.clock.now()))

    def releases_due(self, client_id: str, packet_ids: Sequence[int]) -> None:
        """The session's record naming these QoS 2 releases is stored (or the wait for it is over):
        send their PUBRELs."""
        self.hub.apply_now(self.broker.releases_due(client_id, packet_ids, self.clock.now()))

    def stored(
        self, confirmed: Sequence[int], failed: Sequence[int] = (), duplicates: Collection[int] = ()
    ) -> None:
        """The cluster's store took (or could not take) these receipts' messages: acknowledge them
        (or close their connections unacknowledged). `duplicates`: confirmed ones it had already."""
        self.hub.apply_now(self.broker.stored(confirmed, failed, self.clock.now(), duplicates))

    def reauthorize(self) -> None:
        """Re-decide every live session against the current policy and registry state."""
        self.hub.apply(self.broker.reauthorize(self.clock.now()))

    def disconnect_where(
        self, match: Callable[[Peer], bool], code: ReasonCode, why: str, now: float | None = None
    ) -> int:
        """Close the live sessions whose peer matches; returns how many connections were closed.
        `now` is the time of the operation that asks, when it has one."""
        actions = self.broker.disconnect_where(match, code, why, self.clock.now() if now is None else now)
        self.hub.apply(actions)
        return len({a.conn for a in actions if isinstance(a, Close)})

    def discard_offline(self, match: Callable[[Peer], bool], now: float | None = None) -> DiscardedSessions:
        """Forget the stored sessions (no live connection) whose peer matches."""
        purged = self.broker.discard_offline_sessions(match, self.clock.now() if now is None else now)
        self.hub.apply(purged.actions)
        return purged

    def sessions(self) -> list[SessionInfo]:
        return self.broker.sessions()

    @property
    def metrics(self) -> BrokerMetrics:
        return self.broker.metrics

    def later(self, fn: Callable[[], None]) -> bool:
        """Run fn on the next loop iteration (outside the broker call that is running now). False when
        no loop runs (a test driving the core by hand): the caller then runs fn when it chooses."""
        try:
            asyncio.get_running_loop().call_soon(fn)
        except RuntimeError:
            return False
        return True
