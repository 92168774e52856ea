"""Who may open a connection, consulted for every accepted TCP socket before a byte of TLS or HTTP.

Every listener (MQTT, HTTPS, the lab listener) has a ConnectionGate with three limits:

- a per-source connection *rate* (SourceAdmission: a token bucket per source, `rate` connections per
  second, `burst` at once). A TLS handshake is the most expensive thing a stranger can make the
  gateway do (an ECDHE + signature), so a source that connects faster than any truck is refused first;
- a cap on the connections one source *holds* at once (`max_per_source`), so that one host cannot
  sit on the listener's share with idle sockets;
- a cap on the connections the listener holds at once (`max_connections`), derived from the process's
  open-file budget (gateway/app/fd_budget.py) so that the HTTPS and lab listeners can never take the
  descriptors MQTT needs, whatever their clients do.

A "source" is an IPv4 address or an IPv6 /64: one IPv6 customer network is one source, however many
addresses it uses. Exempt sources (loopback by default; addresses or networks) skip both per-source
limits, never the listener's cap: a local TLS-terminating proxy or a benchmark puts every client
behind one address.

Memory is bounded: at most `max_sources` rate buckets are kept (least recently seen evicted first; an
evicted attacker only regains one burst), and the per-source holdings only count sources that hold
a connection now, so never more entries than `max_connections`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from gateway.config import LimitsConfig
from gateway.policy.rate import TokenBucket

__all__ = [
    "AdmissionCounters",
    "ConnectionGate",
    "GateCounters",
    "Slot",
    "SourceAdmission",
    "admission_from_limits",
    "listener_gates",
    "source_host",
    "source_key",
]

DEFAULT_EXEMPT = frozenset({"127.0.0.1", "::1"})
IPV6_SOURCE_PREFIX = 64

# Why a gate refused a connection (metric label and log word).
LISTENER_FULL = "listener_full"
SOURCE_FULL = "source_full"
RATE_LIMITED = "rate_limited"
CLOSED = "listener_closed"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def source_host(address: str) -> str:
    """The host part of `format_address` output: "1.2.3.4:5" → "1.2.3.4", "[::1]:5" → "::1"."""
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, sep, _port = address.rpartition(":")
    return host if sep else address


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # a zone id (fe80::1%eth0) is not the host
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=4096)
def source_key(address: str) -> str:
    """What per-source limits count: the IPv4 address, or the IPv6 /64 ("2001:db8:0:1::/64").

    A v4-mapped IPv6 address counts as its IPv4 address. Anything that is not an IP address
    (a Unix socket name) is its own source."""
    host = source_host(address)
    ip = _ip(host)
    if ip is None:
        return host
    if ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, IPV6_SOURCE_PREFIX)))
    return str(ip)


def parse_exempt(text: str | frozenset[str]) -> tuple[Network, ...]:
    """Space-separated addresses or networks ("127.0.0.1 ::1 10.8.0.0/16"). Raises ValueError."""
    items = text.split() if isinstance(text, str) else sorted(text)
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


class ExemptSources:
    """Which sources skip the per-source limits (membership cached per host: checked per accept)."""

    def __init__(self, exempt: frozenset[str]) -> None:
        self.entries = exempt
        self._networks = parse_exempt(exempt)
        self._known: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        known = self._known.get(host)
        if known is None:
            ip = _ip(host)
            known = ip is not None and any(ip.version == n.version and ip in n for n in self._networks)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[host] = known
        return known


@dataclass
class AdmissionCounters:
    admitted: int = 0
    refused: int = 0
    sources_evicted: int = 0
    refused_by_source: dict[str, int] = field(default_factory=dict)  # bounded like the buckets


class SourceAdmission:
    """The per-source connection rate: a token bucket per source."""

    def __init__(
        self,
        rate: float = 20.0,
        burst: float = 100.0,
        *,
        exempt: frozenset[str] = DEFAULT_EXEMPT,
        max_sources: int = 65536,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.exempt = exempt
        self.exempt_sources = ExemptSources(exempt)
        self.max_sources = max_sources
        self.counters = AdmissionCounters()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def admit(self, address: str, now: float) -> bool:
        """Whether a new connection from `address` (as `format_address` gives it) may start TLS."""
        if not self.enabled or source_host(address) in self.exempt_sources:
            self.counters.admitted += 1
            return True
        return self.admit_source(source_key(address), now)

    def admit_source(self, key: str, now: float) -> bool:
        """The bucket of source `key` (not exempt) pays for one connection, if it can."""
        if not self.enabled:
            self.counters.admitted += 1
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
                self.counters.sources_evicted += 1
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            self.counters.admitted += 1
            return True
        self.counters.refused += 1
        refused = self.counters.refused_by_source
        if key in refused or len(refused) < 1024:  # a per-source tally for logs, never unbounded
            refused[key] = refused.get(key, 0) + 1
        return False

    @property
    def sources(self) -> int:
        return len(self._buckets)


@dataclass
class GateCounters:
    admitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by reason
    peak: int = 0  # the most connections held at once


class Slot:
    """One admitted connection's place in its gate; `release()` (idempotent) gives it back."""

    __slots__ = ("_gate", "_key")

    def __init__(self, gate: ConnectionGate, key: str | None) -> None:
        self._gate: ConnectionGate | None = gate
        self._key = key  # None: an exempt source, not counted per source

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release(self._key)


