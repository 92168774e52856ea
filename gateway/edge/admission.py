"""Per-source connection-rate limit, consulted for every accepted TCP connection before TLS.

A TLS handshake is the most expensive thing an unauthenticated stranger can make the gateway do
(an ECDHE + signature per attempt), so a single source that opens connections faster than any truck
would is refused at accept, before a byte of TLS is spent on it. Each source address gets a token
bucket (`rate` connections per second, `burst` at once); other sources are untouched.

Memory is bounded: at most `max_sources` buckets are kept, least recently seen evicted first. An
evicted attacker only regains one burst, and only after `max_sources` other addresses were seen.

Loopback sources are exempt by default: a local TLS-terminating proxy or a benchmark on the same host
puts every client behind one address, and a process already on the box needs no handshake to hurt it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.config import LimitsConfig
from gateway.policy.rate import TokenBucket

__all__ = ["AdmissionCounters", "SourceAdmission", "admission_from_limits", "source_host"]

DEFAULT_EXEMPT = frozenset({"127.0.0.1", "::1"})


def source_host(address: str) -> str:
    """The host part of `format_address` output: "1.2.3.4:5" → "1.2.3.4", "[::1]:5" → "::1"."""
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, sep, _port = address.rpartition(":")
    return host if sep else address


@dataclass
class AdmissionCounters:
    admitted: int = 0
    refused: int = 0
    sources_evicted: int = 0
    refused_by_source: dict[str, int] = field(default_factory=dict)  # bounded like the buckets


class SourceAdmission:
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
        self.max_sources = max_sources
        self.counters = AdmissionCounters()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def admit(self, address: str, now: float) -> bool:
        """Whether a new connection from `address` (as `format_address` gives it) may start TLS."""
        host = source_host(address)
        if not self.enabled or host in self.exempt:
            self.counters.admitted += 1
            return True
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[host] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
                self.counters.sources_evicted += 1
        else:
            self._buckets.move_to_end(host)
        if bucket.take(now):
            self.counters.admitted += 1
            return True
        self.counters.refused += 1
        refused = self.counters.refused_by_source
        if host in refused or len(refused) < 1024:  # a per-source tally for logs, never unbounded
            refused[host] = refused.get(host, 0) + 1
        return False

    @property
    def sources(self) -> int:
        return len(self._buckets)


def admission_from_limits(limits: LimitsConfig) -> SourceAdmission:
    """The admission control `limits.connections_per_source_per_second` and friends describe."""
    return SourceAdmission(
        limits.connections_per_source_per_second,
        float(max(1, limits.connection_burst_per_source)),
        exempt=frozenset(limits.connection_rate_exempt.split()),
    )
