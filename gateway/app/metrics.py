"""Prometheus metrics, collected at scrape time from the counters the broker and hub already keep.

Nothing on the hot path touches prometheus_client: the broker counts in plain ints and Counters,
and this collector turns them into metric families only when /metrics is read.
"""

from __future__ import annotations

import platform
import ssl
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.app.backbone import BackboneCounters
from gateway.app.cluster_plane import ClusterPlaneCounters
from gateway.broker import BrokerMetrics
from gateway.broker.histogram import Histogram
from gateway.context.partner_views import ViewCounters
from gateway.detection.continuous import EvaluatorStats
from gateway.edge.admission import ConnectionGate
from gateway.edge.hub import HubCounters

PREFIX = "fleetgate"


def _package_version() -> str:
    try:
        return version("fleetgate")
    except PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class GatewayCollector(Collector):
    def __init__(
        self,
        broker_metrics: Callable[[], BrokerMetrics],
        hub: Callable[[], HubCounters],
        connections: Callable[[], int],
        detectors: Callable[[], EvaluatorStats] | None = None,
        views: Callable[[], ViewCounters] | None = None,
        gates: Callable[[], dict[str, ConnectionGate]] | None = None,
        open_files: int | None = None,
        audit: Callable[[], tuple[int, int, int]] | None = None,
        containment: Callable[[], dict[str, Histogram]] | None = None,
        units: Callable[[], dict[str, int]] | None = None,
        node: str | None = None,
        backbone: Callable[[], BackboneCounters] | None = None,
        cluster_plane: Callable[[], ClusterPlaneCounters] | None = None,
        gc_pauses: Callable[[], dict[str, Histogram]] | None = None,
        gc_frozen: Callable[[], int] | None = None,
    ) -> None:
        self._gc_pauses = gc_pauses  # the cycle collector's pauses, by generation (app/gc_pauses.py)
        self._gc_frozen = gc_frozen
        self._cluster_plane = cluster_plane  # sessions, retained, share groups across nodes
        self._node = node  # this node's name in a cluster (docs/cluster.md)
        self._backbone = backbone  # the NATS data plane's counters (cluster.nats set)
        self._containment = containment
        self._units = units
        self._audit = audit  # (records appended by this process, their bytes, the head's seq)
        self._gates = gates
        self._open_files = open_files
        self._broker = broker_metrics
        self._hub = hub
        self._connections = connections
        self._detectors = detectors
        self._views = views

    def collect(self) -> Iterator[Any]:
        m, h = self._broker(), self._hub()
        yield _build_info()
        if self._node is not None:
            info = GaugeMetricFamily(
                f"{PREFIX}_node_info", "This gateway node's name in its cluster.", labels=["node"]
            )
            info.add_metric([self._node], 1.0)
            yield info
        if self._backbone is not None:
            yield from _backbone_families(self._backbone())
        if self._cluster_plane is not None:
            yield from _cluster_plane_families(self._cluster_plane())
        yield _histogram(
            "tls_handshake_seconds", "Completed TLS handshakes, by duration.", h.handshake_seconds
        )
        yield _histogram(
            "connect_seconds",
            "From the end of the TLS handshake to the accepting CONNACK.",
            m.connect_seconds,
        )
        yield _histogram(
            "broker_receive_seconds",
            "One broker call for the reads of one loop iteration: decode, decide, route, encode, commit.",
            h.receive_seconds,
        )
        if self._containment is not None:
            yield _labelled_histograms(
                "containment_seconds",
                "Time to contain: from an operation's start until live sessions follow it, by action.",
                "action",
                self._containment(),
            )
        if self._gc_pauses is not None:
            yield _labelled_histograms(
                "gc_pause_seconds",
                "Pauses of Python's cycle collector (the whole event loop waits), by generation.",
                "generation",
                self._gc_pauses(),
            )
        if self._gc_frozen is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_gc_frozen_objects",
                "Start-up objects the cycle collector's full collections leave out (frozen before serving).",
                value=self._gc_frozen(),
            )
        if self._units is not None:
            units = GaugeMetricFamily(
                f"{PREFIX}_units", "Units by state (registry and posture).", labels=["state"]
            )
            for state, count in sorted(self._units().items()):
                units.add_metric([state], count)
            yield units
        yield _gauge("connections", "Open client connections (after TLS).", self._connections())
        yield _gauge("sessions_connected", "Live MQTT sessions.", m.connected)
        yield _gauge("sessions", "MQTT sessions held, connected or not.", m.sessions)
        yield _gauge("retained_messages", "Retained messages held.", m.retained_messages)
        yield _counter("handshakes_ok", "TLS handshakes completed.", h.handshakes_ok)
        yield _labelled(
            "handshakes_failed", "TLS handshakes failed, by reason.", "reason", dict(h.handshakes_failed)
        )
        yield _labelled(
            "certificates_refused",
            "Verified certificates refused at admission, by reason.",
            "reason",
            dict(h.certificates_refused),
        )
        yield _counter("connects_accepted", "CONNECTs accepted.", m.connects_accepted)
        yield _labelled(
            "connects_refused", "CONNECTs refused, by reason.", "reason", dict(m.connects_refused)
        )
        yield _counter("publishes_in", "PUBLISH packets received.", m.publishes_in)
        yield _counter("publishes_out", "PUBLISH packets sent.", m.publishes_out)
        yield _counter("bytes_in", "MQTT bytes received.", m.bytes_in)
        yield _counter("bytes_out", "MQTT bytes sent.", m.bytes_out)
        yield _labelled("drops", "Messages dropped, by reason.", "reason", dict(m.drops))
        yield _gauge("queued", "Deliveries queued over all sessions (memory and store).", m.queued)
        yield _gauge("publishes_held_now", "Client PUBLISHes held unacknowledged now (flow control).", m.held)
        yield _counter(
            "publishes_held",
            "Client PUBLISHes whose acknowledgement was withheld until a slow subscriber caught up.",
            m.publishes_held,
        )
        yield _gauge(
            "sessions_holding",
            "Subscribers far enough behind to hold their publishers back now.",
            m.sessions_holding,
        )
        yield _counter(
            "reads_paused",
            "Connections paused for sending past the Receive Maximum while held.",
            m.reads_paused,
        )
        yield _counter(
            "subscribers_stalled",
            "Subscribers that held publishers back and acknowledged nothing for subscriber_stall_timeout.",
            m.subscribers_stalled,
        )
        yield _labelled(
            "protocol_errors",
            "Connections closed for protocol errors, by reason.",
            "reason",
            dict(m.protocol_errors),
        )
        decisions = CounterMetricFamily(
            f"{PREFIX}_decisions", "Policy decisions.", labels=["kind", "verdict", "reason"]
        )
        for (kind, verdict, reason), value in sorted(m.decisions.items()):
            decisions.add_metric([kind, verdict, reason], value)
        yield decisions
        yield _counter("takeovers", "Sessions taken over by a second connection.", m.takeovers)
        yield _counter(
            "sessions_taken_elsewhere",
            "Live connections here ended because their client id connected on another node.",
            m.sessions_taken_elsewhere,
        )
        yield _counter(
            "sessions_resumed_elsewhere",
            "Persistent sessions another node held, resumed here from the cluster's session record.",
            m.sessions_resumed_elsewhere,
        )
        yield _counter(
            "certificates_expired",
            "Live connections ended because their certificate expired.",
            m.certificates_expired,
        )
        yield _counter("slow_consumers_cut", "Clients cut off for not reading.", h.slow_consumers_cut)
        yield _counter("internal_errors", "Connections closed by an internal error.", m.internal_errors)
        yield _counter("store_errors", "Failed state commits.", m.store_errors)
        yield _labelled(
            "accept_failed",
            "Failed accept() calls, by listener and errno.",
            "listener_errno",
            dict(h.accept_failed),
        )
        yield _labelled(
            "proxy_headers_refused",
            "Load balancers' connections closed for want of a valid PROXY v2 header, by reason.",
            "reason",
            dict(h.proxy_refused),
        )
        yield _counter(
            "proxy_health_checks",
            "Load balancers' health checks (a PROXY v2 LOCAL header, or no byte at all), closed at once.",
            h.proxy_health_checks,
        )
        if self._gates is not None:
            yield from _gate_metrics(self._gates())
        if self._audit is not None:
            records, size, head = self._audit()
            yield _counter("audit_records", "Audit records appended by this gateway process.", records)
            yield _counter(
                "audit_bytes", "Bytes of the audit records this process appended (alert on its rate).", size
            )
            yield _gauge("audit_head_seq", "Sequence number of the newest audit record (any writer).", head)
        if self._open_files is not None:
            yield _gauge(
                "open_files_limit",
                "The soft RLIMIT_NOFILE in force (raised to the hard limit at start).",
                self._open_files,
            )
        if self._detectors is not None:
            d = self._detectors()
            yield _labelled(
                "detector_firings", "Detector firings, by detector.", "detector", dict(d.by_detector)
            )
            yield _counter("detector_responses", "Responses carried out for detector firings.", d.responses)
            yield _counter(
                "detector_suppressed", "Firings within a cool-down (no new response).", d.suppressed
            )
            yield _gauge(
                "detector_subjects",
                "Identities and addresses the detectors are watching.",
                d.subjects + d.addresses,
            )
        if self._views is not None:
            v = self._views()
            yield _labelled(
                "view_messages", "View messages published to partners, by tier.", "tier", v.published
            )
            yield _labelled(
                "view_rate_limited",
                "View messages dropped at a tier's rate limit, by tier.",
                "tier",
                v.rate_limited,
            )
            yield _labelled(
                "view_withheld", "Projections withheld from a tier, by reason.", "reason", v.withheld
            )
            yield _labelled(
                "view_malformed",
                "Unit messages not forwarded to views: malformed, by reason.",
                "reason",
                v.malformed,
            )


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        f"{PREFIX}_{name}", doc, buckets=histogram.cumulative(), sum_value=histogram.total
    )