class ConnectionGate:
    """One listener's door: caps on the connections it holds (in all, per source) and a rate.

    `admit` answers a Slot (held until the connection closes) or the reason for refusing."""

    def __init__(
        self,
        name: str,
        *,
        max_connections: int,
        max_per_source: int = 0,
        rate: SourceAdmission | None = None,
        exempt: frozenset[str] = DEFAULT_EXEMPT,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"{name}: max_connections must be at least 1, not {max_connections}")
        self.name = name
        self.max_connections = max_connections
        self.max_per_source = max_per_source  # 0: no per-source cap
        self.rate = rate
        self.exempt = ExemptSources(exempt)
        self.counters = GateCounters()
        self.open = 0
        self.closed = False
        self._held: dict[str, int] = {}  # source → connections it holds now (only sources holding any)

    def admit(self, address: str, now: float) -> Slot | str:
        if self.closed:
            return self._refuse(CLOSED)
        if self.open >= self.max_connections:
            return self._refuse(LISTENER_FULL)
        key: str | None = None
        if source_host(address) not in self.exempt:
            key = source_key(address)
            if self.max_per_source and self._held.get(key, 0) >= self.max_per_source:
                return self._refuse(SOURCE_FULL)
            if self.rate is not None and not self.rate.admit_source(key, now):
                return self._refuse(RATE_LIMITED)
            self._held[key] = self._held.get(key, 0) + 1
        self.open += 1
        counters = self.counters
        counters.admitted += 1
        if self.open > counters.peak:
            counters.peak = self.open
        return Slot(self, key)

    def readmit(self, slot: Slot, address: str, now: float) -> str | None:
        """A connection admitted from a load balancer turns out (its PROXY header) to be `address`'s:
        the per-source cap and rate are charged to that source now, and `slot` counts as its. None if
        it may go on, otherwise the reason it may not (the caller closes it and releases `slot`)."""
        key: str | None = None
        if source_host(address) not in self.exempt:
            key = source_key(address)
            if key == slot._key:
                return None
            if self.max_per_source and self._held.get(key, 0) >= self.max_per_source:
                return self._refuse(SOURCE_FULL)
            if self.rate is not None and not self.rate.admit_source(key, now):
                return self._refuse(RATE_LIMITED)
            self._held[key] = self._held.get(key, 0) + 1
        if slot._key is not None:  # a balancer that was not exempt: it no longer holds this one
            self._release_source(slot._key)
        slot._key = key
        return None

    def _refuse(self, reason: str) -> str:
        self.counters.refused[reason] += 1
        return reason

    def _release(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            self._release_source(key)

    def _release_source(self, key: str) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)

    def held_by(self, address: str) -> int:
        """Connections the source of `address` holds now (0 for an exempt source)."""
        return self._held.get(source_key(address), 0)

    @property
    def sources(self) -> int:
        return len(self._held)


def admission_from_limits(limits: LimitsConfig) -> SourceAdmission:
    """The per-source rate `limits.connections_per_source_per_second` and friends describe."""
    return SourceAdmission(
        limits.connections_per_source_per_second,
        float(max(1, limits.connection_burst_per_source)),
        exempt=frozenset(limits.connection_rate_exempt.split()),
    )


def listener_gates(
    limits: LimitsConfig, *, mqtt: int, https: int, lab: int = 0, balancers: frozenset[str] = frozenset()
) -> dict[str, ConnectionGate]:
    """A gate per listener with the given caps (from the open-file plan) and the configured
    per-source limits; each listener has rate buckets of its own. The lab listener takes loopback
    clients only, so only its cap matters. `balancers` (listen.proxy_protocol_from) skip the MQTT
    listener's per-source limits: the sources their PROXY headers name are charged instead
    (`ConnectionGate.readmit`)."""
    exempt = frozenset(limits.connection_rate_exempt.split())
    gates = {
        "mqtt": ConnectionGate(
            "mqtt",
            max_connections=mqtt,
            max_per_source=limits.max_connections_per_source,
            rate=admission_from_limits(limits),
            exempt=exempt | balancers,
        ),
        "https": ConnectionGate(
            "https",
            max_connections=https,
            max_per_source=limits.https_max_connections_per_source,
            rate=admission_from_limits(limits),
            exempt=exempt,
        ),
    }
    if lab:
        gates["lab"] = ConnectionGate("lab", max_connections=lab, exempt=exempt)
    return gates
