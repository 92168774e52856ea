"""Cluster-wide sessions, retained messages, shared subscriptions and detector state, wired together.

Only with `cluster.nats` (as the backbone): one NATS control connection (cluster_link.py) carrying
cluster_sessions.py, cluster_retained.py, cluster_session_records.py and cluster_shared.py.
docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.app.backbone import NatsBackbone
from gateway.app.cluster_link import ClusterLink
from gateway.app.cluster_retained import ClusterRetained
from gateway.app.cluster_session_records import ClusterSessionRecords
from gateway.app.cluster_sessions import ClusterSessions
from gateway.app.cluster_shared import ClusterShared
from gateway.detection.continuous import ContinuousEvaluator
from gateway.edge.driver import BrokerDriver


@dataclass
class ClusterPlaneCounters:
    """What /metrics reports of it (fleetgate_cluster_*; docs/operations.md)."""

    control_connected: bool
    control_refused: dict[str, int] = field(default_factory=dict)  # by reason: not signed, stale ...
    retained_following: bool = False
    retained_published: int = 0
    retained_applied: int = 0
    shared_received: int = 0
    shared_served_at_origin: int = 0
    sessions_following: bool = False
    sessions_published: int = 0
    sessions_applied: int = 0


class ClusterPlane:
    def __init__(
        self, backbone: NatsBackbone, driver: BrokerDriver, evaluator: ContinuousEvaluator, key: bytes
    ) -> None:
        prefix = backbone.prefix
        self.link = ClusterLink(backbone.servers, backbone.node, key, backbone.tls, backbone.credentials)
        self.sessions = ClusterSessions(self.link, driver, evaluator, prefix)
        self.retained = ClusterRetained(self.link, driver, prefix)
        self.records = ClusterSessionRecords(self.link, driver, prefix)
        self.shared = ClusterShared(
            self.link, driver, prefix, lambda: backbone.counters.connected, backbone.group_consumers
        )
        backbone.groups = self.shared.group_changed  # before backbone.attach(): its replay goes here too
        backbone.record_written = self.records.written

    def attach(self) -> None:
        self.sessions.attach()
        self.retained.attach()
        self.records.attach()
        self.shared.attach()

    def counters(self) -> ClusterPlaneCounters:
        return ClusterPlaneCounters(
            self.link.counters.connected,
            dict(self.link.counters.refused),
            self.retained.ready,
            self.retained.published,
            self.retained.stored,
            self.shared.received,
            self.shared.served_at_origin,
            self.records.ready,
            self.records.published,
            self.records.applied,
        )

    def observe_events(self, events: Iterable[object]) -> None:
        self.sessions.observe_events(events)

    async def run(self) -> None:
        await self.link.run()

    async def close(self) -> None:
        self.sessions.detach()
        self.records.detach()
        await self.link.close()