def _labelled_histograms(
    name: str, doc: str, label: str, histograms: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, histogram in sorted(histograms.items()):
        family.add_metric([key], histogram.cumulative(), histogram.total)
    return family


def _build_info() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        f"{PREFIX}_build_info", "The running gateway: version, Python and OpenSSL.", labels=BUILD_LABELS
    )
    family.add_metric(list(BUILD_INFO), 1)
    return family


BUILD_LABELS = ["version", "python", "openssl"]
BUILD_INFO = (_package_version(), platform.python_version(), ssl.OPENSSL_VERSION.split()[1])


def _gate_metrics(gates: dict[str, ConnectionGate]) -> Iterator[Any]:
    held = GaugeMetricFamily(
        f"{PREFIX}_listener_connections", "Connections a listener holds now.", labels=["listener"]
    )
    cap = GaugeMetricFamily(
        f"{PREFIX}_listener_capacity", "Connections a listener may hold at once.", labels=["listener"]
    )
    refused = CounterMetricFamily(
        f"{PREFIX}_connections_refused",
        "Connections refused at admission, before TLS, by listener and reason.",
        labels=["listener", "reason"],
    )
    for name, gate in sorted(gates.items()):
        held.add_metric([name], gate.open)
        cap.add_metric([name], gate.max_connections)
        for reason, count in sorted(gate.counters.refused.items()):
            refused.add_metric([name, reason], count)
    yield held
    yield cap
    yield refused


def metrics_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, _resident_memory_bytes, _open_fds …
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _backbone_families(b: BackboneCounters) -> Iterator[Any]:
    yield _gauge(
        "backbone_connected", "1 while this node is connected to NATS (cluster.nats).", float(b.connected)
    )
    yield _counter("backbone_sent", "Accepted messages this node published on NATS.", b.sent)
    yield _counter(
        "backbone_received", "Messages from other nodes received on NATS and routed here.", b.received
    )
    yield _counter(
        "backbone_duplicates", "Second copies from overlapping NATS subscriptions, routed once.", b.duplicates
    )
    yield _labelled(
        "backbone_dropped", "Messages that did not cross NATS, by reason.", "reason", dict(b.dropped)
    )
    yield _gauge("backbone_subjects", "NATS subject filters this node subscribes to.", b.subjects)
    yield _counter(
        "backbone_store_retries",
        "JetStream stores of QoS 1/2 messages tried again (the PubAck was late or lost).",
        b.store_retries,
    )


def _cluster_plane_families(c: ClusterPlaneCounters) -> Iterator[Any]:
    yield _gauge(
        "cluster_control_connected",
        "1 while this node's control connection to NATS is up (cluster.nats).",
        float(c.control_connected),
    )
    yield _labelled(
        "cluster_control_refused",
        "Control messages, share-group deliveries and stored retained messages refused, by reason.",
        "reason",
        dict(c.control_refused),
    )
    yield _gauge(
        "cluster_retained_following",
        "1 while this node follows the cluster's retained-message stream (JetStream).",
        float(c.retained_following),
    )
    yield _counter(
        "cluster_retained_published",
        "Retained messages set or cleared here, stored in the stream.",
        c.retained_published,
    )
    yield _counter(
        "cluster_retained_applied",
        "Retained messages from the stream stored in this node.",
        c.retained_applied,
    )
    yield _gauge(
        "cluster_sessions_following",
        "1 while this node follows the cluster's session-record stream (JetStream).",
        float(c.sessions_following),
    )
    yield _counter(
        "cluster_sessions_published",
        "Persistent sessions' records written here to the stream.",
        c.sessions_published,
    )
    yield _counter(
        "cluster_sessions_applied",
        "Persistent sessions' records from the stream held in this node's copy.",
        c.sessions_applied,
    )
    yield _counter(
        "cluster_shared_received",
        "Messages NATS gave this node for one of its share groups.",
        c.shared_received,
    )
    yield _counter(
        "cluster_shared_served_at_origin",
        "Messages NATS gave this node for a share group that a member on their origin node had taken.",
        c.shared_served_at_origin,
    )
